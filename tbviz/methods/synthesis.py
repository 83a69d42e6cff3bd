"""Synthesis: images made by gradient steps on the input, to show what a layer encodes.

=======================  ==========================================  ========================
function                 optimizes                                   literature
=======================  ==========================================  ========================
``maximize_activation``  an objective (channels, neurons,            Erhan et al. 2009,
                         directions, diversity, combined), through   Olah et al. 2017;
                         a Fourier image with decorrelated colours   pixel path: Yosinski
                         and random moves (default), or the pixels   et al. 2015
                         with L2, blur, jitter and clipping priors
``invert_features``      distance of a layer's features to a         Mahendran & Vedaldi 2015
                         photo's, plus a total-variation prior
``deepdream``            the layers' activation energy on a photo,   Mordvintsev et al. 2015
                         octave by octave
=======================  ==========================================  ========================

All work in the model's input space: ``value_range`` (default ``(0, 255)``, the
project's image convention) bounds the pixels and sets the scale of the noise the
optimization starts from; on the pixel paths ``lr`` is a fraction of the range per step.
Objectives: :mod:`tbviz.methods.objectives`; the Fourier image, colours and moves:
:mod:`tbviz.methods.parameterization`.

``maximize_activation``'s defaults are Olah et al. 2017's, as Lucid's ``render_vis`` sets
them: ``param="fourier"`` (a 1/f-scaled spectrum, start ``N(0, 0.01^2)``), ``decorrelate=True``
(ImageNet's colour correlation, then a sigmoid), ``transforms="standard"`` (Lucid's
``standard_transforms``), Adam at ``lr=0.05`` on the spectrum, and Lucid's redirected ReLU
gradient while stepping (the backward rule ``"redirected"`` of
:mod:`tbviz.core.backward_rules`). ``param="pixel"`` keeps Yosinski et al. 2015's path and
its defaults (:data:`PIXEL_PRIORS`, ``lr=0.02`` of the range, cosine-decayed).
Each inner step is one probe (:func:`tbviz.backend.function`) compiled once per model,
layer and image shape, run with ``training=False``; the weights are never touched.
Randomness (start noise, jitter) comes from NumPy's generator seeded with ``seed``, so the
same call gives the same image, and the backend's random state is left alone (training
after a synthesis is bit-identical to training without one).

Example:
    >>> import numpy as np, keras
    >>> from tbviz import synthesis
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv")])
    >>> image, trace = synthesis.maximize_activation(model, "conv", channel=2, steps=8)
    >>> image.shape, trace.shape
    ((16, 16, 3), (9,))
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np

from tbviz.core import probes
from tbviz.core.backward_rules import backward_rule
from tbviz.core.checks import channels as channel_indices
from tbviz.core.checks import number, positive_int
from tbviz.core.checks import value_range as check_value_range
from tbviz.core.layers import (capture_outputs, check_images, check_layers, forward_to,
                               get_layer, image_input_shape)
from tbviz.methods.objectives import as_objective
from tbviz.methods.parameterization import (check_transforms, fourier_basis, render, spectrum,
                                            transform_matrices, transformed)


# -- shared pieces ----------------------------------------------------------------------------

def _gaussian(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(x, kernel: np.ndarray):
    """Separable Gaussian blur of ``(N, H, W, C)``; reflected borders keep edges unbiased."""
    r = len(kernel) // 2
    c = x.shape[-1]
    x = keras.ops.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="reflect")
    rows = np.tile(kernel.reshape(-1, 1, 1, 1), (1, 1, c, 1))
    x = keras.ops.depthwise_conv(x, rows, strides=1, padding="valid")
    return keras.ops.depthwise_conv(x, rows.reshape(1, -1, c, 1), strides=1, padding="valid")


def _roll(x, shift):
    """``x`` shifted cyclically by ``shift = (rows, cols)`` (a tensor: one compiled step
    serves every jitter), by gathers, which every backend compiles with a tensor shift."""
    h, w = keras.ops.shape(x)[1], keras.ops.shape(x)[2]
    rows = keras.ops.mod(keras.ops.arange(h) - shift[0], h)
    cols = keras.ops.mod(keras.ops.arange(w) - shift[1], w)
    return keras.ops.take(keras.ops.take(x, rows, axis=1), cols, axis=2)


def _normalized(g):
    """The gradient divided by its mean magnitude per image: ``lr`` then means pixels per step,
    whatever the scale of the layer's activations."""
    axes = list(range(1, len(g.shape)))
    return g / (keras.ops.mean(keras.ops.abs(g), axis=axes, keepdims=True) + 1e-12)


