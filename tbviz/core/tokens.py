"""A vision transformer's tokens as the grid of image patches they came from.

A ViT layer outputs ``(N, T, D)``: one token per image patch, in row-major order
(the order a patch-embedding ``Conv2D`` with ``strides=patch`` followed by a
reshape gives), often after one class token. Spatial methods (Grad-CAM, feature
maps) need ``(N, h, w, D)``. :func:`token_grid` finds ``(h, w)`` and whether to
drop a leading class token from the token count and the image shape alone, where
that is unambiguous:

* ``T = h * w`` with ``h / w = H / W`` (no class token),
* ``T = h * w + 1`` (a class token first, dropped), or
* ``T = h * w + 2`` (DeiT's class and distillation tokens first, dropped),

and otherwise takes them as given (``grid=(h, w)``, ``class_token=True/False`` or the
number of leading tokens). A 4-D ``(N, h, w, C)`` output is a grid already.

:func:`as_units` is the one hook through which the deconvnet's projector and the
dataset scan see a layer: tokens on their grid, other outputs as they are. Which
layers of a model are token layers worth showing is :func:`default_token_layers`'s
choice (the transformer's block outputs where it has them).

Example:
    >>> import numpy as np
    >>> from tbviz.core.tokens import token_grid, to_grid
    >>> token_grid((1, 17, 8), (32, 32, 3))    # 4x4 patches of 8 pixels and a class token
    (4, 4, 1)
    >>> token_grid((1, 8, 8, 8), (32, 32, 3))  # a conv feature map: already a grid
    (8, 8, 0)
    >>> to_grid(np.zeros((2, 17, 8)), (4, 4, 1)).shape
    (2, 4, 4, 8)
"""

from __future__ import annotations

import math

import keras
import numpy as np

#: Fewer patch tokens than this are not taken for a grid without being told (a pooled
#: or class-token-only output would be a "1x1 grid").
MIN_AUTO_TOKENS = 4


def _fits(n: int, height: int, width: int):
    """``(h, w)`` with ``h * w == n`` and the image's aspect ratio, or ``None``."""
    if n < MIN_AUTO_TOKENS or not (height and width):
        return None
    h = round(math.sqrt(n * height / width))
    if h < 1 or n % h:
        return None
    w = n // h
    return (h, w) if h * width == w * height else None


def token_grid(shape, image_shape, grid=None, class_token=None):
    """``(h, w, skip)`` for a layer output ``shape`` (batch axis included) on images of
    ``image_shape`` ``(H, W, C)``: the patch grid and how many leading tokens to drop.
    ``None`` when a 3-D output is not a token grid (or the rank is neither 3 nor 4).

    ``grid`` ``(h, w)`` and ``class_token`` (``True``: one leading token to drop,
    ``False``: none) say it explicitly; a ``ValueError`` when they do not match ``shape``.

    >>> token_grid((1, 33, 192), (64, 128, 3))   # a 4x8 grid of 16-pixel patches + class
    (4, 8, 1)
    >>> token_grid((1, 7, 4), (32, 32, 3)) is None      # 7 or 6 tokens: no square grid
    True
    >>> token_grid((1, 10, 4), (32, 32, 3), grid=(3, 3), class_token=True)
    (3, 3, 1)
    """
    shape = tuple(shape)
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), 0
    if len(shape) != 3 or shape[1] is None:
        return None
    tokens = int(shape[1])
    skips = (0, 1, 2) if class_token is None else (_leading(class_token),)
    if grid is not None:
        h, w = (int(g) for g in grid)
        for skip in skips:
            if h * w + skip == tokens:
                return h, w, skip
        told = "" if class_token is None else f" and class_token={class_token}"
        raise ValueError(f"token_grid={tuple(grid)}{told} does not fit {tokens} tokens: "
                         f"{h}x{w} = {h * w} patch tokens, plus one class token (or two, "
                         "DeiT's) or none")
    for skip in skips:
        hw = _fits(tokens - skip, image_shape[0], image_shape[1])
        if hw is not None:
            return hw + (skip,)
    return None


def _leading(class_token) -> int:
    """Leading tokens to drop for ``class_token``: ``True`` 1, ``False`` 0, or a count."""
    if isinstance(class_token, bool):
        return int(class_token)
    if isinstance(class_token, (int, np.integer)) and class_token >= 0:
        return int(class_token)
    raise ValueError(f"class_token must be True, False or the number of leading tokens "
                     f"(2 for DeiT's class and distillation tokens), got {class_token!r}")


