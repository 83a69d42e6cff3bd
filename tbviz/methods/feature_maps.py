"""Feature maps and kernels: what a layer outputs for an image, and what its filters look like.

* :func:`feature_maps`: every channel of a layer's output for each image, tiled
  into one gray grid per image (channel ``k`` at row ``k // cols``, column
  ``k % cols``).
* :func:`kernels`: a conv layer's filters as tiles. A layer reading 3 channels
  (the first layer of an RGB network) gives one RGB tile per filter, as in
  Krizhevsky et al.'s and Zeiler & Fergus' figures; a deeper layer gives one gray
  tile per (filter, input channel), filter-major, so a grid with ``cols`` = input
  channels puts one filter per row.

Both return ``uint8`` RGB, ready for ``tf.summary.image`` or Pillow. Values share
one linear scale per image (feature maps) or per layer (kernels), so strong and
dead channels can be told apart; ``scale`` enlarges tiles by pixel repetition
for display.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.methods.feature_maps import feature_maps, kernels
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
    ...                           keras.layers.Conv2D(2, 3, name="c2")])
    >>> feature_maps(model, np.random.rand(5, 8, 8, 3), "c1", pad=1).shape   # 2x2 grid of 6x6
    (5, 13, 13, 3)
    >>> kernels(model, "c1").shape, kernels(model, "c2").shape
    ((4, 3, 3, 3), (8, 3, 3, 3))
"""

from __future__ import annotations

import math

import numpy as np

from tbviz.core import probes, tokens
from tbviz.core.checks import positive_int
from tbviz.core.layers import by_path, check_images, check_layers, get_layer
from tbviz.summary.images import grid, normalize, to_rgb


def display_scale(tile_size: int, at_least: int = 32) -> int:
    """The smallest integer enlargement that shows a ``tile_size`` tile ``at_least`` pixels wide.

    >>> display_scale(3), display_scale(14), display_scale(56)
    (11, 3, 1)
    """
    return max(1, math.ceil(at_least / max(1, int(tile_size))))


def _enlarge(tiles: np.ndarray, scale: int) -> np.ndarray:
    return tiles if scale == 1 else tiles.repeat(scale, axis=-3).repeat(scale, axis=-2)


def feature_maps(model, images, layer: str, scale: int = 1, cols: int | None = None,
                 pad: int = 1, max_batch: int = 32, channels=None, token_grid=None,
                 class_token=None) -> np.ndarray:
    """The layer's output channels for each image, as one tiled ``uint8`` grid per image.

    ``layer`` must have a 4-D ``(N, h, w, C)`` output, or be a vision transformer's
    ``(N, T, D)`` patch tokens, shown on their ``h x w`` grid without the class token
    (found by :mod:`tbviz.core.tokens`, or given as ``token_grid=(h, w)`` and ``class_token``);
    ``channels`` picks some of its channels (a slice or a list of indices; default all).
    Each image's maps share one min-max scale (black = the image's lowest value in any
    channel). Returns
    ``(N, rows*(h*scale+pad)-pad, cols*(w*scale+pad)-pad, 3)``; ``cols`` defaults
    to ``ceil(sqrt(C))``; padding is white.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(9, 1, name="c")])
    >>> feature_maps(m, np.ones((1, 6, 6, 1)), "c", scale=2, pad=0).shape
    (1, 36, 36, 3)
    """
    x = check_images(model, images)
    check_layers(model, [layer])
    scale = positive_int("scale", scale)
    grid = probes.check_spatial(model, x.shape[1:], layer, "feature_maps()", token_grid,
                                class_token)
    maps = grid_outputs(model, x, layer, grid, positive_int("max_batch", max_batch))
    if channels is not None:
        maps = maps[..., channels]
    return map_grids(maps, scale=scale, cols=cols, pad=pad)