def _adam(g, m, v, t):
    """One Adam update direction (Kingma & Ba 2014) and its new moments.

    Adam scales each pixel's step by its own gradient history, so pixels with small
    gradients (behind mostly silent ReLUs) still move: plain or globally normalized
    gradient steps leave them behind and stall in the basin around the start.
    """
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    return (m / (1 - 0.9 ** t)) / (keras.ops.sqrt(v / (1 - 0.999 ** t)) + 1e-8), m, v


def _clip_small_contribution(x, g, mid, percentile):
    """Reset to ``mid`` the pixels whose contribution ``sum_c |(x - mid) * g|`` to the
    objective is below ``percentile`` of the image's (Yosinski et al. 2015)."""
    contribution = keras.ops.sum(keras.ops.abs((x - mid) * g), axis=-1)  # (N, H, W)
    n = contribution.shape[1] * contribution.shape[2]
    flat = keras.ops.sort(keras.ops.reshape(contribution, (-1, n)), axis=-1)
    # the ceil(p% of n)-th smallest: at least p% of the pixels lie below it
    k = keras.ops.minimum(keras.ops.cast(keras.ops.ceil(percentile / 100 * n), "int32"), n - 1)
    threshold = keras.ops.take(flat, k, axis=1)[:, None, None]
    return keras.ops.where((contribution < threshold)[..., None], mid, x)


def _before_activation(model, layers, rule: str | None = None):
    """``x -> {layer: output before a final softmax or ReLU}`` (see
    :func:`tbviz.core.probes.before_activation`), running the model no further than it must:
    a unit silent on the start image still gets a gradient, a class's logit is raised.
    ``rule``: a backward rule at the layers' rectifiers on the way
    (:func:`tbviz.core.backward_rules.backward_rule`)."""
    forward = forward_to(model, list(layers))
    targets = [get_layer(model, layer) for layer in layers]

    def before(x):
        with contextlib.ExitStack() as stack:
            for target in targets:
                stack.enter_context(probes.before_activation(target, ("softmax", "relu")))
            if rule is not None:  # inside: the targets' own activations are gone by then
                stack.enter_context(backward_rule(rule, model))
            return forward(x)
    return before


def _synthesis_shape(model, size) -> tuple[int, int, int]:
    want = image_input_shape(model)
    if size is None:
        if None in want:
            raise ValueError(f"model {model.name!r} takes images of any size {want}; pass "
                             "size=(height, width)")
        return tuple(int(s) for s in want)
    h, w = (int(v) for v in ((size, size) if np.ndim(size) == 0 else size))
    for got, fixed in zip((h, w), want[:2]):
        if fixed is not None and got != fixed:
            raise ValueError(f"size {(h, w)} does not fit model {model.name!r}, which takes "
                             f"{want[:2]} images")
    if want[2] is None:
        raise ValueError(f"model {model.name!r} does not fix its number of input channels")
    return h, w, int(want[2])


def _start(rng, shape, lo, hi):
    """Mid-gray with faint noise: no structure of its own, and no ReLU exactly at rest."""
    return ((lo + hi) / 2 + rng.normal(0, 0.01 * (hi - lo), shape)).astype(np.float32)


def _cosine(lr: float, i: int, steps: int) -> float:
    """Step ``i``'s learning rate: ``lr`` decayed to 0 along a half cosine. Late steps
    refine instead of overshooting, which a fixed step does on a piecewise-linear net."""
    return lr * 0.5 * (1 + math.cos(math.pi * i / steps))


