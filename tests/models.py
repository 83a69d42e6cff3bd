"""Small models of several shapes for the callback tests (built fresh each call)."""

import keras
import numpy as np


def sequential(input_shape=(12, 12, 3), classes=3):
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(6, 3, padding="same", name="conv2"),
        keras.layers.ReLU(name="relu2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(classes, name="head"),
    ], name="seq")


def functional_bn_nested(input_shape=(12, 12, 3), classes=3):
    """Functional model with BatchNorm, Activation("relu"), Dropout and a nested Sequential."""
    inp = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation("relu", name="act1")(x)
    block = keras.Sequential([
        keras.Input((input_shape[0], input_shape[1], 4)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="inner_conv"),
        keras.layers.MaxPooling2D(name="inner_pool"),
    ], name="block")
    x = block(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(classes, name="head")(x)
    return keras.Model(inp, out, name="func")


def with_application(input_shape=(32, 32, 3), classes=3):
    """A keras.applications backbone inside a Functional model."""
    base = keras.applications.MobileNetV2(weights=None, include_top=False,
                                          input_shape=input_shape, alpha=0.35)
    inp = keras.Input(input_shape)
    x = base(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(classes, name="head")(x)
    return keras.Model(inp, out, name="app")


class Subclassed(keras.Model):
    def __init__(self, classes=3):
        super().__init__(name="sub")
        self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.head = keras.layers.Dense(classes, name="head")

    def call(self, x, training=False):
        return self.head(self.gap(self.conv(x)))


def data(n=32, shape=(12, 12, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + shape, dtype=np.float32)
    y = rng.integers(0, classes, n)
    return x, y


def compile(model, optimizer="adam"):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class InferenceOnlySmoothing(keras.layers.Layer):
    """Identity while training; at inference a 2x area-average and back, an op
    (``ResizeArea``) that has no gradient. A model with it trains fine, but nothing can
    differentiate its inference pass: what an instrumentation tool must survive."""

    def call(self, x, training=False):
        if training:
            return x
        import tensorflow as tf  # a TensorFlow op without a gradient: TensorFlow-only tests

        h, w = x.shape[1], x.shape[2]
        small = tf.raw_ops.ResizeArea(images=x, size=[h // 2, w // 2])
        return tf.image.resize(small, (h, w), method="nearest")


def with_no_gradient_layer(input_shape=(12, 12, 3), classes=3):
    """conv1 -> smoothing without gradient ("smooth") -> conv2 -> head."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
        InferenceOnlySmoothing(name="smooth"),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(classes, name="head"),
    ], name="nograd")


class ClassToken(keras.layers.Layer):
    """A learned token put in front of the patch tokens (ViT's [class] token)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="random_normal",
                                     name="token")

    def call(self, x):
        token = keras.ops.broadcast_to(keras.ops.cast(self.token, x.dtype),
                                       (keras.ops.shape(x)[0], 1, x.shape[-1]))
        return keras.ops.concatenate([token, x], axis=1)


class PositionEmbedding(keras.layers.Layer):
    """A learned vector added to each token position."""

    def build(self, input_shape):
        self.position = self.add_weight(shape=(1,) + tuple(input_shape[1:]),
                                        initializer="random_normal", name="position")

    def call(self, x):
        return x + keras.ops.cast(self.position, x.dtype)


class FirstToken(keras.layers.Layer):
    def call(self, x):
        return x[:, 0]


def vit(input_shape=(32, 32, 3), patch=8, dim=16, heads=2, blocks=2, classes=3,
        class_token=True):
    """A small vision transformer (Dosovitskiy et al. 2021) from Keras layers: patch
    embedding (Conv2D, stride = patch), class token, position embedding, pre-norm blocks
    of MultiHeadAttention and a GELU MLP, a head on the class token (or on the mean token
    without one). Its token layers are ``block<i>_out`` and ``final_norm``; ``patch`` may
    be ``(height, width)``."""
    ph, pw = (patch, patch) if np.ndim(patch) == 0 else patch
    h, w = input_shape[0] // ph, input_shape[1] // pw
    inp = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inp)
    x = keras.layers.Reshape((h * w, dim), name="tokens")(x)
    if class_token:
        x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="position")(x)
    for i in range(blocks):
        y = keras.layers.LayerNormalization(name=f"block{i}_norm1")(x)
        y = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(y, y)
        x = keras.layers.Add(name=f"block{i}_add")([x, y])
        y = keras.layers.LayerNormalization(name=f"block{i}_norm2")(x)
        y = keras.layers.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(y)
        y = keras.layers.Dense(dim, name=f"block{i}_mlp2")(y)
        x = keras.layers.Add(name=f"block{i}_out")([x, y])
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    x = FirstToken(name="cls")(x) if class_token else \
        keras.layers.GlobalAveragePooling1D(name="mean_token")(x)
    out = keras.layers.Dense(classes, name="head")(x)
    return keras.Model(inp, out, name="vit")
