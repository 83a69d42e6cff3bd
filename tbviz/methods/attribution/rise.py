"""RISE (Petsiuk et al. 2018): a black-box saliency map from the scores of randomly masked
copies of the image.

Each mask is a coarse random binary grid (``grid x grid`` cells, each kept with probability
``keep``) bilinearly upsampled to ``(grid + 1) * C`` pixels, ``C = ceil(H / grid)``, and cut
at a random offset in ``[0, C)`` to the image size, so its edges are soft and fall anywhere
(the paper takes ``floor(H / grid)``, which leaves the crop short of the image unless
``grid`` divides it). The map
is ``S = sum_i f(x * M_i) M_i / (keep * samples)`` (the paper's eq. 6, ``E[M] = keep``).

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.rise import rise
>>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
>>> rise(m, np.ones((2, 8, 8, 3)), target=0, samples=16, grid=4).shape
(2, 8, 8)
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tbviz.core import probes
from tbviz.core.checks import number, positive_int
from tbviz.methods.attribution.targets import _prepare, _score, check_baseline


def mask_grids(samples: int, grid: int, keep: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """``(grids, offsets)``: ``samples`` binary ``grid x grid`` grids (float32, 1 = kept) and
    each one's crop offset ``(dy, dx)`` as a fraction of a cell, in ``[0, 1)``.

    >>> g, o = mask_grids(3, 4, 0.5, seed=0)
    >>> g.shape, o.shape
    ((3, 4, 4), (3, 2))
    """
    rng = np.random.default_rng(seed)
    grids = (rng.random((samples, grid, grid)) < keep).astype(np.float32)
    return grids, rng.random((samples, 2)).astype(np.float32)


def _interpolation(size: int, cell: int, grid: int, offset):
    """``(B, size, grid)``: row ``b`` maps the ``grid`` cells to ``size`` pixels as a bilinear
    upsampling to ``(grid + 1) * cell`` pixels (half-pixel centres, edges clamped, as
    ``keras.ops.image.resize``) cut at pixel ``offset[b]``."""
    pos = keras.ops.cast(keras.ops.arange(size), "float32")[None, :] + offset[:, None]
    coord = keras.ops.clip((pos + 0.5) * grid / ((grid + 1) * cell) - 0.5, 0.0, grid - 1.0)
    low = keras.ops.floor(coord)
    frac = (coord - low)[..., None]
    low = keras.ops.cast(low, "int32")
    high = keras.ops.minimum(low + 1, grid - 1)
    return (keras.ops.one_hot(low, grid) * (1 - frac) + keras.ops.one_hot(high, grid) * frac)


def rise(model, images, target, samples: int = 4000, grid: int = 7, keep: float = 0.5,
         baseline=0.0, max_batch: int = 64, seed: int | None = 0) -> np.ndarray:
    """RISE (Petsiuk et al. 2018), ``(N, H, W)``: the expected score of the masked image
    given that a pixel was kept, up to the constant ``f``'s mean.

    Args:
        samples, grid, keep: the masks' count, coarse grid and keep probability (the paper's
            and Xplique's defaults: 4000, 7, 0.5).
        baseline: what a masked pixel becomes, ``x * M + (1 - M) * baseline`` (default 0,
            the paper's ``x * M``).
        seed: seeds NumPy's generator of the coarse grids and their offsets; the same masks
            serve every image, and each mask is upsampled, cut and applied on the device,
            inside the probe, for every (image, mask) row of a ``max_batch`` chunk.

    ``f`` is the model's output as given (a probability for a softmax classifier, as the
    paper and Xplique score), or a callable target's value. The map is normalized by
    ``keep * samples`` as in the paper; Xplique divides by each pixel's own mask sum
    instead, which differs by the masks' sampling noise.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...     keras.layers.Dense(2, activation="softmax")])
    >>> s = rise(m, np.zeros((1, 8, 8, 3)), target=1, samples=4, keep=1.0)  # no mask: S = f
    >>> bool(np.allclose(s, 0.5))
    True
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    samples, grid = positive_int("samples", samples), positive_int("grid", grid)
    keep = number("keep", keep)
    if not 0 < keep <= 1:
        raise ValueError(f"keep is the probability that a mask keeps a cell, in (0, 1]; got {keep}")
    n, h, w, _ = x.shape
    if grid > min(h, w):
        raise ValueError(f"grid {grid} has more cells than the images ({h}, {w}) have pixels")
    base = check_baseline(baseline, x)
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    grids, fractions = mask_grids(samples, grid, keep, seed)
    offsets = np.floor(fractions * [ch, cw]).astype(np.float32)  # whole pixels, [0, cell)

    def build(ref):
        def weighted(img, grids_t, off, cls, images_t, base_t):
            rows = _interpolation(h, ch, grid, off[:, 0])
            cols = _interpolation(w, cw, grid, off[:, 1])
            mask = keras.ops.einsum("bhs,bst,bwt->bhw", rows, grids_t, cols)[..., None]
            masked = (keras.ops.take(images_t, img, axis=0) * mask
                      + keras.ops.take(base_t, img, axis=0) * (1 - mask))
            score = _score(ref()(masked, training=False), cls, fn)
            return score[:, None, None] * mask[..., 0]
        shape = (None, h, w, x.shape[3])
        # The chunk's own rows come first: JAX pads the free arguments with as many rows as
        # the first one and cuts outputs of that many rows, which must be the chunk's, not
        # the image stack's.
        return probes.function(ref, weighted, (None,), (None, grid, grid), (None, 2), (None,),
                               shape, shape,
                               dtypes=["int32", "float32", "float32", "int32", "float32",
                                       "float32"])

    weighted = probes.traced(model, ("rise", x.shape[1:], grid, fn), build)
    owner = np.repeat(np.arange(n, dtype=np.int32), samples)
    which = np.tile(np.arange(samples), n)
    total = np.zeros((n, h, w), np.float64)
    for s in probes.batches(len(owner), max_batch):
        img, m = owner[s], which[s]
        np.add.at(total, img, probes.numpy(weighted(img, grids[m], offsets[m], idx[img], x, base)))
    return (total / (keep * samples)).astype(np.float32)
