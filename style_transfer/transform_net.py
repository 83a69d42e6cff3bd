"""The image transformation network of Johnson et al. 2016 (fast neural style).

``photo (N, H, W, 3) in [0, 255]  ->  stylized photo (N, H, W, 3) in [0, 255]``

Layers, named as in the paper's figures so deconvnet tags and the op graph read alike:

=========  =====================================================================
layer      what it is
=========  =====================================================================
pad        reflect-pad height and width up to a multiple of 4 (any input size)
conv1      9x9 conv, 32 filters, instance norm, ReLU
conv2      3x3 conv stride 2, 64 filters, instance norm, ReLU
conv3      3x3 conv stride 2, 128 filters, instance norm, ReLU
res1..5    residual blocks: two 3x3 convs of 128 with instance norm, ReLU between
up1        nearest-neighbour x2 upsampling + 3x3 conv, 64 filters, norm, ReLU
up2        nearest-neighbour x2 upsampling + 3x3 conv, 32 filters, norm, ReLU
output     9x9 conv to 3 channels, ``127.5 * (tanh + 1)`` so pixels lie in [0, 255]
crop       crop back to the input's height and width
=========  =====================================================================

Every convolution pads by reflection (no dark borders). Upsampling is nearest
neighbour followed by a convolution rather than a transposed convolution, which
avoids the checkerboard artefacts of uneven kernel overlap (Odena et al. 2016).
Instance normalization is Keras' ``GroupNormalization`` with one group per
channel, with a learned scale (``gamma``) and shift (``beta``) per channel.
About 1.68M parameters, like the reference implementations.

Example:
    >>> import numpy as np
    >>> from style_transfer.transform_net import build_transform_net
    >>> net = build_transform_net()
    >>> net.count_params()
    1679235
    >>> tuple(net(np.zeros((1, 37, 50, 3), "float32")).shape)
    (1, 37, 50, 3)
"""

from __future__ import annotations

import os

import keras
from keras import ops

#: Layer names in network order (the probe layers of the style pipeline).
LAYER_NAMES = ("conv1", "conv2", "conv3", "res1", "res2", "res3", "res4", "res5",
               "up1", "up2", "output")

#: Smallest height or width the network accepts: the reflection pads of the
#: quarter-resolution layers need at least two rows and columns there.
MIN_SIZE = 8

_PACKAGE = "style_transfer"