def grid_outputs(model, x, layer: str, grid, max_batch: int = 32) -> np.ndarray:
    """``layer``'s float32 outputs for images ``x`` as ``(N, h, w, C)``, patch tokens
    reshaped to ``grid`` (from :func:`tbviz.core.tokens.token_grid`).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Reshape((16, 12), name="t")])
    >>> grid_outputs(m, np.zeros((2, 8, 8, 3), "float32"), "t", (4, 4, 0)).shape
    (2, 4, 4, 12)
    """
    return tokens.to_grid(probes.layer_outputs(model, x, layer, max_batch), grid)


def map_grids(maps, scale: int = 1, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Layer outputs ``(N, h, w, C)`` as the grids of :func:`feature_maps` (NaN shown black).

    >>> map_grids(np.zeros((2, 4, 4, 4)), pad=0).shape
    (2, 8, 8, 3)
    """
    scale = positive_int("scale", scale)
    tiles = np.moveaxis(np.asarray(maps), -1, 1)[..., None]  # (N, C, h, w, 1)
    out = []
    for image_tiles in tiles:
        gray = normalize(image_tiles, per_tile=False)
        out.append(to_rgb(grid(_enlarge(gray, scale), cols=cols, pad=pad)[None])[0])
    return np.stack(out)


def conv_layers(model) -> list[str]:
    """Paths of the layers with a 4-D ``kernel`` (Conv2D, DepthwiseConv2D, ...), in order.

    >>> import keras
    >>> conv_layers(keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3, name="c"),
    ...                               keras.layers.Flatten(), keras.layers.Dense(2)]))
    ['c']
    """
    out = []
    for path, layer in by_path(model).items():
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) == 4:
            out.append(path)
    return out


def kernels(model, layer: str, scale: int = 1) -> np.ndarray:
    """The layer's filters as ``uint8`` RGB tiles, on one min-max scale for the whole layer.

    For a kernel of shape ``(kh, kw, 3, F)`` (a first layer on RGB input): ``(F, kh,
    kw, 3)``, tile ``f`` showing filter ``f`` in color. Otherwise ``(F * C_in, kh,
    kw, 3)`` gray tiles, tile ``f * C_in + c`` showing filter ``f``'s weights on input
    channel ``c``. ``scale`` enlarges each tile. Tile values are
    ``round(255 * (w - w.min()) / (w.max() - w.min()))``.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(5, 3, name="c")])
    >>> kernels(m, "c", scale=4).shape
    (10, 12, 12, 3)
    """
    check_layers(model, [layer])
    scale = positive_int("scale", scale)
    kernel = getattr(get_layer(model, layer), "kernel", None)
    if kernel is None or len(kernel.shape) != 4:
        raise ValueError(f"layer {layer!r} has no 4-D convolution kernel; layers with one: "
                         f"{', '.join(conv_layers(model)) or '(none)'}")
    w = np.asarray(kernel, np.float64)  # (kh, kw, C_in, F)
    if w.shape[2] == 3:
        tiles = np.moveaxis(w, -1, 0)  # (F, kh, kw, 3)
    else:
        tiles = np.transpose(w, (3, 2, 0, 1)).reshape((-1,) + w.shape[:2] + (1,))
    tiles = normalize(tiles, per_tile=False)
    return to_rgb(_enlarge(tiles, scale))


def kernel_grid(model, layer: str, scale: int = 1, pad: int = 1) -> np.ndarray:
    """:func:`kernels` laid out as one image: one tile per filter for RGB layers,
    one row per filter (a column per input channel) for deeper layers.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(5, 3, name="c")])
    >>> kernel_grid(m, "c", pad=1).shape        # 5 rows of 2 tiles
    (19, 7, 3)
    """
    tiles = kernels(model, layer, scale)
    c_in = get_layer(model, layer).kernel.shape[2]
    cols = math.ceil(math.sqrt(len(tiles))) if c_in == 3 else c_in
    return grid(tiles, cols=cols, pad=pad)