def _shift(rng, jitter: int) -> np.ndarray:
    if not jitter:
        return np.zeros(2, np.int32)
    return rng.integers(-jitter, jitter + 1, 2).astype(np.int32)


# -- activation maximization ------------------------------------------------------------------

def check_channels(model, layer: str, channel, size=None) -> np.ndarray:
    """``channel`` (an int or a list) as int32 indices of ``layer``'s channels, or a
    ``ValueError`` naming the valid range.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c")])
    >>> check_channels(m, "c", [0, 3]).tolist()
    [0, 3]
    """
    shape = _synthesis_shape(model, size)
    out = probes.check_layer_rank(model, shape, layer, {2, 4}, "activation maximization")
    return np.asarray(channel_indices(channel, out[-1], layer), np.int32)


def check_octaves(model, octaves) -> int:
    """``octaves`` if the model can take the smaller images that many octaves need, else a
    ``ValueError`` saying what to do.

    >>> import keras
    >>> any_size = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3)])
    >>> check_octaves(any_size, 3)
    3
    """
    octaves = positive_int("octaves", octaves)
    want = image_input_shape(model)
    if octaves > 1 and (want[0] is not None or want[1] is not None):
        raise ValueError(f"octaves={octaves} dreams at smaller sizes, but model {model.name!r} "
                         f"only takes {want[:2]} images; use octaves=1 or a model built with "
                         "keras.Input((None, None, channels))")
    return octaves


#: ``maximize_activation``'s priors of the pixel path (Yosinski et al. 2015), and their
#: defaults: the Fourier path has its own (``decorrelate``, ``transforms``).
PIXEL_PRIORS = {"l2": 1e-3, "blur_every": 4, "blur_sigma": 0.5, "jitter": 2, "clip_grad": None}
FOURIER_PRIORS = {"decorrelate": True, "transforms": "standard"}
#: Image parameterizations of :func:`maximize_activation`.
PARAMS = ("fourier", "pixel")
#: Adam's step on the Fourier coefficients (Lucid's ``render_vis``: ``AdamOptimizer(0.05)``),
#: and the pixel path's, a fraction of the value range, cosine-decayed.
LR = {"fourier": 0.05, "pixel": 0.02}


def check_priors(param: str = "fourier", **options) -> None:
    """A ``ValueError`` when ``options`` (keyword arguments of :func:`maximize_activation`)
    give a prior of the other path a value other than its default, or ``param`` is unknown.

    >>> check_priors("fourier", jitter=4)
    Traceback (most recent call last):
    ...
    ValueError: jitter belong(s) to param='pixel', but param='fourier'; its priors are decorrelate, transforms
    """
    if param not in PARAMS:
        raise ValueError(f"unknown param {param!r}; choose one of {', '.join(PARAMS)}")
    mine, other = ((FOURIER_PRIORS, PIXEL_PRIORS) if param == "fourier"
                   else (PIXEL_PRIORS, FOURIER_PRIORS))
    changed = [k for k, default in other.items() if k in options and options[k] != default]
    if changed:
        path = "pixel" if param == "fourier" else "fourier"
        raise ValueError(f"{', '.join(changed)} belong(s) to param={path!r}, but param="
                         f"{param!r}; its priors are {', '.join(mine)}")


