"""Attribution maps as shown: a gradient's channel maximum, and resizing a coarse map to the image.

>>> import numpy as np
>>> from tbviz.methods.attribution.heatmaps import heatmap
>>> heatmap(np.array([[[[1.0, -3.0]]]])).shape
(1, 1, 1)
"""

from __future__ import annotations

import keras
import numpy as np


def heatmap(attributions) -> np.ndarray:
    """``(N, H, W)`` map for display: ``max |a|`` over channels of ``(N, H, W, C)``
    gradients (Simonyan et al.'s saliency map); ``(N, H, W)`` maps pass through.

    >>> heatmap(np.array([[[[1.0, -3.0]]]])).tolist()
    [[[3.0]]]
    """
    a = np.asarray(attributions, np.float32)
    if a.ndim == 4:
        return np.abs(a).max(axis=-1)
    if a.ndim == 3:
        return a
    raise ValueError(f"attributions must be (N, H, W, C) or (N, H, W), got shape {a.shape}")


def _upsample(maps: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``size`` (the papers' upsampling)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    resized = keras.ops.image.resize(maps[..., None], tuple(size), interpolation="bilinear")
    return keras.ops.convert_to_numpy(resized)[..., 0]
