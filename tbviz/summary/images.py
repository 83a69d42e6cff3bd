"""Turning raw arrays (projections, patches, heatmaps, kernels) into displayable images.

Pure NumPy: arrays in, ``uint8`` RGB arrays out, ready for ``tf.summary.image``
or Pillow. Contrast is normalized per tile, as in Zeiler & Fergus' figures, so a
weak unit's projection is as visible as a strong one's; the raw values are logged
separately where they matter.

Example:
    >>> import numpy as np
    >>> from tbviz.summary.images import normalize, grid
    >>> tiles = normalize(np.random.randn(9, 5, 5, 3))
    >>> tiles.dtype, tiles.shape
    (dtype('uint8'), (9, 5, 5, 3))
    >>> grid(tiles, pad=1).shape
    (17, 17, 3)
"""

from __future__ import annotations

import math

import numpy as np

from tbviz.core.checks import value_range as check_value_range


def normalize(tiles, mode: str = "minmax", per_tile: bool = True) -> np.ndarray:
    """Scale float tiles ``(N, H, W, C)`` to ``uint8`` for display.

    ``mode="minmax"`` maps each tile's range to 0..255; ``"symmetric"`` maps
    0 to mid-gray and the largest magnitude to 0 or 255 (for signed maps where
    the sign matters). Non-finite values are shown as 0 (black) rather than
    poisoning the scale. A constant tile becomes mid-gray.

    >>> normalize(np.array([[[[-2.0], [0.0], [2.0]]]])).ravel().tolist()
    [0, 128, 255]
    >>> normalize(np.array([[[[-1.0], [0.0], [4.0]]]]), mode="symmetric").ravel().tolist()
    [96, 128, 255]
    """
    if mode not in ("minmax", "symmetric"):
        raise ValueError(f"unknown mode {mode!r}; choose 'minmax' or 'symmetric'")
    x = np.asarray(tiles, dtype=np.float64)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    finite = np.isfinite(x)
    x = np.where(finite, x, 0.0)
    axes = tuple(range(1, x.ndim)) if per_tile else None
    if mode == "minmax":
        lo = x.min(axis=axes, keepdims=True)
        hi = x.max(axis=axes, keepdims=True)
        span = hi - lo
        out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0.5)
    else:
        mag = np.abs(x).max(axis=axes, keepdims=True)
        out = 0.5 + 0.5 * x / np.where(mag > 0, mag, 1)
    out = np.where(finite, out, 0.0)
    out = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    return out[0] if squeeze else out


def to_uint8(images, value_range=(0.0, 255.0)) -> np.ndarray:
    """Map images from ``value_range`` to displayable ``uint8`` (rounded, clipped).

    NaN (a diverged model) has no ``uint8`` value: it shows as the range's low end.

    >>> to_uint8(np.array([-1.0, 0.0, 1.0]), (-1, 1)).tolist()
    [0, 128, 255]
    >>> to_uint8(np.array([-3.0, 0.4, 254.6, 300.0, np.nan])).tolist()
    [0, 0, 255, 255, 0]
    """
    lo, hi = check_value_range(value_range)
    x = (np.asarray(images, np.float64) - lo) / (hi - lo)
    return np.clip(np.round(np.nan_to_num(x * 255, nan=0.0)), 0, 255).astype(np.uint8)


def for_display(images) -> np.ndarray:
    """Input images ``(N, H, W, C)`` as ``uint8`` RGB, to show beside what was computed from them.

    Images in [0, 255] are kept as they are and images in [0, 1] scaled up; any
    other range (mean-subtracted inputs, say) is stretched per image.

    >>> for_display(np.full((1, 1, 1, 1), 0.5)).tolist()  # [0, 1] gray, made RGB
    [[[[128, 128, 128]]]]
    >>> for_display(np.array([[[[-1.0, 0.0, 3.0]]]])).tolist()  # any other range: stretched
    [[[[0, 64, 255]]]]
    """
    x = np.asarray(images)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 1:
        out = to_uint8(x, (0.0, 1.0))
    elif lo >= 0 and hi <= 255:
        out = to_uint8(x)
    else:
        out = normalize(x)
    return to_rgb(out)


