"""Faithfulness: does a heatmap say what the model does? Measured, as the papers define it.

Every metric takes what an attribution method returned (``explanations``: ``(N, H, W)``
maps, or ``(N, H, W, C)`` ones, reduced to the map the tab shows with
:func:`~tbviz.methods.attribution.heatmap`, ``max |a|`` over channels), or a dict of them
by method name, measured on the same perturbations (one set of forward passes for all
methods where the perturbations do not depend on the map). Results are per image, NumPy
float64; ``images`` and ``target`` take the forms of :mod:`tbviz.methods.attribution`
(the target is held fixed). Scores ``f`` are the model's output as given (a probability for
a softmax classifier, as the papers score, and as occlusion and RISE measure), or a callable
target's value; a model that ends in logits is scored in logits.

==================  =======================================================  ============
metric              definition (per image)                                   better
==================  =======================================================  ============
``deletion``        ``f`` as the pixels are set to ``baseline`` (default 0)  lower area
                    most important first, in ``steps`` equal parts: the
                    curve over the fraction deleted and its area
                    (trapezoid); Petsiuk et al. 2018 (RISE)
``insertion``       ``f`` as the pixels are put back, most important first,  higher area
                    into a blurred copy (RISE's evaluation kernel: 11 taps,
                    sigma 5 px): curve and area; Petsiuk et al. 2018
``mu_fidelity``     Pearson correlation over ``samples`` random subsets S    higher
                    of ``subset`` of the cells of a ``grid x grid``
                    partition between ``sum_S map`` and
                    ``f(x) - f(x with S at baseline)``; Bhatt et al. 2020,
                    def. 3 (Xplique's ``MuFidelity``, grid 9, 20%)
``sensitivity_max``  ``max ||E(x + d) - E(x)|| / ||E(x)||`` (Frobenius, the  lower
                    raw explanations) over ``samples`` draws of ``d``
                    uniform in the L-inf ball of ``radius`` of the image's
                    value range; Yeh et al. 2019, normalized as Captum's
``sparseness``      Gini index of ``|map|``: 0 uniform, towards 1 when one   higher
                    pixel holds it all; Chalasani et al. 2020 (Quantus)
``complexity``      entropy of ``|map| / sum |map|`` (nats); Bhatt et al.    lower
                    2020
``random_logit``    SSIM (Wang et al. 2004; 7x7 windows) between the map of  lower
                    the target and that of a random other class, each
                    divided by its largest ``|value|``; Sixt et al. 2020
                    (Quantus' ``RandomLogit``)
==================  =======================================================  ============

Pixels of equal importance are taken in raster order (a stable sort). ``nan`` where a
metric is undefined: a correlation or SSIM of a constant map, the sparseness of a zero map.
:func:`summary` averages over images ignoring those. ``sensitivity_max`` and
``random_logit`` run the method again (a name from
:data:`tbviz.methods.attribution.METHODS` or a callable with its call shape); the
others only run the model. Randomness (subsets, perturbations, the other class) comes
from NumPy's generator seeded with ``seed``.

Where they differ from Xplique: Xplique averages the channels of a 4-D explanation (we
use the map shown), correlates MuFidelity by Spearman on Bernoulli subsets (we follow
the paper: Pearson, subsets of a fixed size) and inserts into a constant baseline (we
follow the paper: a blurred copy; ``baseline=0.0`` gives Xplique's).

Example:
    >>> import numpy as np, keras
    >>> from tbviz import attribution, faithfulness
    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(2, activation="softmax")])
    >>> x = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> maps = attribution.saliency(model, x, target=0)
    >>> curve = faithfulness.deletion(model, x, maps, target=0, steps=4)
    >>> curve.fractions.tolist(), curve.scores.shape, curve.auc.shape
    ([0.0, 0.25, 0.5, 0.75, 1.0], (2, 5), (2,))
    >>> faithfulness.sparseness(maps).shape
    (2,)
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np

from tbviz.core import probes
from tbviz.core.checks import number, positive_int
from tbviz.core.layers import check_images
from tbviz.methods.attribution import registry
from tbviz.methods.attribution.heatmaps import heatmap
from tbviz.methods.attribution.targets import (_num_classes, _score, check_baseline,
                                               check_target, scores)

#: The metrics by name, as ``AttributionCallback(faithfulness=[...])`` takes them.
METRICS = ("deletion", "insertion", "mu_fidelity", "sensitivity_max", "sparseness",
           "complexity", "random_logit")
#: Whether a larger value is the more faithful map, per metric (the tab says it).
HIGHER_IS_BETTER = {"deletion": False, "insertion": True, "mu_fidelity": True,
                    "sensitivity_max": False, "sparseness": True, "complexity": False,
                    "random_logit": False}


class Curve(NamedTuple):
    """A deletion or insertion curve: ``scores[i, k]`` of image ``i`` at ``fractions[k]`` of
    its pixels deleted (inserted), and ``auc[i]``, the area under it (trapezoid)."""

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray


# -- inputs ----------------------------------------------------------------------------------

def _maps(explanations, n, size) -> tuple[dict, bool]:
    """``({name: (N, H, W) float64 maps}, single)`` from an array or a dict of arrays."""
    single = not isinstance(explanations, dict)
    items = {None: explanations} if single else dict(explanations)
    out = {}
    for name, e in items.items():
        m = heatmap(e).astype(np.float64)
        if m.shape != (n,) + tuple(size):
            raise ValueError(f"explanations{'' if single else f' of {name!r}'} have shape "
                             f"{np.shape(e)}; they must be the maps of the {n} images "
                             f"{tuple(size)}: (N, H, W) or (N, H, W, C)")
        out[name] = m
    return out, single


def _unwrap(results: dict, single: bool):
    return results[None] if single else results


def _baseline(baseline, x) -> np.ndarray:
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(f"baseline must be a number, an array broadcastable to the "
                             f"images or 'blur', got {baseline!r}")
        return blurred(x)
    return check_baseline(baseline, x)


def blurred(images, sigma: float = 5.0, radius: int = 5) -> np.ndarray:
    """A Gaussian blur of ``(N, H, W, C)`` images (separable, reflected borders): insertion's
    start, with the kernel of RISE's evaluation code (11 taps, sigma 5).

    >>> blurred(np.ones((1, 4, 4, 1)))[0, :, :, 0].round(6).tolist()[0]
    [1.0, 1.0, 1.0, 1.0]
    """
    x = np.asarray(images, np.float64)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        p = np.pad(x, pad, mode="symmetric")
        x = sum(w * np.take(p, np.arange(i, i + x.shape[axis]), axis=axis)
                for i, w in enumerate(k))
    return x.astype(np.float32)


def _masked_scores(model, x, base, idx, fn, owner, make_masks, max_batch) -> np.ndarray:
    """``f(x[owner] * M + base[owner] * (1 - M))`` per row, ``make_masks(slice)`` giving the
    rows' masks ``M`` ``(B, H, W)`` (1 keeps the pixel): every row of every map and step in
    chunks of ``max_batch``, the perturbed images made inside the probe."""
    _, h, w, c = x.shape

    def build(ref):
        def masked(img, keep, cls, images_t, base_t):
            keep = keep[..., None]
            mixed = (keras.ops.take(images_t, img, axis=0) * keep
                     + keras.ops.take(base_t, img, axis=0) * (1 - keep))
            return _score(ref()(mixed, training=False), cls, fn)
        shape = (None, h, w, c)
        # The chunk's own rows come first: JAX pads the free arguments with as many rows as
        # the first one and cuts outputs of that many rows, which must be the chunk's, not
        # the image stack's.
        return probes.function(ref, masked, (None,), (None, h, w), (None,), shape, shape,
                               dtypes=["int32", "float32", "int32", "float32", "float32"])

    probe = probes.traced(model, ("faithfulness_masked", x.shape[1:], fn), build)
    out = np.empty(len(owner), np.float64)
    for s in probes.batches(len(owner), max_batch):
        out[s] = probes.numpy(probe(owner[s], make_masks(s).astype(np.float32),
                                    idx[owner[s]], x, base))
    return out


def _prepare(model, images, target, max_batch):
    x = check_images(model, images)
    idx, fn = check_target(model, x, target)
    return x, idx, fn, positive_int("max_batch", max_batch)


# -- deletion and insertion ------------------------------------------------------------------

def _causal(model, images, explanations, target, steps, baseline, max_batch, inserting):
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    maps, single = _maps(explanations, len(x), x.shape[1:3])
    steps = positive_int("steps", steps)
    n, h, w, _ = x.shape
    pixels = h * w
    if steps > pixels:
        raise ValueError(f"steps {steps} is more than the {pixels} pixels of an image")
    base = _baseline(baseline, x)
    counts = np.rint(np.arange(steps + 1) * pixels / steps).astype(np.int64)
    names = list(maps)
    # rank[p] = position of pixel p in the order of importance (0: the most important)
    ranks = np.empty((len(names), n, pixels), np.int64)
    for j, name in enumerate(names):
        order = np.argsort(-maps[name].reshape(n, pixels), axis=1, kind="stable")
        np.put_along_axis(ranks[j], order, np.arange(pixels)[None, :], axis=1)
    rows = len(names) * n * (steps + 1)
    which = np.arange(rows)
    j_of, i_of, k_of = which // (n * (steps + 1)), (which // (steps + 1)) % n, which % (steps + 1)

    def make_masks(s):
        r = ranks[j_of[s], i_of[s]]  # (B, pixels)
        changed = r < counts[k_of[s]][:, None]
        keep = changed if inserting else ~changed
        return keep.reshape(-1, h, w)

    f = _masked_scores(model, x, base, idx, fn, i_of.astype(np.int32), make_masks, max_batch)
    f = f.reshape(len(names), n, steps + 1)
    fractions = counts / pixels
    out = {name: Curve(fractions, f[j], np.trapezoid(f[j], fractions, axis=1))
           for j, name in enumerate(names)}
    return _unwrap(out, single)


def deletion(model, images, explanations, target, steps: int = 10, baseline=0.0,
             max_batch: int = 64):
    """The deletion curve (Petsiuk et al. 2018): ``f`` as the most important pixels (all
    channels) are set to ``baseline`` (default 0, a number, an array like the images, or
    ``"blur"``), in ``steps`` equal parts (Xplique's default, 10); a :class:`Curve`
    (a dict of them for a dict of explanations). A faithful map makes ``f`` fall at once:
    a small area.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(1)])
    >>> deletion(m, np.ones((1, 4, 4, 1)), np.ones((1, 4, 4)), 0, steps=2).fractions.tolist()
    [0.0, 0.5, 1.0]
    """
    return _causal(model, images, explanations, target, steps, baseline, max_batch, False)


def insertion(model, images, explanations, target, steps: int = 10, baseline="blur",
              max_batch: int = 64):
    """The insertion curve (Petsiuk et al. 2018): ``f`` as the most important pixels are put
    back into ``baseline`` (default ``"blur"``, the image blurred by :func:`blurred`, the
    paper's start; ``0.0`` is Xplique's), in ``steps`` equal parts; a :class:`Curve`. A
    faithful map makes ``f`` rise at once: a large area.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(1)])
    >>> insertion(m, np.ones((1, 4, 4, 1)), np.ones((1, 4, 4)), 0, steps=4).scores.shape
    (1, 5)
    """
    return _causal(model, images, explanations, target, steps, baseline, max_batch, True)


# -- MuFidelity ------------------------------------------------------------------------------

def pearson(a, b, axis=-1) -> np.ndarray:
    """Pearson correlation along ``axis``; ``nan`` where either side is constant.

    >>> float(pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]).round(4))
    0.9934
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(axis=axis) / np.where(norm > 0, norm, 1), np.nan)


