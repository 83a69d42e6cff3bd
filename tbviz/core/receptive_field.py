"""Receptive fields of convolutional layers, found by walking the Keras graph.

A unit of a convolutional layer depends only on the input pixels under its
receptive field. Along each image axis that field is described by an
:class:`Axis`: unit ``i`` of the layer sees input pixels
``[start + i * jump, start + i * jump + size)`` (``start`` is negative where the
layers pad), and the layer has ``length`` units along the axis for an input of
``image_length`` pixels. The 'same' padding of strided layers depends on the
input length (TensorFlow pads the odd pixel at the end), so a field is always
computed for a given image size.

Layers understood: Conv2D / DepthwiseConv2D / SeparableConv2D (strides,
dilation, 'same' or 'valid'), Max/AveragePooling2D, ZeroPadding2D,
Cropping2D, layers that act on each pixel alone (activations, BatchNorm on the
channel axis, Dropout, Rescaling, ...), merges (Add, Concatenate on channels,
...) and nested Functional/Sequential models. A custom layer that works on each
pixel alone (a preprocessing layer, say) can say so with a class attribute
``tbviz_pointwise = True``. Anything else (Dense, Flatten, global pooling,
upsampling, transposed convolutions, other custom or subclassed layers) has no
field: :func:`receptive_field` returns ``None`` and callers use the whole image.

Example:
    >>> import keras
    >>> from tbviz.core.receptive_field import receptive_field
    >>> m = keras.Sequential([keras.Input((32, 32, 3)),
    ...                       keras.layers.Conv2D(4, 3, padding="same", name="c1"),
    ...                       keras.layers.MaxPooling2D(2, name="p1"),
    ...                       keras.layers.Conv2D(4, 3, name="c2")])
    >>> rows, cols = receptive_field(m, "c2", (32, 32))
    >>> rows
    Axis(size=8, jump=2, start=-1, length=14, image_length=32)
    >>> rows.window(0)        # unit 0 sees rows -1..6 (row -1 is padding)
    (-1, 7)
    >>> rows.window(0, clip=True)
    (0, 7)
"""

from __future__ import annotations

from typing import NamedTuple

import keras

from tbviz.core.layers import check_layers

__all__ = ["Axis", "receptive_field", "crop_plan", "crop_start", "unit_crop"]


class Axis(NamedTuple):
    """A layer's receptive-field geometry along one image axis (see module doc)."""

    size: int
    jump: int
    start: int
    length: int
    image_length: int

    def window(self, i: int, clip: bool = False) -> tuple[int, int]:
        """Input pixels ``[lo, hi)`` under unit ``i``; ``clip`` keeps them inside the image."""
        lo = self.start + int(i) * self.jump
        hi = lo + self.size
        if clip:
            lo, hi = max(lo, 0), min(hi, self.image_length)
        return lo, hi


class _Unconnected:
    """Marker: the tensor does not depend on the image input."""


_UNCONNECTED = _Unconnected()

_POINTWISE = tuple(getattr(keras.layers, n) for n in (
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout2D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "Rescaling", "Identity", "ActivityRegularization",
) if hasattr(keras.layers, n))
_MERGES = tuple(getattr(keras.layers, n) for n in (
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
) if hasattr(keras.layers, n))
_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
_POOLS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def _channel_axes_only(axis) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return all(a in (-1, 3) for a in axes)


def _is_pointwise(layer) -> bool:
    """True for layers whose output pixel depends on the same input pixel alone."""
    if isinstance(layer, _POINTWISE) or getattr(layer, "tbviz_pointwise", False) is True:
        return True
    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                          keras.layers.UnitNormalization, keras.layers.Normalization)):
        return _channel_axes_only(layer.axis)
    if isinstance(layer, keras.layers.Softmax):
        return _channel_axes_only(layer.axis)
    if isinstance(layer, keras.layers.PReLU):
        # Without shared spatial axes each pixel has its own slope: position-dependent.
        shared = set(layer.shared_axes or [])
        return {1, 2} <= shared
    return False


