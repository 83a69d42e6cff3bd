"""Small models written the way Keras users write vision models (tests/test_real_models.py).

Each follows the style of a well-known example, in miniature (32 x 32 images, a few
thousand weights): custom layers, patch tokenizers, window attention, a tuple-returning
layer, a subclassed model with its own ``train_step``, ``inputs=[inputs]``, and a
MobileViT-like conv/attention mix. They are fresh code, not copies of the examples.
"""

import keras
import numpy as np

SHAPE = (32, 32, 3)
CLASSES = 3
L = keras.layers


# -- a ViT with a patch layer and a learned position Embedding ------------------------------------

class Patches(L.Layer):
    """Cuts images into ``size x size`` patches, flattened: ``(N, patches, size*size*C)``."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, images):
        p = keras.ops.image.extract_patches(images, size=self.size)
        return keras.ops.reshape(p, (-1, p.shape[1] * p.shape[2], p.shape[3]))


class PatchEncoder(L.Layer):
    """A linear projection of each patch plus a learned ``Embedding`` of its position."""

    def __init__(self, num_patches, dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.projection = L.Dense(dim, name="projection")
        self.position_embedding = L.Embedding(num_patches, dim, name="position_embedding")

    def call(self, patches):
        positions = keras.ops.expand_dims(keras.ops.arange(0, self.num_patches, 1), axis=0)
        return self.projection(patches) + self.position_embedding(positions)


def _mlp(x, units, name):
    for i, n in enumerate(units):
        x = L.Dense(n, activation="gelu", name=f"{name}_{i}")(x)
    return x


def vit_position_embedding():
    inputs = keras.Input(SHAPE)
    x = PatchEncoder(16, 16, name="encoder")(Patches(8, name="patches")(inputs))
    for i in range(2):
        y = L.LayerNormalization(epsilon=1e-6)(x)
        y = L.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1, name=f"attn{i}")(y, y)
        x = L.Add()([y, x])
        y = L.LayerNormalization(epsilon=1e-6)(x)
        y = _mlp(y, [32, 16], f"mlp{i}")
        x = L.Add()([y, x])
    x = L.Flatten()(L.LayerNormalization(epsilon=1e-6)(x))
    x = _mlp(L.Dropout(0.2)(x), [16], "head_mlp")
    return keras.Model(inputs, L.Dense(CLASSES)(x), name="vit_pos")


# -- Swin-style windowed attention, shifted, and a patch merging ----------------------------------

class WindowAttention(L.Layer):
    """Attention within ``window x window`` cells of the token grid, optionally on the grid
    rolled by half a window (Swin's shifted windows; no attention mask, for brevity)."""

    def __init__(self, grid, window, dim, heads, shift=0, **kwargs):
        super().__init__(**kwargs)
        self.grid, self.window, self.dim, self.shift = grid, window, dim, shift
        self.attn = L.MultiHeadAttention(heads, dim // heads)

    def call(self, x):
        g, w, d = self.grid, self.window, self.dim
        x = keras.ops.reshape(x, (-1, g, g, d))
        if self.shift:
            x = keras.ops.roll(x, (-self.shift, -self.shift), axis=(1, 2))
        n = g // w
        win = keras.ops.reshape(x, (-1, n, w, n, w, d))
        win = keras.ops.reshape(keras.ops.transpose(win, (0, 1, 3, 2, 4, 5)), (-1, w * w, d))
        win = self.attn(win, win)
        x = keras.ops.reshape(win, (-1, n, n, w, w, d))
        x = keras.ops.reshape(keras.ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, g, g, d))
        if self.shift:
            x = keras.ops.roll(x, (self.shift, self.shift), axis=(1, 2))
        return keras.ops.reshape(x, (-1, g * g, d))


class PatchMerging(L.Layer):
    """Swin's 2 x 2 token merge: ``(N, g*g, d)`` -> ``(N, (g/2)^2, 2d)``."""

    def __init__(self, grid, dim, **kwargs):
        super().__init__(**kwargs)
        self.grid, self.dim = grid, dim
        self.reduce = L.Dense(2 * dim, use_bias=False)

    def call(self, x):
        g, d = self.grid, self.dim
        x = keras.ops.reshape(x, (-1, g // 2, 2, g // 2, 2, d))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return self.reduce(keras.ops.reshape(x, (-1, (g // 2) ** 2, 4 * d)))


def swin_windows():
    inputs = keras.Input(SHAPE)
    x = L.Conv2D(16, 4, strides=4, name="embed")(inputs)     # an 8 x 8 grid of tokens
    x = L.Reshape((64, 16))(x)
    for i, shift in enumerate((0, 2)):
        y = WindowAttention(8, 4, 16, 2, shift=shift, name=f"window{i}")(L.LayerNormalization()(x))
        x = L.Add(name=f"block{i}_attn_out")([x, y])
        y = _mlp(L.LayerNormalization()(x), [32], f"block{i}_mlp")
        x = L.Add(name=f"block{i}_out")([x, L.Dense(16)(y)])
    x = PatchMerging(8, 16, name="merge")(x)                  # a 4 x 4 grid
    x = L.GlobalAveragePooling1D()(L.LayerNormalization()(x))
    return keras.Model(inputs, L.Dense(CLASSES)(x), name="swin")


# -- a custom layer returning a tuple ---------------------------------------------------------------

class GatedConv(L.Layer):
    """A conv's features and a sigmoid gate for them, returned as a tuple."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.features = L.Conv2D(filters, 3, padding="same", activation="relu")
        self.gate = L.Conv2D(filters, 1, activation="sigmoid")

    def call(self, x):
        return self.features(x), self.gate(x)


class Split(L.Layer):
    """The channels in two halves, as a tuple (a layer with no sub-layers)."""

    def call(self, x):
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]


def tuple_layer():
    inputs = keras.Input(SHAPE)
    x = L.Conv2D(8, 3, strides=2, activation="relu", name="stem")(inputs)
    features, gate = GatedConv(8, name="gated")(x)
    x = L.Multiply()([features, gate])
    a, b = Split(name="split")(x)
    x = L.Concatenate()([b, a])
    x = L.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(CLASSES)(x), name="gated")


# -- a subclassed model with a train_step of its own -------------------------------------------------

class OwnTrainStep(keras.Model):
    """Its layers are built by the first training step (nothing calls it before ``fit``), it
    owns a weight itself, and its ``train_step`` is written out, per backend."""

    def __init__(self):
        super().__init__(name="own_step")
        self.conv1 = L.Conv2D(8, 3, activation="relu")
        self.norm = L.BatchNormalization()
        self.pool = L.MaxPooling2D()
        self.conv2 = L.Conv2D(8, 3, activation="relu")
        self.gap = L.GlobalAveragePooling2D()
        self.head = L.Dense(CLASSES)

    def build(self, input_shape):
        self.temperature = self.add_weight(shape=(), initializer="ones", name="temperature")
        super().build(input_shape)

    def call(self, x, training=False):
        x = self.pool(self.norm(self.conv1(x), training=training))
        return self.head(self.gap(self.conv2(x))) * self.temperature

    def train_step(self, data):
        x, y = data
        name = keras.backend.backend()
        if name == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
            grads = tape.gradient(loss, self.trainable_weights)
        elif name == "torch":
            self.zero_grad()
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
            loss.backward()
            grads = [v.value.grad for v in self.trainable_weights]
        else:
            raise NotImplementedError(f"no train_step written for {name}")
        self.optimizer.apply(grads, self.trainable_weights)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


# -- a Functional model built with inputs=[inputs] ----------------------------------------------------

def listed_inputs():
    inputs = keras.Input(SHAPE)
    x = L.Conv2D(8, 3, activation="relu")(inputs)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(8, 3, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs=[inputs], outputs=L.Dense(CLASSES)(x), name="listed")


# -- a MobileViT-like mix: convolutions, then attention over unfolded patches -----------------------

def _transformer(x, dim, name):
    y = L.LayerNormalization()(x)
    y = L.MultiHeadAttention(2, dim // 2, name=f"{name}_attn")(y, y)
    x = L.Add()([x, y])
    y = _mlp(L.LayerNormalization()(x), [2 * dim, dim], f"{name}_mlp")
    return L.Add()([x, y])


def mobilevit_like():
    inputs = keras.Input(SHAPE)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="swish", name="stem")(inputs)
    x = L.BatchNormalization()(x)
    local = L.Conv2D(8, 3, padding="same", activation="swish", name="local")(x)
    local = L.Conv2D(16, 1, padding="same", activation="swish", name="project")(local)
    # (16 x 16 x 16) unfolded as 4 pixel positions x 64 patches x 16 channels
    folded = L.Reshape((4, 64, 16))(local)
    folded = _transformer(folded, 16, "mvit")
    x2 = L.Reshape((16, 16, 16))(folded)
    x2 = L.Conv2D(8, 1, padding="same", activation="swish", name="fuse1")(x2)
    x = L.Concatenate()([x, x2])
    x = L.Conv2D(16, 3, padding="same", activation="swish", name="fuse2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(CLASSES)(x), name="mobilevit")


# -- a layer that builds differently in inference mode -------------------------------------------------

class CropInTraining(L.Layer):
    """Crops to ``size`` in training only (as RandomCrop did in older Keras): a model with it
    trains, but its inference path sees other shapes; only training may build what follows."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, x, training=False):
        if not training:
            return x
        return x[:, :self.size, :self.size]


class CropsThenDense(keras.Model):
    def __init__(self):
        super().__init__(name="crops")
        self.crop = CropInTraining(24)
        self.conv = L.Conv2D(4, 3, strides=2, activation="relu")
        self.flat = L.Flatten()
        self.head = L.Dense(CLASSES)

    def call(self, x, training=False):
        return self.head(self.flat(self.conv(self.crop(x, training=training))))


SWEEP = {
    "vit_position_embedding": vit_position_embedding,
    "swin_windows": swin_windows,
    "tuple_layer": tuple_layer,
    "own_train_step": OwnTrainStep,
    "listed_inputs": listed_inputs,
    "mobilevit_like": mobilevit_like,
}


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + SHAPE, dtype=np.float32), rng.integers(0, CLASSES, n)
