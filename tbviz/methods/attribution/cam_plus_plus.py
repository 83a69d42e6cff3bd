"""Grad-CAM++ (Chattopadhay et al. 2018): Grad-CAM whose map weights count every positive
gradient location, so several instances of a class each light up.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.cam_plus_plus import grad_cam_plus_plus
>>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
...     keras.layers.Flatten(), keras.layers.Dense(2)])
>>> grad_cam_plus_plus(m, np.ones((1, 8, 8, 3)), target=0).shape
(1, 8, 8)
"""

from __future__ import annotations

import keras
import numpy as np

from tbviz.core import probes
from tbviz.methods.attribution.cam import _cam_probe, grad_cam_layer
from tbviz.methods.attribution.heatmaps import _upsample
from tbviz.methods.attribution.targets import _prepare


def _plus_plus_weighing(a, g):
    """``relu(sum_k w_k A_k)``, ``w_k = sum_ij alpha_ij^k relu(g_ij^k)`` and
    ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (the paper's eq. 19, where the score's
    exponential turns its second and third derivatives into powers of the first)."""
    g2 = g * g
    denominator = 2 * g2 + keras.ops.sum(a, axis=[1, 2], keepdims=True) * g2 * g
    safe = keras.ops.where(denominator != 0, denominator, keras.ops.ones_like(denominator))
    alpha = keras.ops.where(denominator != 0, g2 / safe, keras.ops.zeros_like(g2))
    w = keras.ops.sum(alpha * keras.ops.relu(g), axis=[1, 2], keepdims=True)
    return keras.ops.relu(keras.ops.sum(w * a, axis=-1))


def grad_cam_plus_plus(model, images, target, layer: str | None = None, upsample: bool = True,
                       max_batch: int = 32, token_grid=None, class_token=None) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018) of ``layer``, ``(N, H, W)``.

    The map is ``relu(sum_k w_k A_k)`` with ``w_k = sum_ij alpha_ij^k relu(dS/dA_ij^k)``
    and ``alpha = g^2 / (2 g^2 + sum_ab A_ab^k g^3)`` (0 where that denominator is 0, as
    Xplique's ``GradCAMPP``): the paper's closed form for ``exp(S)``, ``S`` the target's
    logit before a final softmax, as Grad-CAM's. Layers, token grids, ``upsample`` (bilinear)
    and batching as :func:`~tbviz.methods.attribution.grad_cam`: one forward and one
    backward pass per chunk of ``max_batch`` images.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> grad_cam_plus_plus(m, np.ones((2, 8, 8, 3)), target=1, upsample=False).shape
    (2, 6, 6)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    layer, grid = grad_cam_layer(model, x.shape[1:], layer, token_grid, class_token)
    probe = _cam_probe(model, x.shape[1:], layer, grid, fn, predicted=False, with_input=False,
                       weigh=_plus_plus_weighing)
    maps = np.concatenate([probes.numpy(probe(x[s], idx[s]))[2]
                           for s in probes.batches(len(x), max_batch)])
    return _upsample(maps, x.shape[1:3]) if upsample else maps