@keras.saving.register_keras_serializable(_PACKAGE)
class InstanceNormalization(keras.layers.GroupNormalization):
    """Keras' ``GroupNormalization`` whose variance is never negative.

    ``keras.ops.moments`` on PyTorch computes the variance as ``E[x^2] - E[x]^2``, which
    rounds below zero for a constant channel (a flat photo, a flat crop): ``rsqrt`` of it
    is NaN. Here the variance is ``E[(x - E[x])^2]`` on every backend, as TensorFlow's own
    ``tf.nn.moments`` computes it; the rest (scale, shift, float32 compute) is Keras'.

    >>> import numpy as np
    >>> norm = InstanceNormalization(groups=-1, epsilon=1e-5)
    >>> y = ops.convert_to_numpy(norm(np.full((1, 4, 4, 2), 77.7, "float32")))
    >>> bool(np.isfinite(y).all()), float(np.abs(y).max())
    (True, 0.0)
    """

    def _apply_normalization(self, reshaped_inputs, input_shape):
        dtype = reshaped_inputs.dtype
        x = ops.cast(reshaped_inputs, keras.backend.result_type(dtype, "float32"))
        axes = list(range(1, len(x.shape)))
        axes.pop(-2 if self.axis == -1 else self.axis - 1)  # the group axis stays
        shape = self._create_broadcast_shape(input_shape)
        mean = ops.mean(x, axis=axes, keepdims=True)
        inv = ops.rsqrt(ops.mean(ops.square(x - mean), axis=axes, keepdims=True) + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(ops.reshape(self.gamma, shape), x.dtype)
        out = (x - mean) * inv
        if self.center:
            out = out + ops.cast(ops.reshape(self.beta, shape), x.dtype)
        return ops.cast(out, dtype)


def instance_norm(name: str, dtype=None) -> keras.layers.Layer:
    """Instance normalization with learned per-channel scale and shift.

    ``GroupNormalization`` with as many groups as channels normalizes each
    channel of each image over its height and width, which is exactly
    instance normalization (Ulyanov et al. 2016); it computes in float32 under
    mixed precision (:class:`InstanceNormalization`: its variance is exact for flat
    images on every backend).

    >>> instance_norm("norm").groups
    -1
    """
    return InstanceNormalization(groups=-1, epsilon=1e-5, name=name, dtype=dtype)


def reflect_indices(n, before: int, after: int):
    """Indices that reflect-pad an axis of length ``n`` (edge not repeated, like numpy's "reflect").

    >>> ops.convert_to_numpy(reflect_indices(4, 2, 1)).tolist()
    [2, 1, 0, 1, 2, 3, 2]
    """
    i = ops.abs(ops.arange(-before, n + after, dtype="int32"))
    return ops.where(i > n - 1, 2 * (n - 1) - i, i)


def reflect_pad(x, top: int, bottom: int, left: int, right: int):
    """Pad the height and width of an ``(N, H, W, C)`` tensor by reflection.

    A gather along each axis, on every backend: TensorFlow's ``MirrorPad`` kernel is about
    twice as slow on CPUs, and the padding copies are a fifth of the transform-net's time.

    >>> import numpy as np
    >>> ops.convert_to_numpy(reflect_pad(np.arange(3.0).reshape(1, 1, 3, 1), 0, 0, 1, 1))[0, 0, :, 0].tolist()
    [1.0, 0.0, 1.0, 2.0, 1.0]
    """
    x = ops.convert_to_tensor(x)
    shape = ops.shape(x)
    if not _known_zero(top, bottom):  # the amounts may be tensors (PadToMultiple on TF)
        x = ops.take(x, reflect_indices(shape[1], top, bottom), axis=1)
    if not _known_zero(left, right):
        x = ops.take(x, reflect_indices(shape[2], left, right), axis=2)
    return x


def _known_zero(*amounts) -> bool:
    return all(isinstance(a, int) and a == 0 for a in amounts)


def _edge_indices(n):
    # Pad by one repeating the edge pixel (numpy's "edge", TensorFlow's "SYMMETRIC" by one).
    return ops.clip(ops.arange(-1, n + 1, dtype="int32"), 0, n - 1)


def upsample_conv3x3(x, kernel, bias):
    """``conv3x3(reflect_pad(nearest_upsample_x2(x), 1)) + bias``, computed at low resolution.

    Each of the four output phases (even/odd row, even/odd column) of a 3x3
    convolution over a nearest-neighbour-upsampled image sees only 2x2 distinct
    input pixels, with the kernel taps that fall on the same pixel summed. Four
    2x2 convolutions at the input's resolution do 4/9 of the multiply-adds and
    never build the upsampled image; reflecting the upsampled image by one pixel
    equals repeating the edge of the small one. Same function, same weights.

    >>> import numpy as np
    >>> x, k = np.random.rand(1, 3, 4, 2).astype("float32"), np.random.rand(3, 3, 2, 5)
    >>> up = reflect_pad(np.repeat(np.repeat(x, 2, 1), 2, 2), 1, 1, 1, 1)
    >>> direct = ops.conv(up, k.astype("float32"), padding="valid")
    >>> fast = upsample_conv3x3(x, k.astype("float32"), np.zeros(5, "float32"))
    >>> bool(np.allclose(ops.convert_to_numpy(direct), ops.convert_to_numpy(fast), atol=1e-5))
    True
    """
    x = ops.convert_to_tensor(x)
    kernel = ops.cast(kernel, x.dtype)
    shape = ops.shape(x)
    n, h, w = shape[0], shape[1], shape[2]
    edge = ops.take(ops.take(x, _edge_indices(h), axis=1), _edge_indices(w), axis=2)

    def fold(k, axis, phase):
        # Taps (-1, 0, +1) of phase 0 land on pixels (i-1, i, i); of phase 1 on (i, i, i+1).
        t = ops.unstack(k, axis=axis)
        return ops.stack([t[0], t[1] + t[2]] if phase == 0 else [t[0] + t[1], t[2]], axis=axis)

    rows = []
    for a in (0, 1):
        folded = fold(kernel, 0, a)
        phase = [ops.conv(edge[:, a:a + h + 1, b:b + w + 1], fold(folded, 1, b), padding="valid")
                 for b in (0, 1)]
        # Column phase b becomes output column 2j + b.
        rows.append(ops.reshape(ops.stack(phase, axis=3), (n, h, 2 * w, -1)))
    # Row phase a becomes output row 2i + a.
    out = ops.reshape(ops.stack(rows, axis=2), (n, 2 * h, 2 * w, -1))
    return out + ops.cast(bias, x.dtype)


@keras.saving.register_keras_serializable(_PACKAGE)
class ConvBlock(keras.layers.Layer):
    """[nearest upsample] -> reflection pad -> conv -> [instance norm] -> activation.

    ``activation`` is ``"relu"``, ``"tanh255"`` (``127.5 * (tanh(x) + 1)``, the
    output layer) or ``None``.

    >>> import numpy as np
    >>> tuple(ConvBlock(8, 3, upsample=2)(np.zeros((1, 5, 6, 4), "float32")).shape)
    (1, 10, 12, 8)
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, upsample: int = 1,
                 norm: bool = True, activation: str | None = "relu", **kwargs):
        super().__init__(**kwargs)
        if activation not in ("relu", "tanh255", None):
            raise ValueError(f"unknown activation {activation!r}; choose 'relu', 'tanh255' or None")
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.upsample, self.norm, self.activation = upsample, norm, activation
        self.conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="valid",
                                        name="conv", dtype=self.dtype_policy)
        self.instance_norm = instance_norm("norm", self.dtype_policy) if norm else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        up = shape[:1] + tuple(None if s is None else s * self.upsample for s in shape[1:3]) \
            + shape[3:]
        self.conv.build(up)
        if self.instance_norm is not None:
            self.instance_norm.build(self.conv.compute_output_shape(up))

    def call(self, x):
        if self.upsample == 2 and self.kernel_size == 3 and self.strides == 1:
            # Nearest-neighbour upsampling then a conv (no checkerboard artefacts),
            # computed without materializing the upsampled image.
            x = upsample_conv3x3(x, self.conv.kernel, self.conv.bias)
        else:
            if self.upsample > 1:
                x = ops.repeat(ops.repeat(x, self.upsample, axis=1), self.upsample, axis=2)
            p = self.kernel_size // 2
            x = self.conv(reflect_pad(x, p, p, p, p))
        if self.instance_norm is not None:
            x = self.instance_norm(x)
        if self.activation == "relu":
            x = ops.relu(x)
        elif self.activation == "tanh255":
            x = 127.5 * (ops.tanh(x) + 1.0)
        return x

    def compute_output_shape(self, input_shape):
        n, h, w = input_shape[0], input_shape[1], input_shape[2]

        def size(s):
            if s is None:
                return None
            return -(-s * self.upsample // self.strides)

        return (n, size(h), size(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "upsample": self.upsample, "norm": self.norm,
                "activation": self.activation}


@keras.saving.register_keras_serializable(_PACKAGE)
class ResidualBlock(keras.layers.Layer):
    """``x + norm(conv(relu(norm(conv(x)))))`` with 3x3 reflection-padded convs.

    >>> import numpy as np
    >>> tuple(ResidualBlock(16)(np.zeros((1, 6, 6, 16), "float32")).shape)
    (1, 6, 6, 16)
    """

    def __init__(self, filters: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.block_a = ConvBlock(filters, 3, name="a", dtype=self.dtype_policy)
        self.block_b = ConvBlock(filters, 3, activation=None, name="b", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.block_a.build(input_shape)
        self.block_b.build(input_shape)

    def call(self, x):
        return x + self.block_b(self.block_a(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(_PACKAGE)
class PadToMultiple(keras.layers.Layer):
    """Reflect-pad height and width (bottom and right) up to a multiple of ``multiple``.

    The two stride-2 convolutions then halve exact sizes, and :class:`CropLike`
    cuts the output back to the input's size.

    >>> import numpy as np
    >>> tuple(PadToMultiple(4)(np.zeros((1, 9, 13, 3), "float32")).shape)
    (1, 12, 16, 3)
    """

    def __init__(self, multiple: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def call(self, x):
        shape = ops.shape(x)
        h, w = shape[1], shape[2]
        m = self.multiple
        return reflect_pad(x, 0, (m - h % m) % m, 0, (m - w % m) % m)

    def compute_output_shape(self, input_shape):
        def up(s):
            return None if s is None else -(-s // self.multiple) * self.multiple

        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(_PACKAGE)
class CropLike(keras.layers.Layer):
    """Crop ``inputs[0]`` to the height and width of ``inputs[1]`` (top-left aligned).

    >>> import numpy as np
    >>> tuple(CropLike()([np.zeros((1, 12, 16, 3)), np.zeros((1, 9, 13, 3))]).shape)
    (1, 9, 13, 3)
    """

    def call(self, inputs):
        x, like = inputs
        shape = ops.shape(like)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shapes):
        x, like = input_shapes
        return (x[0], like[1], like[2], x[3])


def build_transform_net(name: str = "transform_net") -> keras.Model:
    """A fresh (untrained) transform-net: a Functional model for any input size >= 8 px.

    Layers follow Johnson et al.'s supplementary material; see the module
    docstring. Under a ``mixed_float16`` policy every block computes in float16
    except ``output``, which stays float32 so the pixels are exact.

    >>> build_transform_net().get_layer("res3").filters
    128
    """
    inputs = keras.Input((None, None, 3), name="photo")
    x = PadToMultiple(4, name="pad")(inputs)
    x = ConvBlock(32, 9, name="conv1")(x)
    x = ConvBlock(64, 3, strides=2, name="conv2")(x)
    x = ConvBlock(128, 3, strides=2, name="conv3")(x)
    for i in range(1, 6):
        x = ResidualBlock(128, name=f"res{i}")(x)
    x = ConvBlock(64, 3, upsample=2, name="up1")(x)
    x = ConvBlock(32, 3, upsample=2, name="up2")(x)
    x = ConvBlock(3, 9, norm=False, activation="tanh255", name="output", dtype="float32")(x)
    outputs = CropLike(name="crop", dtype="float32")([x, inputs])
    return keras.Model(inputs, outputs, name=name)


def load_transform_net(path) -> keras.Model:
    """Load a transform-net saved with ``model.save("....keras")``, ready for float32 use.

    A net trained under mixed precision is rebuilt in float32 (its weights are
    float32 variables already), because float16 convolutions are slow or
    unsupported on CPUs.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "net.keras")
    >>> build_transform_net().save(p)
    >>> load_transform_net(p).name
    'transform_net'
    """
    try:
        net = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises ValueError, TypeError, OSError, zipfile errors...
        raise ValueError(f"cannot load {os.fspath(path)!r} as a Keras model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:160]}); pass the .keras file "
                         "'style-transfer train' saved") from None
    try:  # Functional and Sequential models declare their shapes; subclassed ones do not
        shapes = [tuple(net.input_shape), tuple(net.output_shape)]
    except (AttributeError, ValueError, TypeError):
        shapes = None
    if not isinstance(net, keras.Model) or shapes != [(None, None, None, 3)] * 2:
        what = (f"a model {shapes[0]} -> {shapes[1]}" if shapes
                else f"a {type(net).__name__} with no declared input (a subclassed model?)")
        raise ValueError(f"{os.fspath(path)!r} holds {what}, not a transform-net (a Functional "
                         "model from images (None, None, None, 3) to images); pass the .keras "
                         "file 'style-transfer train' saved")
    if any(layer.compute_dtype != "float32" for layer in net.layers):
        fresh = build_transform_net(name=net.name)
        fresh.set_weights(net.get_weights())
        net = fresh
    return net