def mu_fidelity(model, images, explanations, target, samples: int = 128, grid: int = 9,
                subset: float = 0.2, baseline=0.0, max_batch: int = 64, seed: int | None = 0):
    """Faithfulness correlation (Bhatt et al. 2020, def. 3), ``(N,)`` (a dict for a dict).

    The image is cut into ``grid x grid`` cells (Xplique's 9); each of ``samples`` subsets
    ``S`` holds ``round(subset * grid**2)`` cells (at least one) drawn without replacement,
    the same subsets for every image and map. Per image: the Pearson correlation, over the
    subsets, between the map's sum over ``S`` and the score's drop when ``S`` is set to
    ``baseline``. The ``samples * N`` perturbed images are scored once for all maps.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(1)])
    >>> x = np.random.rand(1, 4, 4, 1).astype("float32")
    >>> w = keras.ops.convert_to_numpy(m.layers[-1].kernel).reshape(1, 4, 4)
    >>> float(mu_fidelity(m, x, w * x[..., 0], 0, samples=16, grid=4)[0].round(6))  # exact
    1.0
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    maps, single = _maps(explanations, len(x), x.shape[1:3])
    samples, grid = positive_int("samples", samples), positive_int("grid", grid)
    subset = number("subset", subset)
    n, h, w, _ = x.shape
    if grid > min(h, w):
        raise ValueError(f"grid {grid} has more cells than the images ({h}, {w}) have pixels")
    if not 0 < subset < 1:
        raise ValueError(f"subset is the fraction of cells set to the baseline, in (0, 1); "
                         f"got {subset}")
    cells = grid * grid
    size = max(1, int(round(subset * cells)))
    rng = np.random.default_rng(seed)
    chosen = np.zeros((samples, cells), bool)
    for s in range(samples):
        chosen[s, rng.choice(cells, size, replace=False)] = True
    cell = (np.arange(h)[:, None] * grid // h) * grid + np.arange(w)[None, :] * grid // w
    hidden = chosen[:, cell]  # (samples, H, W)
    base = _baseline(baseline, x)
    owner = np.repeat(np.arange(n, dtype=np.int32), samples)
    which = np.tile(np.arange(samples), n)
    f = _masked_scores(model, x, base, idx, fn, owner, lambda s: ~hidden[which[s]], max_batch)
    drop = scores(model, x, idx, fn, max_batch)[:, None] - f.reshape(n, samples)
    out = {name: pearson(np.einsum("nhw,shw->ns", m, hidden), drop)
           for name, m in maps.items()}
    return _unwrap(out, single)


# -- sensitivity and the random logit (the method runs again) --------------------------------

def _method(method, options):
    options = dict(options or {})
    if callable(method):
        return lambda model, images, target: method(model, images, target, **options)
    allowed = registry.method_options(method)  # raises for an unknown name, listing them
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {method}; it takes "
                         f"{', '.join(allowed)}")
    fn = registry.get(method)
    return lambda model, images, target: fn(model, images, target, **options)


def sensitivity_max(model, images, method, target, samples: int = 10, radius: float = 0.02,
                    options: dict | None = None, seed: int | None = 0) -> np.ndarray:
    """Max-sensitivity (Yeh et al. 2019), ``(N,)``: the largest relative change of the raw
    explanation, ``||E(x + d) - E(x)||_F / ||E(x)||_F``, over ``samples`` perturbations ``d``
    drawn uniformly from the L-inf ball of ``radius`` times the image's value range
    (Captum's ``sensitivity_max``: 10 samples, radius 0.02, normalized). ``method``: a
    method name or a callable ``(model, images, target) -> explanations`` called with
    ``options``; the ``N * samples`` perturbed copies go through it as one batch.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> float(sensitivity_max(m, np.random.rand(2, 4, 4, 1), "saliency", 0).max()) < 1e-6
    True
    """
    run = _method(method, options)
    x = check_images(model, images)
    idx, fn = check_target(model, x, target)
    samples = positive_int("samples", samples)
    radius = number("radius", radius)
    n = len(x)
    axes = tuple(range(1, x.ndim))
    span = (x.max(axis=axes) - x.min(axis=axes)).reshape((-1,) + (1,) * len(axes))
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(n), samples)
    noisy = x[owner] + (rng.uniform(-1, 1, (n * samples,) + x.shape[1:]) * radius
                        * span[owner]).astype(np.float32)
    e0 = np.asarray(run(model, x, target if fn is not None else idx), np.float64)
    e = np.asarray(run(model, noisy, target if fn is not None else idx[owner]), np.float64)
    diff = np.sqrt(((e - e0[owner]) ** 2).reshape(n * samples, -1).sum(axis=1))
    norm = np.sqrt((e0 ** 2).reshape(n, -1).sum(axis=1))
    rel = diff.reshape(n, samples) / np.where(norm > 0, norm, 1)[:, None]
    return rel.max(axis=1)


def _window_means(a, win):
    """Means of ``a`` (..., H, W) over every ``win x win`` window (valid positions)."""
    c = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)]).cumsum(-2).cumsum(-1)
    s = c[..., win:, win:] - c[..., :-win, win:] - c[..., win:, :-win] + c[..., :-win, :-win]
    return s / (win * win)


def ssim(a, b, data_range: float, win: int = 7) -> np.ndarray:
    """Mean structural similarity (Wang et al. 2004) of ``(..., H, W)`` maps over ``win x win``
    windows, with sample covariances, ``K1 = 0.01``, ``K2 = 0.03`` (scikit-image's
    ``structural_similarity`` defaults); windows shrink to the map when it is smaller.

    >>> m = np.random.default_rng(0).random((8, 8))
    >>> float(ssim(m, m, 1.0))
    1.0
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    win = min(win, a.shape[-1], a.shape[-2])
    win -= 1 - win % 2  # odd, as scikit-image requires
    cov = win * win / (win * win - 1)
    ma, mb = _window_means(a, win), _window_means(b, win)
    va = cov * (_window_means(a * a, win) - ma * ma)
    vb = cov * (_window_means(b * b, win) - mb * mb)
    vab = cov * (_window_means(a * b, win) - ma * mb)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return s.mean(axis=(-2, -1))


def _normalized(m):
    peak = np.abs(m).reshape(len(m), -1).max(axis=1).reshape((-1, 1, 1))
    return np.where(peak > 0, m / np.where(peak > 0, peak, 1), np.nan)


def random_logit(model, images, method, target, options: dict | None = None,
                 seed: int | None = 0, explanations=None) -> np.ndarray:
    """The random-logit test (Sixt et al. 2020), ``(N,)``: the SSIM (:func:`ssim`) between
    the map of the target class and that of a class drawn uniformly from the others, each
    map divided by its largest ``|value|`` (``data_range``: the larger of their ranges). A map
    that explains the class changes with it: low similarity. ``target`` must be class
    indices; ``explanations``: the target's explanations when already computed.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(3)])
    >>> random_logit(m, np.random.rand(2, 8, 8, 1), "saliency", [0, 1]).shape
    (2,)
    """
    if callable(target):
        raise ValueError("random_logit compares the maps of two classes, so target must be "
                         "class indices, not a callable")
    run = _method(method, options)
    x = check_images(model, images)
    idx, _ = check_target(model, x, target)
    classes = _num_classes(model, x.shape[1:])
    if classes < 2:
        raise ValueError(f"random_logit needs a model with two classes or more; model "
                         f"{model.name!r} has {classes}")
    rng = np.random.default_rng(seed)
    other = (idx + rng.integers(1, classes, len(idx))) % classes  # uniform over the others
    mine = explanations if explanations is not None else run(model, x, idx)
    a, b = (_normalized(_maps(e, len(x), x.shape[1:3])[0][None])
            for e in (mine, run(model, x, other)))
    spread = np.maximum(np.ptp(a.reshape(len(x), -1), axis=1), np.ptp(b.reshape(len(x), -1), axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.array([ssim(p, q, r) if r > 0 else np.nan for p, q, r in zip(a, b, spread)])


# -- properties of the map alone -------------------------------------------------------------

def sparseness(explanations):
    """The Gini index of each map's ``|values|`` (Chalasani et al. 2020; Quantus'
    ``Sparseness``): ``sum_i (2i - n - 1) a_(i) / (n sum a)`` over the ``n`` values sorted
    ascending; ``(N,)`` (a dict for a dict), ``nan`` for a zero map.

    >>> sparseness(np.array([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 5.0]]])).tolist()
    [0.0, 0.75]
    """
    maps, single = _maps_alone(explanations)
    out = {}
    for name, m in maps.items():
        a = np.sort(np.abs(m).reshape(len(m), -1), axis=1)
        n = a.shape[1]
        total = a.sum(axis=1)
        weights = 2 * np.arange(1, n + 1) - n - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(total > 0, (a * weights).sum(axis=1) / (n * total), np.nan)
    return _unwrap(out, single)


def complexity(explanations):
    """The entropy (nats) of each map's fractional contributions ``|a_i| / sum |a|`` (Bhatt
    et al. 2020): ``log(H * W)`` for a uniform map, 0 for one pixel; ``nan`` for a zero map.

    >>> complexity(np.array([[[0.0, 0.0], [0.0, 2.0]]])).tolist()
    [0.0]
    """
    maps, single = _maps_alone(explanations)
    out = {}
    for name, m in maps.items():
        a = np.abs(m).reshape(len(m), -1)
        total = a.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = a / total
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0).sum(axis=1)
            out[name] = np.where(total[:, 0] > 0, 0.0 - plogp, np.nan)
    return _unwrap(out, single)


def _maps_alone(explanations):
    single = not isinstance(explanations, dict)
    items = {None: explanations} if single else dict(explanations)
    return {k: heatmap(v).astype(np.float64) for k, v in items.items()}, single


def summary(values) -> float:
    """The mean over images of a metric's per-image values, ``nan`` ones left out (``nan``
    when all are): the scalar a callback logs.

    >>> summary(np.array([0.5, np.nan, 1.0]))
    0.75
    """
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
