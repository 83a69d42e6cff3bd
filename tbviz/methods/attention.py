"""Attention maps of a vision transformer: where each head looks, and attention rollout.

Functions of a model with Keras ``MultiHeadAttention`` layers (arrays in, arrays out):

* :func:`attention_layers` - the model's ``MultiHeadAttention`` layers, in network order;
* :func:`scores` - each layer's attention probabilities on some images, ``(N, heads,
  T_query, T_key)``, in inference mode. They are read by asking the layer for them
  (``return_attention_scores=True``) while a probe runs, so any model that calls its
  attention layers works, Functional or subclassed; what the model itself computes is
  unchanged;
* :func:`head_maps` - each head's attention on the patch grid: from the class token
  where there is one (the view of Dosovitskiy et al. 2021, Fig. 6), else the mean over
  query tokens of the attention each token gets;
* :func:`rollout` - attention rollout (Abnar & Zuidema 2020): per layer the heads'
  mean with the residual connection added (``0.5 A + 0.5 I``, rows renormalized),
  multiplied through the layers, read from the class token (or averaged over tokens)
  on the grid;
* :func:`to_image` - a grid map resized (bilinear) to the image, for an overlay.

The patch grid comes from :func:`tbviz.core.tokens.token_grid` (``token_grid=`` and
``class_token=`` say it where the token count cannot). A layer whose scores do not
map onto the image's grid - windowed attention (Swin: one batch row per window), an
attention over two axes of a folded feature map (MobileViT) or cross-attention - is
left out by :func:`mappable`, which says why.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.methods import attention
    >>> inp = keras.Input((16, 16, 3))
    >>> t = keras.layers.Reshape((16, 48))(keras.layers.Conv2D(48, 4, strides=4)(inp))
    >>> t = keras.layers.MultiHeadAttention(2, 8, name="attn")(t, t)
    >>> model = keras.Model(inp, keras.layers.GlobalAveragePooling1D()(t))
    >>> found = attention.scores(model, np.zeros((3, 16, 16, 3), "float32"), ["attn"])
    >>> found["attn"].shape
    (3, 2, 16, 16)
    >>> grid = attention.mappable(found["attn"].shape, 3, (16, 16, 3))[0]
    >>> attention.head_maps(found["attn"], grid).shape, attention.rollout([found["attn"]], grid).shape
    ((3, 2, 4, 4), (3, 4, 4))
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from tbviz.core import probes, tokens
from tbviz.core.layers import (call_model, check_images, check_layers, get_layer, layer_paths,
                               structure, wrapped_calls)

__all__ = ["attention_layers", "scores", "mappable", "head_maps", "rollout", "to_image",
           "capture_scores"]


def attention_layers(model) -> list[str]:
    """Paths of the model's ``keras.layers.MultiHeadAttention`` layers, in network order.

    >>> import keras
    >>> inp = keras.Input((4, 8))
    >>> m = keras.Model(inp, keras.layers.MultiHeadAttention(2, 4, name="a")(inp, inp))
    >>> attention_layers(m)
    ['a']
    """
    return layer_paths(model, kind=keras.layers.MultiHeadAttention)


@contextlib.contextmanager
def capture_scores(model, paths):
    """Within the block, each attention layer of ``paths`` records its attention scores
    (``{path: (N, heads, T_query, T_key)}``, filled in as the model runs) and returns what
    it returned before; the layers are restored on exit."""
    seen: dict = {}

    def record(path, call, *args, **kwargs):
        wanted = kwargs.get("return_attention_scores", False)
        kwargs["return_attention_scores"] = True
        out, found = call(*args, **kwargs)
        seen[path] = found
        return (out, found) if wanted else out

    with wrapped_calls(model, paths, record):
        yield seen


def scores(model, images, layers, max_batch: int = 32) -> dict[str, np.ndarray]:
    """``{layer: float32 attention probabilities}`` of ``images`` (inference mode), each
    ``(N', heads, ...)`` as the layer computes them (``N' = N`` for global attention). One
    probe per model, layers and image shape, traced once (a later call, a later ``fit``,
    reuses it).
    """
    x = check_images(model, images)
    layers = tuple(check_layers(model, layers))
    missing = [p for p in layers if not isinstance(get_layer(model, p),
                                                   keras.layers.MultiHeadAttention)]
    if missing:
        raise ValueError(f"layer(s) {', '.join(map(repr, missing))} are no MultiHeadAttention "
                         f"layers; attention layers of model {model.name!r}: "
                         f"{', '.join(attention_layers(model)) or '(none)'}")

    def build(ref):
        def probe(xb):
            with capture_scores(ref(), layers) as seen:
                call_model(ref(), xb)
            absent = [p for p in layers if p not in seen]
            if absent:
                raise ValueError(f"attention layer(s) {', '.join(map(repr, absent))} did not run "
                                 f"when model {ref().name!r} was called on images")
            return [keras.ops.cast(seen[p], "float32") for p in layers]
        return probes.function(ref, probe, (None,) + x.shape[1:])

    fn = probes.traced(model, ("attention", structure(model)[0], layers, x.shape[1:]), build)
    parts = [probes.numpy(fn(x[s])) for s in probes.batches(len(x), max_batch)]
    return {p: np.concatenate([part[i] for part in parts]) for i, p in enumerate(layers)}


def mappable(shape, n_images: int, image_shape, token_grid=None, class_token=None):
    """``(grid, None)`` where scores of ``shape`` (from :func:`scores` on ``n_images``
    images) map onto the image's patch grid (``grid`` = ``(h, w, skip)``), else ``(None,
    why)``.

    >>> mappable((2, 4, 17, 17), 2, (32, 32, 3))
    ((4, 4, 1), None)
    >>> mappable((8, 4, 16, 16), 2, (32, 32, 3))[1]
    'it attends within windows (4 rows of scores per image), not over the whole image'
    """
    shape = tuple(shape)
    if len(shape) != 4:
        return None, (f"its scores have shape (N,) + {shape[1:]}: it attends over several "
                      "axes (a folded feature map?), not over one sequence of patch tokens")
    if shape[0] != n_images:
        return None, (f"it attends within windows ({shape[0] // max(n_images, 1)} rows of "
                      "scores per image), not over the whole image")
    if shape[2] != shape[3]:
        return None, f"it attends from {shape[2]} to {shape[3]} tokens (cross-attention)"
    try:
        grid = tokens.token_grid((1, shape[3], 1), image_shape, token_grid, class_token)
    except ValueError as err:
        return None, str(err)
    if grid is None:
        return None, (f"its {shape[3]} tokens form no patch grid for images of "
                      f"{tuple(image_shape[:2])}; say it with token_grid=(h, w) and "
                      "class_token=")
    return grid, None


def _from_tokens(a, grid):
    """``(N, ..., T, T)`` attention -> ``(N, ..., h, w)``: the class token's row, or without
    one the mean over query tokens of the attention each patch token gets."""
    h, w, skip = grid
    row = a[..., 0, skip:] if skip else a[..., skip:, skip:].mean(axis=-2)
    return row.reshape(row.shape[:-1] + (h, w))


def head_maps(attention, grid) -> np.ndarray:
    """``(N, heads, h, w)``: each head's attention on the patch grid (``grid`` from
    :func:`mappable`): from the class token where ``grid`` has one, else the mean over
    query tokens. Rows of the scores sum to 1, so each map sums to at most 1.

    >>> a = np.zeros((1, 1, 5, 5)); a[0, 0, :, 3] = 1.0   # every token looks at token 3
    >>> head_maps(a, (2, 2, 1))[0, 0].tolist()
    [[0.0, 0.0], [1.0, 0.0]]
    """
    return _from_tokens(np.asarray(attention, np.float64), grid)


def rollout(attentions, grid, residual: float = 0.5) -> np.ndarray:
    """``(N, h, w)``: attention rollout (Abnar & Zuidema 2020) through ``attentions``, the
    ``(N, heads, T, T)`` scores of consecutive layers, first layer first. Per layer the mean
    over heads is mixed with the identity for the residual connection, ``residual * I +
    (1 - residual) * A``, rows renormalized; the product ``A_L ... A_1`` is read on the grid
    like :func:`head_maps`.

    >>> eye = np.eye(5)[None, None]          # a layer where every token looks at itself
    >>> float(rollout([eye, eye], (2, 2, 1)).sum())   # the class token ends where it began
    0.0
    """
    if not 0 <= residual <= 1:
        raise ValueError(f"residual must be in [0, 1], got {residual!r}")
    total = None
    for a in attentions:
        a = np.asarray(a, np.float64).mean(axis=1)  # (N, T, T), heads averaged
        mixed = residual * np.eye(a.shape[-1]) + (1 - residual) * a
        mixed /= mixed.sum(axis=-1, keepdims=True)
        total = mixed if total is None else mixed @ total
    if total is None:
        raise ValueError("rollout needs the scores of at least one layer")
    return _from_tokens(total, grid)


def to_image(maps, image_size) -> np.ndarray:
    """Grid maps ``(N, h, w)`` resized (bilinear) to ``image_size`` ``(H, W)``, float32.

    >>> to_image(np.ones((2, 4, 4)), (16, 16)).shape
    (2, 16, 16)
    """
    maps = np.asarray(maps, np.float32)
    if tuple(maps.shape[1:]) == tuple(image_size[:2]):
        return maps
    resized = keras.ops.image.resize(maps[..., None], tuple(image_size[:2]),
                                     interpolation="bilinear")
    return keras.ops.convert_to_numpy(resized)[..., 0]
