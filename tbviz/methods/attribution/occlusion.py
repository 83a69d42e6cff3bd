"""Occlusion sensitivity (Zeiler & Fergus 2013): the score drop when a patch is hidden.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.occlusion import occlusion
>>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
>>> occlusion(m, np.ones((1, 8, 8, 1)), target=0, patch=4).shape
(1, 8, 8)
"""

from __future__ import annotations

import keras
import numpy as np

from tbviz.core import probes
from tbviz.core.checks import positive_pair
from tbviz.methods.attribution.targets import _prepare, _score, check_baseline


def _starts(size: int, patch: int, stride: int) -> np.ndarray:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # one more patch flush with the far edge: cover every pixel
        starts.append(size - patch)
    return np.asarray(starts, np.int32)


def occlusion(model, images, target, patch=8, stride=None, baseline=0.0,
              max_batch: int = 64) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2013): score drop when a patch is hidden.

    A ``patch`` (int or ``(h, w)``) filled from ``baseline`` (a value, or an array
    broadcastable to ``images``, e.g. a blurred copy) slides over each image with
    ``stride`` (default half the patch; the last row and column of patches sit flush
    with the border so every pixel is covered). Returns ``(N, H, W)``: for each pixel
    the mean of ``score(image) - score(occluded image)`` over the patches covering it
    (0 where a stride longer than the patch leaves a pixel uncovered). Positive where
    hiding the pixel lowers the score.

    Every (image, patch position) pair is one row of a batch built inside the
    traced probe, chunked by ``max_batch``: no Python loop over images or patches
    calls the model.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> occlusion(m, np.ones((3, 8, 8, 1)), target=0, patch=4, stride=2).shape
    (3, 8, 8)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    n, h, w, _ = x.shape
    ph, pw = positive_pair("patch", patch)
    if ph > h or pw > w:
        raise ValueError(f"patch {(ph, pw)} is larger than the images ({h}, {w})")
    sh, sw = positive_pair("stride", (max(1, ph // 2), max(1, pw // 2)) if stride is None
                           else stride)
    base = check_baseline(baseline, x)

    ys, xs = _starts(h, ph, sh), _starts(w, pw, sw)
    y0 = np.repeat(ys, len(xs))
    x0 = np.tile(xs, len(ys))
    # One extra "position" off the image scores the unoccluded image in the same pass.
    y0_all = np.concatenate([[h], y0]).astype(np.int32)
    x0_all = np.concatenate([[w], x0]).astype(np.int32)
    p = len(y0_all)
    rows_img = np.repeat(np.arange(n, dtype=np.int32), p)
    rows_pos = np.tile(np.arange(p), n)

    def build(ref):
        def scores(images_t, base_t, img, top, left, cls, ph_t, pw_t):
            r = keras.ops.arange(h)[None, :, None]
            c = keras.ops.arange(w)[None, None, :]
            top, left = top[:, None, None], left[:, None, None]
            hidden = (r >= top) & (r < top + ph_t) & (c >= left) & (c < left + pw_t)
            xo = keras.ops.where(hidden[..., None], keras.ops.take(base_t, img, axis=0),
                                 keras.ops.take(images_t, img, axis=0))
            return _score(ref()(xo, training=False), cls, fn)
        shape = (None, h, w, x.shape[3])
        return probes.function(ref, scores, shape, shape, (None,), (None,), (None,), (None,), (),
                               (), dtypes=["float32"] * 2 + ["int32"] * 6)

    scores_fn = probes.traced(model, ("occlusion", x.shape[1:], fn), build)
    out = np.empty(len(rows_img), np.float64)
    for s in probes.batches(len(rows_img), max_batch):
        img = rows_img[s]
        out[s] = probes.numpy(scores_fn(x, base, img, y0_all[rows_pos[s]], x0_all[rows_pos[s]],
                                        idx[img], np.int32(ph), np.int32(pw)))
    out = out.reshape(n, p)
    drop = out[:, :1] - out[:, 1:]  # (N, positions)

    # Spread each patch's drop over its rectangle: a 2-D difference array turns the
    # rectangle adds into four point adds per patch and two cumulative sums.
    y1, x1 = y0 + ph, x0 + pw
    acc = np.zeros((n, h + 1, w + 1))
    cnt = np.zeros((h + 1, w + 1))
    for yy, xx, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        acc[:, yy, xx] += sign * drop  # (yy, xx) pairs are distinct, so += is exact
        cnt[yy, xx] += sign
    total = acc.cumsum(1).cumsum(2)[:, :h, :w]
    count = np.rint(cnt.cumsum(0).cumsum(1)[:h, :w])
    # A stride longer than the patch skips pixels: no patch hid them, so no drop.
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)

