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