def _strided(axis: Axis, kernel: int, stride: int, dilation: int, padding: str) -> Axis | None:
    n = axis.length
    k = (kernel - 1) * dilation + 1
    if padding == "valid":
        out, before = (n - k) // stride + 1, 0
    elif padding == "same":
        out = -(-n // stride)
        before = max((out - 1) * stride + k - n, 0) // 2  # TF puts the odd pixel at the end
    else:
        return None
    if out < 1:
        return None
    return Axis(size=axis.size + (k - 1) * axis.jump, jump=axis.jump * stride,
                start=axis.start - before * axis.jump, length=out,
                image_length=axis.image_length)


def _apply(layer, ins: list):
    """Geometry after ``layer`` given its inputs' geometries (None: unknown)."""
    connected = [g for g in ins if g is not _UNCONNECTED]
    if not connected:
        return _UNCONNECTED
    if any(g is None for g in connected):
        return None
    if isinstance(layer, _MERGES):
        if isinstance(layer, keras.layers.Concatenate) and not _channel_axes_only(layer.axis):
            return None
        merged = []
        for axes in zip(*connected):
            if len({(a.jump, a.length) for a in axes}) != 1:
                return None
            lo = min(a.start for a in axes)
            hi = max(a.start + a.size for a in axes)
            merged.append(axes[0]._replace(start=lo, size=hi - lo))
        return tuple(merged)
    if len(connected) != 1 or len(ins) != 1:
        return None
    (rows, cols), = connected
    if _is_pointwise(layer):
        return rows, cols
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    if isinstance(layer, _CONVS):
        k, s, d = layer.kernel_size, layer.strides, layer.dilation_rate
        return _pair(_strided(rows, k[0], s[0], d[0], layer.padding),
                     _strided(cols, k[1], s[1], d[1], layer.padding))
    if isinstance(layer, _POOLS):
        k, s = layer.pool_size, layer.strides
        return _pair(_strided(rows, k[0], s[0], 1, layer.padding),
                     _strided(cols, k[1], s[1], 1, layer.padding))
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (t, b), (lft, r) = layer.padding
        return (rows._replace(start=rows.start - t * rows.jump, length=rows.length + t + b),
                cols._replace(start=cols.start - lft * cols.jump, length=cols.length + lft + r))
    if isinstance(layer, keras.layers.Cropping2D):
        (t, b), (lft, r) = layer.cropping
        return _pair(rows._replace(start=rows.start + t * rows.jump, length=rows.length - t - b),
                     cols._replace(start=cols.start + lft * cols.jump,
                                   length=cols.length - lft - r))
    return None


def _pair(rows, cols):
    if rows is None or cols is None or rows.length < 1 or cols.length < 1:
        return None
    return rows, cols


def _graph(model):
    """The Functional graph behind ``model`` (Sequential keeps one inside), or None."""
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
    if model is None or not hasattr(model, "_nodes") or not hasattr(model, "inputs"):
        return None
    return model


def _node_in(layer, graph):
    """The one node where ``layer`` is called inside ``graph`` (None if 0 or several)."""
    from keras.src.ops.function import make_node_key

    idx = [i for i in range(len(layer._inbound_nodes))
           if make_node_key(layer, i) in graph._nodes]
    return layer._inbound_nodes[idx[0]] if len(idx) == 1 else None


def _walk(tensor, bound: dict, memo: dict):
    key = id(tensor)
    if key in bound:
        return bound[key]
    if key in memo:
        return memo[key]
    op, node_index, tensor_index = tensor._keras_history
    node = op._inbound_nodes[node_index]
    if isinstance(op, keras.layers.InputLayer):
        result = _UNCONNECTED  # an input other than the image being probed
    else:
        ins = [_walk(t, bound, memo) for t in node.input_tensors]
        inner = _graph(op) if isinstance(op, keras.Model) else None
        if inner is not None and len(inner.inputs) == len(ins):
            result = _walk(inner.outputs[tensor_index],
                           {id(t): g for t, g in zip(inner.inputs, ins)}, {})
        elif isinstance(op, keras.Model):
            result = None  # subclassed model: its insides are not a graph
        else:
            result = _apply(op, ins)
    memo[key] = result
    return result


def receptive_field(model, layer: str, image_size) -> tuple[Axis, Axis] | None:
    """Receptive field ``(rows, cols)`` of ``layer``'s units for images of ``image_size``.

    ``image_size`` is ``(height, width)`` (extra trailing entries such as
    channels are ignored). Returns ``None`` when the field cannot be worked out
    (a layer that is not convolutional all the way down, a subclassed model, a
    layer called more than once); callers then treat every unit as seeing the
    whole image. Raises ``ValueError`` for an unknown layer (listing the layers)
    or a layer that does not depend on the image input.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, name="c")])
    >>> receptive_field(m, "c", (8, 8))[0]
    Axis(size=3, jump=1, start=0, length=6, image_length=8)
    """
    check_layers(model, [layer])
    height, width = int(image_size[0]), int(image_size[1])
    parts = layer.split("/")
    graph = _graph(model)
    if graph is None or len(graph.inputs) != 1:
        return None
    geometry = (Axis(1, 1, 0, height, height), Axis(1, 1, 0, width, width))
    bound = {id(graph.inputs[0]): geometry}
    owner = model
    for depth, name in enumerate(parts):
        target = owner.get_layer(name)
        node = _node_in(target, graph)
        if node is None:
            return None
        last = depth == len(parts) - 1
        if last or not isinstance(target, keras.Model):
            if not last:
                return None
            result = _walk(node.output_tensors[0], bound, {})
            break
        # Descend: the nested model's input is bound to what its caller fed it.
        ins = [_walk(t, bound, {}) for t in node.input_tensors]
        graph = _graph(target)
        if graph is None or len(graph.inputs) != len(ins):
            return None
        bound = {id(t): g for t, g in zip(graph.inputs, ins)}
        owner = target
    if result is _UNCONNECTED:
        raise ValueError(f"layer {layer!r} does not depend on the image input of model "
                         f"{model.name!r}; choose a layer downstream of it")
    if result is None:
        return None
    if len(node.output_tensors) != 1 or len(node.output_tensors[0].shape) != 4:
        return None
    # Cross-check our arithmetic against Keras' static shapes where it knows them.
    static = node.output_tensors[0].shape[1:3]
    for known, axis in zip(static, result):
        if known is not None and known != axis.length:
            return None
    return result


def crop_plan(axis: Axis) -> int | None:
    """Length of the input crop that reproduces any unit along ``axis`` exactly, or None.

    A crop that starts at a multiple of ``jump`` and whose length is congruent
    to the image length modulo ``jump`` gets exactly the same padding at every
    strided 'same' layer as the whole image, and positions that are a whole
    number of units apart; so a unit whose field (clipped to the image) lies in
    the crop comes out the same, with the image's own zero padding at the real
    borders. ``None`` when such a crop would be the whole axis anyway.

    >>> crop_plan(Axis(size=14, jump=2, start=-3, length=112, image_length=224))
    16
    """
    n, j = axis.image_length, axis.jump
    need = axis.size + j - 1  # room to slide the start down to a multiple of jump
    length = need + (n - need) % j
    return None if length >= n else length


def crop_start(axis: Axis, i: int, length: int) -> int:
    """Where the crop of :func:`crop_plan`'s ``length`` starts for unit ``i``."""
    lo, _ = axis.window(i, clip=True)
    start = (lo // axis.jump) * axis.jump
    return min(start, axis.image_length - length)


def unit_crop(axis: Axis, i: int) -> tuple[int, int]:
    """``(start, length)`` of the input crop that unit ``i`` is projected from, along ``axis``.

    Where the field is smaller than the image every unit gets the same length
    (:func:`crop_plan`), so units batch together. Where it is not, each unit gets
    the smallest crop holding its field clipped to the image, with the same
    alignment rules: a unit near a border needs less than the whole image.

    >>> axis = Axis(size=252, jump=16, start=-118, length=14, image_length=224)
    >>> unit_crop(axis, 0), unit_crop(axis, 7), unit_crop(axis, 13)
    ((0, 144), (0, 224), (80, 144))
    """
    standard = crop_plan(axis)
    if standard is not None:
        return crop_start(axis, i, standard), standard
    lo, hi = axis.window(i, clip=True)
    start = (lo // axis.jump) * axis.jump
    need = hi - start
    return start, need + (axis.image_length - need) % axis.jump
