"""Gradient attributions: saliency, guided backpropagation, Gradient x Input and SmoothGrad.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.gradients import saliency
>>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
>>> saliency(m, np.zeros((1, 8, 8, 3)), target=0).shape
(1, 8, 8, 3)
"""

from __future__ import annotations

import numpy as np

from tbviz.core import probes
from tbviz.core.backward_rules import backward_rule
from tbviz.core.checks import positive_int
from tbviz.methods.attribution.targets import _prepare, _score, logits_of


def _input_gradients(model, x, idx, fn, rule: str, max_batch: int) -> np.ndarray:
    def build(ref):
        def grad(xb, ib):
            def score(t):
                with logits_of(ref(), fn), backward_rule(rule, ref()):
                    y = ref()(t, training=False)
                return _score(y, ib, fn)
            return probes.input_gradients(score, xb)[0]
        return probes.function(ref, grad, (None,) + x.shape[1:], (None,),
                               dtypes=["float32", "int32"])

    grad = probes.traced(model, ("input_gradients", rule, x.shape[1:], fn), build)
    return np.concatenate([probes.numpy(grad(x[s], idx[s]))
                           for s in probes.batches(len(x), max_batch)])


def saliency(model, images, target, max_batch: int = 32) -> np.ndarray:
    """Gradient of the target score w.r.t. the input pixels (Simonyan et al. 2013).

    Returns the raw gradient, shape and dtype of ``images`` (float32). For the
    paper's map take ``heatmap(result)`` (max of ``|gradient|`` over channels).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> saliency(m, np.zeros((1, 8, 8, 3)), target=0).shape
    (1, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    return _input_gradients(model, x, idx, fn, "gradient", max_batch)


def guided_backprop(model, images, target, max_batch: int = 32) -> np.ndarray:
    """Guided backpropagation (Springenberg et al. 2014): the gradient with each ReLU
    passing back only positive signal where its input was positive.

    Same shape as ``images``. Uses :func:`tbviz.core.backward_rules.backward_rule` ``("guided")``.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, activation="relu"),
    ...                       keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> guided_backprop(m, np.ones((1, 8, 8, 3)), target=1).shape
    (1, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    return _input_gradients(model, x, idx, fn, "guided", max_batch)


def gradient_x_input(model, images, target, max_batch: int = 32) -> np.ndarray:
    """Gradient x Input (Shrikumar et al. 2016): the saliency gradient times the image itself,
    pixel by pixel and channel by channel, signed.

    Same shape as ``images``. On a linear model ``w . x + b`` it is ``w * x``, each input's
    share of the score; Integrated Gradients from a zero baseline equals it there. As
    Xplique's ``GradientInput`` and Captum's ``InputXGradient``; like :func:`saliency` it
    differentiates the logit before a final softmax.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> gradient_x_input(m, np.ones((1, 4, 4, 1)), target=0).shape
    (1, 4, 4, 1)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    return (_input_gradients(model, x, idx, fn, "gradient", max_batch) * x).astype(np.float32)


def noisy_moments(model, x, idx, fn, samples: int, noise: float, max_batch: int, seed):
    """``(mean, mean of squares)`` of the saliency gradient over ``samples`` noisy copies of
    each image (float64): what SmoothGrad, SquareGrad and VarGrad are made of.

    Each copy adds Gaussian noise with standard deviation ``noise * (max - min)`` of its
    own image, the paper's sigma / (x_max - x_min). All ``N * samples`` copies go through
    the model in chunks of ``max_batch``, whatever image they belong to, so memory stays
    bounded and the model never sees a batch of one. The noise comes from NumPy's
    generator seeded with ``seed`` (the same maps every call by default; the backend's
    random state is left alone).
    """
    positive_int("samples", samples)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a fraction of the image's value range >= 0, got {noise!r}")
    axes = tuple(range(1, x.ndim))
    sigma = (noise * (x.max(axis=axes) - x.min(axis=axes))).astype(np.float32)
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(len(x)), samples)  # the image each noisy copy belongs to
    total = np.zeros(x.shape, np.float64)
    squares = np.zeros(x.shape, np.float64)
    for s in probes.batches(len(owner), max_batch):
        rows = owner[s]
        eps = rng.standard_normal((len(rows),) + x.shape[1:], dtype=np.float32)
        noisy = x[rows] + eps * sigma[rows].reshape((-1,) + (1,) * len(axes))
        g = _input_gradients(model, noisy, idx[rows], fn, "gradient", max_batch).astype(np.float64)
        np.add.at(total, rows, g)
        np.add.at(squares, rows, g * g)
    return total / samples, squares / samples


def smoothgrad(model, images, target, samples: int = 25, noise: float = 0.15,
               max_batch: int = 32, seed: int | None = 0) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): the saliency gradient averaged over noisy copies.

    The copies, their noise (``noise`` of each image's value range) and their batching
    are those of :func:`noisy_moments`.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> smoothgrad(m, np.random.rand(2, 8, 8, 3), target=0, samples=4).shape
    (2, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    mean, _ = noisy_moments(model, x, idx, fn, samples, noise, max_batch, seed)
    return mean.astype(np.float32)