def maximize_activation(model, layer, channel=None, size=None, unit: str = "mean",
                        steps: int = 128, lr: float | None = None, l2: float = 1e-3,
                        blur_every: int | None = 4, blur_sigma: float = 0.5, jitter: int = 2,
                        clip_grad: float | None = None, value_range=(0.0, 255.0),
                        seed: int | None = 0, param: str = "fourier", decorrelate: bool = True,
                        transforms="standard", batch: int | None = None):
    """Gradient ascent on the input to an objective (Erhan et al. 2009; Olah et al. 2017).

    What is raised: ``layer`` and ``channel`` (one channel, feature map of a conv layer or
    unit of a dense one, or a list of them, one image each, optimized as one batch; for a
    conv layer ``unit="mean"`` raises the channel's mean over positions, a texture that
    fills the image, ``unit="center"`` its unit at the centre, a pattern the size of its
    receptive field), or an objective of :mod:`tbviz.methods.objectives` passed as
    ``layer`` (``channel``, ``neuron``, ``direction``, ``diversity`` and their sums and
    products), with ``batch`` images when it has one row (default 1). Layers are scored
    before a final ReLU or softmax.

    How the image is made, ``param``:

    * ``"fourier"`` (default, Olah et al. 2017 as in Lucid; see
      :mod:`tbviz.methods.parameterization`): a ``1/f``-scaled spectrum, colours
      decorrelated (``decorrelate``, ImageNet's colour correlation) and squashed by a
      sigmoid into ``value_range``, each step seeing the image randomly shifted, scaled and
      rotated (``transforms="standard"``, Lucid's; ``None`` for none, or a dict of
      ``jitter``, ``scales`` and ``angles``); Adam on the spectrum at ``lr`` (default 0.05,
      Lucid's), constant. Deep layers give patterns a person can read, robust to the small
      moves the network also sees in photos.
    * ``"pixel"`` (Yosinski et al. 2015): the pixels themselves from mid-gray with faint
      noise, Adam at ``lr`` (default 0.02 of the value range per step) cosine-decayed to 0,
      and the priors, each switchable off with ``0``/``None``: ``l2`` (pull toward mid-gray
      by this fraction per step), ``blur_every``/``blur_sigma`` (Gaussian blur every that
      many steps), ``jitter`` (a random shift of up to that many pixels each step),
      ``clip_grad`` (a percentile: pixels whose contribution ``sum_c |(x - mid) * g|`` is
      below it are reset to mid-gray). They raise the objective further on the image itself,
      but deep layers give high-frequency patterns (``scripts/bench_synthesis.py`` measures
      both).

    The priors of one path given to the other raise a ``ValueError``. ``size=(H, W)`` is
    needed only for models that take any image size. Randomness (the start, the transforms)
    comes from NumPy's generator seeded with ``seed``.

    Returns ``(image, trace)``: the image ``(H, W, C)`` (``(B, H, W, C)`` for a list of
    channels, directions or ``batch``) in ``value_range``, and the objective per step (``(steps + 1,)``
    or ``(steps + 1, B)``): what each step saw on its moved input, then the returned
    image's, as it is.

    >>> import keras
    >>> from tbviz.methods.objectives import channel, diversity
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c")])
    >>> imgs, trace = maximize_activation(m, "c", [0, 3], steps=4)
    >>> imgs.shape, trace.shape
    ((2, 8, 8, 3), (5, 2))
    >>> imgs, _ = maximize_activation(m, channel("c", 1) + 0.1 * diversity("c"), batch=3, steps=2)
    >>> imgs.shape
    (3, 8, 8, 3)
    >>> maximize_activation(m, "c", 1, steps=4, param="pixel", jitter=0)[0].shape
    (8, 8, 3)
    """
    check_priors(param, l2=l2, blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter,
                 clip_grad=clip_grad, decorrelate=decorrelate, transforms=transforms)
    objective = as_objective(layer, channel, unit)
    check_layers(model, list(objective.layers))
    lo, hi = check_value_range(value_range)
    steps = positive_int("steps", steps)
    lr = LR[param] if lr is None else number("lr", lr)
    shape = _synthesis_shape(model, size)
    objective.check(probes.layer_output_shapes(model, shape))
    rows = objective.rows
    if batch is not None:
        batch = positive_int("batch", batch)
        if rows not in (1, batch):
            raise ValueError(f"batch={batch} but the objective {objective} scores {rows} images "
                             "(one per channel given); leave batch out or match it")
        rows = batch
    single = batch is None and not objective.per_image
    rng = np.random.default_rng(seed)
    if param == "fourier":
        images, trace = _maximize_fourier(model, objective, shape, rows, steps, lr, lo, hi, rng,
                                          bool(decorrelate), check_transforms(transforms))
    else:
        images, trace = _maximize_pixels(model, objective, shape, rows, steps, lr, lo, hi, rng,
                                         l2, blur_every, blur_sigma, jitter, clip_grad)
    return (images[0], trace[:, 0]) if single else (images, trace)