def as_units(out, image_shape, grid=None, class_token=None, layer: str | None = None):
    """``(units, found)``: a layer output ``out`` (a tensor) as units of the deconvnet and the
    scan, and its grid. Tokens ``(N, T, D)`` come back as ``(N, h, w, D)`` and ``(h, w,
    skip)``; any other rank as it is, with ``None``. A 3-D output that is no token grid is a
    ``ValueError`` saying how to give the grid.

    >>> units, found = as_units(np.zeros((2, 17, 8)), (32, 32, 3))
    >>> units.shape, found
    ((2, 4, 4, 8), (4, 4, 1))
    """
    if len(out.shape) != 3:
        return out, None
    image_shape = tuple(int(d) for d in image_shape)
    name = "the layer" if layer is None else f"layer {layer!r}"
    try:
        found = token_grid(tuple(out.shape), image_shape, grid, class_token)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if found is None:
        raise ValueError(
            f"{name} outputs {tuple(out.shape[1:])} per image, which is no grid of patch tokens "
            f"for images of {image_shape[:2]} (T = h*w at the image's aspect ratio, after one "
            "or two leading tokens or none); say the grid with token_grid=(h, w) and "
            "class_token=")
    return to_grid(out, found), found


def to_grid(values, grid):
    """``(N, T, D)`` tokens (array or tensor) as ``(N, h, w, D)`` for ``grid`` from
    :func:`token_grid`; a 4-D input is returned as it is."""
    h, w, skip = grid
    if len(values.shape) == 4:
        return values
    if isinstance(values, np.ndarray):
        return np.reshape(values[:, skip:], (-1, h, w, values.shape[-1]))
    return keras.ops.reshape(values[:, skip:], (-1, h, w, values.shape[-1]))


def token_layers(shapes: dict, image_shape, grid=None, class_token=None) -> dict:
    """``{path: (h, w, skip)}`` of the layers in ``shapes`` (``{path: output shape}``, e.g.
    from :func:`tbviz.core.probes.layer_output_shapes`) whose 3-D output is a token grid.

    >>> token_layers({"conv": (1, 4, 4, 8), "tokens": (1, 17, 8)}, (32, 32, 3))
    {'tokens': (4, 4, 1)}
    """
    out = {}
    for path, shape in shapes.items():
        if len(shape) != 3:
            continue
        try:
            found = token_grid(shape, image_shape, grid, class_token)
        except ValueError:  # a given grid that does not fit this layer
            continue
        if found is not None:
            out[path] = found
    return out


#: Layers that only pass tokens on (or reshape them): never a default token layer to show.
PASS_THROUGH = (keras.layers.Dropout, keras.layers.Reshape, keras.layers.Identity,
                keras.layers.Permute, keras.layers.Activation)


def default_token_layers(model, shapes: dict, image_shape, n: int = 4, grid=None,
                         class_token=None, depends=None) -> list[str]:
    """Up to ``n`` token layers of ``model`` to show, spread evenly from the first to the last.

    ``shapes`` is ``{path: output shape}`` (network order, e.g.
    :func:`tbviz.core.probes.layer_output_shapes`); ``depends`` (optional) the set of
    paths whose output depends on the image (an ``Embedding`` of positions does not).
    Candidates are token layers (:func:`token_layers`) that are not inside another token
    layer (a custom block's own sub-layers) and not mere pass-throughs
    (:data:`PASS_THROUGH`); where some are ``Add`` layers, a residual transformer's block
    outputs, only those.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Reshape((16, 12), name="t"),
    ...                       keras.layers.Dense(4, name="d1"), keras.layers.Dense(4, name="d2")])
    >>> default_token_layers(m, {"t": (1, 16, 12), "d1": (1, 16, 4), "d2": (1, 16, 4)},
    ...                      (8, 8, 3))
    ['d1', 'd2']
    """
    from tbviz.core.layers import get_layer  # (layers imports nothing from here)

    found = token_layers(shapes, image_shape, grid, class_token)
    picked = []
    for path in found:
        if depends is not None and path not in depends:
            continue
        if any(path.startswith(p + "/") for p in found):
            continue
        if isinstance(get_layer(model, path), PASS_THROUGH):
            continue
        picked.append(path)
    adds = [p for p in picked if isinstance(get_layer(model, p), keras.layers.Add)]
    picked = adds or picked
    if len(picked) <= n:
        return picked
    idx = sorted({round(i * (len(picked) - 1) / (n - 1)) for i in range(n)})
    return [picked[i] for i in idx]
