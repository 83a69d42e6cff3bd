"""Integrated Gradients (Sundararajan et al. 2017): the gradient integrated along the straight
path from a baseline to the image.

``phi = (x - x') * integral_0^1 grad f(x' + a (x - x')) da``, the integral by a
quadrature rule of ``steps`` nodes. Its completeness axiom, ``sum(phi) = f(x) - f(x')``,
gives a number to check: the quadrature's error, which falls as ``steps`` grows.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.integrated import integrated_gradients
>>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
>>> phi, delta = integrated_gradients(m, np.ones((2, 4, 4, 1)), target=0, steps=8,
...                                   return_convergence_delta=True)
>>> phi.shape, bool(np.abs(delta).max() < 1e-4)   # linear: exact for any steps
((2, 4, 4, 1), True)
"""

from __future__ import annotations

import keras
import numpy as np

from tbviz.core import probes
from tbviz.core.backward_rules import backward_rule
from tbviz.core.checks import positive_int
from tbviz.methods.attribution.targets import _prepare, _score, check_baseline, logits_of, scores

#: Quadrature rules of the path integral: the paper's right Riemann sum (its eq. 3), the
#: trapezoid (Xplique's choice) and Gauss-Legendre (Captum's default).
RULES = ("riemann", "trapezoid", "gausslegendre")


def nodes(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` of ``rule`` with ``steps`` nodes on ``[0, 1]``; the weights sum to 1.

    >>> a, w = nodes("trapezoid", 3)
    >>> a.tolist(), w.tolist()
    ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
    """
    steps = positive_int("steps", steps)
    if rule == "riemann":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2 (both ends of the path)")
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), w
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]
        return (t + 1) / 2, w / 2
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")


def integrated_gradients(model, images, target, baseline=0.0, steps: int = 50,
                         rule: str = "gausslegendre", max_batch: int = 32,
                         return_convergence_delta: bool = False):
    """Integrated Gradients (Sundararajan et al. 2017), signed, shape of ``images``.

    Args:
        baseline: the path's start ``x'``: a number or an array broadcastable to the
            images (default black, ``0``, as Xplique's and Captum's).
        steps: nodes of the quadrature (Captum's and Xplique's default, 50).
        rule: ``"gausslegendre"`` (default, Captum's), ``"riemann"`` (the paper's right
            Riemann sum, ``a = k / steps``) or ``"trapezoid"`` (Xplique's).
        return_convergence_delta: also return the completeness error per image,
            ``sum(phi) - (f(x) - f(x'))`` (Captum's name), ``(N,)`` float64.

    ``f`` is the target's logit for a model ending in a softmax (the score every
    gradient method here differentiates; Xplique's advice too), a callable target's
    value otherwise. Every (image, node) pair is one row of a batch built inside the probe
    and chunked by ``max_batch``.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, activation="tanh"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> integrated_gradients(m, np.random.rand(1, 8, 8, 3), target=1, steps=16).shape
    (1, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    alphas, weights = nodes(rule, steps)
    base = check_baseline(baseline, x)
    n = len(x)
    owner = np.repeat(np.arange(n, dtype=np.int32), len(alphas))
    alpha = np.tile(alphas, n).astype(np.float32)
    weight = np.tile(weights, n)

    def build(ref):
        def grad(img, a, cls, images_t, base_t):
            start = keras.ops.take(base_t, img, axis=0)
            path = start + a[:, None, None, None] * (keras.ops.take(images_t, img, axis=0) - start)

            def score(t):
                with logits_of(ref(), fn), backward_rule("gradient", ref()):
                    y = ref()(t, training=False)
                return _score(y, cls, fn)
            return probes.input_gradients(score, path)[0]
        shape = (None,) + x.shape[1:]
        # The chunk's own rows come first: JAX pads the free arguments with as many rows as
        # the first one and cuts outputs of that many rows, which must be the chunk's, not
        # the image stack's.
        return probes.function(ref, grad, (None,), (None,), (None,), shape, shape,
                               dtypes=["int32", "float32", "int32", "float32", "float32"])

    grad = probes.traced(model, ("integrated_gradients", x.shape[1:], fn), build)
    total = np.zeros(x.shape, np.float64)
    for s in probes.batches(len(owner), max_batch):
        g = probes.numpy(grad(owner[s], alpha[s], idx[owner[s]], x, base)).astype(np.float64)
        np.add.at(total, owner[s], g * weight[s].reshape((-1,) + (1,) * (x.ndim - 1)))
    phi = (x.astype(np.float64) - base) * total
    if not return_convergence_delta:
        return phi.astype(np.float32)
    both = scores(model, np.concatenate([x, base]), np.concatenate([idx, idx]), fn, max_batch,
                  logits=True)
    delta = phi.reshape(n, -1).sum(axis=1) - (both[:n] - both[n:])
    return phi.astype(np.float32), delta