def _maximize_fourier(model, objective, shape, rows, steps, lr, lo, hi, rng, decorrelate, spec):
    h, w, c = shape
    basis = fourier_basis(h, w)
    mid = (lo + hi) / 2

    def build(ref):
        # Lucid's redirected ReLU gradient while stepping: a start image on which the
        # layers below are silent (a nearly flat one, on a trained net) still moves.
        redirected = _before_activation(ref(), objective.layers, "redirected")
        before = _before_activation(ref(), objective.layers)

        def image(p):
            return render(p, basis, decorrelate, lo, hi)

        def step(p, m, v, t, warp, lr_t):
            def moved(p_):
                x = image(p_)
                if spec is not None:
                    x = transformed(x, warp, mid)
                value = objective(redirected(x))
                return value, value
            (g,), value = probes.input_gradients(moved, p, has_aux=True)
            update, m, v = _adam(g, m, v, t)
            return p + lr_t * update, m, v, value

        def final(p):
            x = image(p)
            return x, objective(before(x))

        # The batch is fixed, not free: JAX pads a free batch with rows, and diversity
        # compares the rows with each other.
        spectrum_shape = (rows, 2, h, w // 2 + 1, c)
        return (probes.function(ref, step, spectrum_shape, spectrum_shape, spectrum_shape, (),
                                (rows, 8), ()),
                probes.function(ref, final, spectrum_shape))

    step, final = probes.traced(model, ("maximize_fourier", objective.key, rows, shape, lo, hi,
                                        decorrelate, spec is not None), build)
    p = spectrum(rng, rows, h, w, c)
    m = v = np.zeros_like(p)
    identity = np.tile(np.array([[1, 0, 0, 0, 1, 0, 0, 0]], np.float32), (rows, 1))
    trace = []
    for i in range(steps):
        warp = transform_matrices(rng, spec, rows, h, w) if spec is not None else identity
        p, m, v, value = step(p, m, v, np.float32(i + 1), warp, np.float32(lr))
        trace.append(probes.numpy(value))
    x, value = final(p)
    trace.append(probes.numpy(value))
    return probes.numpy(x), np.stack(trace)


def _maximize_pixels(model, objective, shape, rows, steps, lr, lo, hi, rng, l2, blur_every,
                     blur_sigma, jitter, clip_grad):
    l2 = number("l2", l2)
    if l2 >= 1:
        raise ValueError(f"l2 is a decay fraction per step and must be < 1, got {l2}")
    blur_every = positive_int("blur_every", blur_every) if blur_every else 0
    blur_sigma = number("blur_sigma", blur_sigma) if blur_every else 0.0
    if blur_every and blur_sigma <= 0:
        raise ValueError("blur_sigma must be > 0 when blur_every is on")
    jitter = positive_int("jitter", jitter) if jitter else 0
    clip = number("clip_grad", clip_grad) if clip_grad else 0.0
    if clip >= 100:
        raise ValueError(f"clip_grad is a percentile of pixels and must be < 100, got {clip_grad}")
    kernel = _gaussian(blur_sigma) if blur_every else np.ones(1, np.float32)
    mid, span = (lo + hi) / 2, hi - lo

    def build(ref):
        before = _before_activation(ref(), objective.layers)

        def step(x, m, v, t, shift, blur, lr_t, l2_t, clip_t):
            def jittered(t_):
                value = objective(before(_roll(t_, shift)))
                return value, value
            (g,), value = probes.input_gradients(jittered, x, has_aux=True)
            update, m, v = _adam(g, m, v, t)
            x = mid + (x + lr_t * span * update - mid) * (1 - l2_t)
            x = keras.ops.cond(blur, lambda: _blur(x, kernel), lambda: x)
            x = keras.ops.cond(clip_t > 0, lambda: _clip_small_contribution(x, g, mid, clip_t),
                               lambda: x)
            return keras.ops.clip(x, lo, hi), m, v, value

        def final(x):
            return objective(before(x))

        img, num = (rows,) + shape, ()  # a fixed batch, as in _maximize_fourier
        return (probes.function(ref, step, img, img, img, num, (2,), num, num, num, num,
                                dtypes=["float32"] * 4 + ["int32", "bool"] + ["float32"] * 3),
                probes.function(ref, final, img))

    step, final = probes.traced(model, ("maximize_pixels", objective.key, rows, shape,
                                        float(blur_sigma)), build)
    x = _start(rng, (rows,) + shape, lo, hi)
    m = v = np.zeros_like(x)
    trace = []
    for i in range(steps):
        blur = bool(blur_every) and (i + 1) % blur_every == 0
        x, m, v, value = step(x, m, v, np.float32(i + 1), _shift(rng, jitter), np.array(blur),
                              np.float32(_cosine(lr, i, steps)), np.float32(l2),
                              np.float32(clip))
        trace.append(probes.numpy(value))
    trace.append(probes.numpy(final(x)))
    return probes.numpy(x), np.stack(trace)


# -- feature inversion ------------------------------------------------------------------------

def _tv(x, span):
    """Mahendran & Vedaldi's total variation (beta = 2) per image, in units of the range."""
    dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
    dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
    return keras.ops.mean(dy * dy + dx * dx, axis=[1, 2, 3]) / (span * span)


def invert_features(model, image, layer: str, steps: int = 200, lr: float = 0.02,
                    tv_weight: float = 0.05, value_range=(0.0, 255.0), seed: int | None = 0,
                    max_batch: int = 32):
    """Reconstruct an image from a layer's features (Mahendran & Vedaldi 2015).

    Minimizes ``||phi(x) - phi(image)||^2 / ||phi(image)||^2 + tv_weight * TV(x)``
    from faint noise with Adam (step ``lr`` of the value range, cosine-decayed to 0),
    where ``TV`` is the mean squared difference of neighbouring pixels over the range
    squared (the paper's beta = 2 prior that keeps the reconstruction from turning
    to noise). ``image`` is one ``(H, W, C)`` image or a batch, inverted together.

    Returns ``(reconstruction, trace)``: the reconstruction, shaped like ``image``,
    and the relative feature distance (the first term) per step, ``(steps + 1,)``
    for one image or ``(steps + 1, N)``: before each step, then of the result.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c")])
    >>> rec, trace = invert_features(m, np.random.rand(8, 8, 3) * 255, "c", steps=5)
    >>> rec.shape, trace.shape
    ((8, 8, 3), (6,))
    """
    single = np.ndim(image) == 3
    x0 = check_images(model, image, "image")
    check_layers(model, [layer])
    lo, hi = check_value_range(value_range)
    steps = positive_int("steps", steps)
    lr, tv_weight = number("lr", lr), number("tv_weight", tv_weight)
    shape = x0.shape[1:]
    out = probes.check_layer_rank(model, shape, layer, {2, 3, 4, 5}, "feature inversion")
    target = probes.layer_outputs(model, x0, layer, positive_int("max_batch", max_batch))
    span = hi - lo

    def build(ref):
        def distance(x, phi0):
            with capture_outputs(ref(), [layer]) as seen:
                ref()(x, training=False)
            axes = list(range(1, len(phi0.shape)))
            d = keras.ops.sum(keras.ops.square(keras.ops.cast(seen[layer], "float32") - phi0),
                              axis=axes)
            return d / keras.ops.maximum(keras.ops.sum(keras.ops.square(phi0), axis=axes), 1e-12)

        def step(x, m, v, t, phi0, lr_t, tv_t):
            def loss(t_):
                dist = distance(t_, phi0)
                return dist + tv_t * _tv(t_, span), dist
            (g,), dist = probes.input_gradients(loss, x, has_aux=True)
            update, m, v = _adam(g, m, v, t)
            return keras.ops.clip(x - lr_t * span * update, lo, hi), m, v, dist

        img, feat, num = (None,) + shape, (None,) + tuple(out[1:]), ()
        return (probes.function(ref, step, img, img, img, num, feat, num, num),
                probes.function(ref, distance, img, feat))

    step, final = probes.traced(model, ("invert", layer, shape), build)
    rng = np.random.default_rng(seed)
    x = _start(rng, x0.shape, lo, hi)
    m = v = np.zeros_like(x)
    phi0 = np.asarray(target, np.float32)
    trace = []
    for i in range(steps):
        x, m, v, dist = step(x, m, v, np.float32(i + 1), phi0, np.float32(_cosine(lr, i, steps)),
                             np.float32(tv_weight))
        trace.append(probes.numpy(dist))
    trace.append(probes.numpy(final(x, phi0)))
    rec, trace = probes.numpy(x), np.stack(trace)
    return (rec[0], trace[:, 0]) if single else (rec, trace)


# -- DeepDream --------------------------------------------------------------------------------

def deepdream(model, image, layers, octaves: int = 3, octave_scale: float = 1.4, steps: int = 10,
              lr: float = 0.006, jitter: int = 4, value_range=(0.0, 255.0),
              seed: int | None = 0) -> np.ndarray:
    """DeepDream (Mordvintsev et al. 2015): amplify what ``layers`` already see in ``image``.

    Gradient ascent on the sum over ``layers`` of the mean squared activation,
    ``steps`` per octave, with random ``jitter`` and the gradient normalized per
    image (``lr`` is a fraction of the value range per step; the default is the
    original's 1.5 of 255). With ``octaves > 1``
    the image is dreamt from ``octave_scale ** (octaves - 1)`` times smaller up to
    full size, carrying the added detail up each octave as the original does; that
    needs a model that takes any image size (``keras.Input((None, None, 3))``).
    ``image``: ``(H, W, C)`` or a batch; the result has its shape.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((None, None, 3)),
    ...                       keras.layers.Conv2D(4, 3, activation="relu", name="c")])
    >>> deepdream(m, np.random.rand(16, 16, 3) * 255, ["c"], octaves=2, steps=2).shape
    (16, 16, 3)
    """
    single = np.ndim(image) == 3
    x0 = check_images(model, image, "image")
    layers = check_layers(model, [layers] if isinstance(layers, str) else list(layers))
    if not layers:
        raise ValueError("deepdream needs at least one layer")
    lo, hi = check_value_range(value_range)
    octaves, steps = check_octaves(model, octaves), positive_int("steps", steps)
    octave_scale = number("octave_scale", octave_scale, 1.0)
    lr = number("lr", lr)
    jitter = positive_int("jitter", jitter) if jitter else 0
    n, h, w, c = x0.shape
    sizes = [(max(1, round(h / octave_scale ** k)), max(1, round(w / octave_scale ** k)))
             for k in reversed(range(octaves))]
    for path in layers:
        probes.check_layer_rank(model, (h, w, c), path, {2, 3, 4, 5}, "DeepDream")
    mid, span = (lo + hi) / 2, hi - lo
    del mid

    def build(ref):
        def energy(t):
            with capture_outputs(ref(), layers) as seen:
                ref()(t, training=False)
            return sum(keras.ops.mean(keras.ops.square(keras.ops.cast(seen[p], "float32")),
                                      axis=list(range(1, len(seen[p].shape))))
                       for p in layers)

        def step(x, shift, lr_t):
            (g,) = probes.input_gradients(lambda t: energy(_roll(t, shift)), x)
            return keras.ops.clip(x + lr_t * span * _normalized(g), lo, hi)

        return probes.function(ref, step, (None, None, None, c), (2,), (),
                               dtypes=["float32", "int32", "float32"])

    step = probes.traced(model, ("deepdream", tuple(layers), c), build)
    rng = np.random.default_rng(seed)
    detail = None

    def resize(a, size):
        return keras.ops.image.resize(a, size, interpolation="bilinear")
    for size in sizes:
        base = resize(x0, size)
        x = base if detail is None else base + resize(detail, size)
        x = keras.ops.clip(x, lo, hi)
        for _ in range(steps):
            x = step(x, _shift(rng, jitter), np.float32(lr))
        detail = x - base  # what the dream added, carried to the next, finer octave
    out = probes.numpy(x)
    return out[0] if single else out