def to_rgb(tiles: np.ndarray) -> np.ndarray:
    """Make ``(N, H, W, C)`` tiles 3-channel: gray is repeated, 4+ channels keep the first 3.

    >>> to_rgb(np.full((1, 2, 2, 1), 7, np.uint8))[0, 0, 0].tolist()
    [7, 7, 7]
    """
    c = tiles.shape[-1]
    if c == 3:
        return tiles
    if c == 1:
        return np.repeat(tiles, 3, axis=-1)
    if c == 2:
        return np.concatenate([tiles, tiles[..., :1]], axis=-1)
    return tiles[..., :3]


def grid(tiles, cols: int | None = None, pad: int = 2, pad_value: int = 255,
         cell: tuple[int, int] | None = None) -> np.ndarray:
    """Tile ``(N, H, W, C)`` images into one ``(rows*(H+pad)-pad, cols*(W+pad)-pad, C)`` image.

    ``cols`` defaults to ``ceil(sqrt(N))`` (9 tiles -> the paper's 3x3 view).
    Tiles of different sizes (patches at image borders) are centred in the
    largest tile's cell, or in cells of ``cell = (height, width)`` when given (at least
    the largest tile), so that grids of other tiles line up with this one.

    >>> grid(np.zeros((9, 4, 4, 3), np.uint8)).shape  # 3x3 tiles of 4 px, 2 px apart
    (16, 16, 3)
    >>> grid([np.zeros((3, 3, 1), np.uint8), np.zeros((1, 1, 1), np.uint8)], pad=1)[..., 0]
    array([[  0,   0,   0, 255, 255, 255, 255],
           [  0,   0,   0, 255, 255,   0, 255],
           [  0,   0,   0, 255, 255, 255, 255]], dtype=uint8)
    """
    tiles = list(tiles) if not isinstance(tiles, np.ndarray) else list(tiles)
    if not tiles:
        raise ValueError("grid() needs at least one tile")
    n = len(tiles)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th = max([t.shape[0] for t in tiles] + [cell[0] if cell else 0])
    tw = max([t.shape[1] for t in tiles] + [cell[1] if cell else 0])
    ch = tiles[0].shape[2] if tiles[0].ndim == 3 else 1
    dtype = tiles[0].dtype
    out = np.full((rows * (th + pad) - pad, cols * (tw + pad) - pad, ch), pad_value, dtype=dtype)
    for i, t in enumerate(tiles):
        if t.ndim == 2:
            t = t[..., None]
        r, c = divmod(i, cols)
        y = r * (th + pad) + (th - t.shape[0]) // 2
        x = c * (tw + pad) + (tw - t.shape[1]) // 2
        out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


# A perceptually ordered colormap (dark blue -> teal -> yellow), close to viridis.
_CMAP_ANCHORS = np.array([
    [68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37],
], dtype=np.float64)


def colorize(values, lo=None, hi=None) -> np.ndarray:
    """Map a 2-D (or batch of 2-D) float array to ``uint8`` RGB with a viridis-like colormap.

    >>> colorize(np.array([[0.0, 1.0]])).tolist()  # dark blue to yellow
    [[[68, 1, 84], [253, 231, 37]]]
    """
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, 0.0)
    lo = v.min() if lo is None else lo
    hi = v.max() if hi is None else hi
    t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    t = np.clip(t, 0, 1) * (len(_CMAP_ANCHORS) - 1)
    i = np.minimum(np.floor(t).astype(int), len(_CMAP_ANCHORS) - 2)
    f = (t - i)[..., None]
    rgb = _CMAP_ANCHORS[i] * (1 - f) + _CMAP_ANCHORS[i + 1] * f
    return np.round(rgb).astype(np.uint8)


def overlay(image, heat, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap ``(H, W)`` over an RGB image ``(H, W, 3)`` in [0, 255]; returns ``uint8``.

    The heatmap is normalized to its own range, so only its shape matters.

    >>> overlay(np.zeros((4, 4, 3)), np.eye(4)).shape
    (4, 4, 3)
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] != 3:
        img = to_rgb(img[None])[0]
    h = np.asarray(heat, dtype=np.float64)
    h = np.where(np.isfinite(h), h, 0.0)
    if h.max() > h.min():
        h = (h - h.min()) / (h.max() - h.min())
    else:
        h = np.zeros_like(h)
    color = colorize(h, 0.0, 1.0).astype(np.float64)
    # Weight the color by the heat itself so cold regions leave the photo readable.
    a = alpha * h[..., None]
    out = img * (1 - a) + color * a
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
