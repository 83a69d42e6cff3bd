"""The loss network: a frozen VGG19 that maps [0, 255] RGB images to named feature maps.

``keras.applications.VGG19(include_top=False)`` cut after the deepest layer
needed, with Caffe preprocessing (RGB -> BGR, minus the ImageNet mean) as its
first layer, so callers pass plain RGB images and their arrays are never
modified. Its output is a dict ``{layer name: features}``.

``weights`` is

* ``"imagenet"``: Keras' own download and cache (``~/.keras/models``),
* a path to a VGG19 ``.h5`` weights file (``..._notop.h5``), for machines
  with no internet,
* ``"random"``: He-initialized weights from a fixed seed, for offline tests
  and demos. Random features of the first blocks still carry an image's
  colours and texture (the demo has a recipe for them:
  :data:`~style_transfer.defaults.RANDOM_VGG_PRESET`), but stylization quality
  needs the ImageNet weights, and a loud warning says so.

Example:
    >>> import numpy as np
    >>> from style_transfer.vgg import build_vgg
    >>> vgg = build_vgg("random", ["block1_conv1", "block2_conv1"], quiet=True)
    >>> {k: tuple(v.shape) for k, v in vgg(np.zeros((1, 32, 32, 3), "float32")).items()}
    {'block1_conv1': (1, 32, 32, 64), 'block2_conv1': (1, 16, 16, 128)}
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
from keras import ops

from style_transfer.defaults import CONTENT_LAYER, STYLE_LAYERS  # noqa: F401 (re-exported)

#: ImageNet channel means in BGR order, as VGG's Caffe training used them.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

RANDOM_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! VGG19 with RANDOM weights: the losses are computed from untrained features.\n"
    "!! Everything runs, and the demo's recipe for random features carries the\n"
    "!! painting's palette and some texture; real stylization needs --vgg-weights\n"
    "!! imagenet (downloads once) or --vgg-weights PATH/vgg19_..._notop.h5.\n"
    + "!" * 78 + "\n"
)


class VGGWeightsUnavailable(ValueError):
    """The ImageNet weights could not be downloaded (no internet?)."""


@keras.saving.register_keras_serializable("style_transfer")
class CaffePreprocess(keras.layers.Layer):
    """RGB in [0, 255] -> BGR minus the ImageNet mean, inside the graph.

    >>> import numpy as np
    >>> ops.convert_to_numpy(CaffePreprocess()(np.full((1, 1, 1, 3), 100.0, "float32")))[0, 0, 0].round(2)
    array([ -3.94, -16.78, -23.68], dtype=float32)
    """

    # Pixel by pixel: tbviz's receptive fields see through it, so deconvnet tiles of
    # VGG19 layers show the field under each unit, not the whole image.
    tbviz_pointwise = True

    def call(self, x):
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)


def all_layers() -> list[str]:
    """Names of VGG19's convolution and pooling layers (the valid feature layers)."""
    return [f"block{b}_{kind}{i}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
            for kind, i in [("conv", j) for j in range(1, n + 1)] + [("pool", "")]]


def check_layers(layers) -> list[str]:
    """Validate VGG19 layer names; the error lists the valid ones.

    >>> check_layers(["block4_conv2"])
    ['block4_conv2']
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    valid = all_layers()
    unknown = [n for n in layers if n not in valid]
    if unknown or not layers:
        named = ", ".join(map(repr, unknown)) or "(none given)"
        raise ValueError(f"unknown VGG19 layer(s) {named}; "
                         f"choose from {', '.join(valid)}")
    return layers


def _randomize(model, seed: int = 0):
    # He-normal kernels keep the feature scale roughly constant through 16 ReLU
    # layers (Keras' default Glorot init shrinks it about 2x per layer), so the
    # deep style layers still contribute something with random weights.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = layer.kernel
            fan_in = int(np.prod(k.shape[:-1]))
            layer.kernel.assign(rng.normal(0, np.sqrt(2.0 / fan_in), k.shape).astype("float32"))
            layer.bias.assign(np.zeros(layer.bias.shape, "float32"))


def build_vgg(weights: str = "imagenet", layers=(CONTENT_LAYER,) + STYLE_LAYERS,
              quiet: bool = False) -> keras.Model:
    """A frozen VGG19 feature model: RGB ``[0, 255]`` in, ``{layer: features}`` out.

    Raises :class:`VGGWeightsUnavailable` (a ``ValueError``) when ``"imagenet"``
    cannot be downloaded, and ``ValueError`` for an unknown layer or a missing
    weights file.
    """
    layers = list(dict.fromkeys(check_layers(layers)))
    if weights not in ("imagenet", "random"):
        if not os.path.isfile(os.fspath(weights)):
            raise ValueError(f"VGG19 weights {weights!r}: no such file; pass 'imagenet', "
                             "'random' or the path of a VGG19 notop .h5 weights file")
    inputs = keras.Input((None, None, 3), name="image")
    x = CaffePreprocess(name="caffe_preprocess")(inputs)
    keras_weights = None if weights == "random" else weights
    try:
        full = keras.applications.VGG19(include_top=False, weights=keras_weights, input_tensor=x)
    except Exception as e:  # Keras raises a bare Exception on a failed download
        if weights != "imagenet":
            raise ValueError(f"could not load VGG19 weights from {weights!r}: {e}") from e
        raise VGGWeightsUnavailable(
            f"could not download VGG19's ImageNet weights ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Without internet, pass --vgg-weights "
            "PATH/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5, or --vgg-weights random "
            "for a smoke run (no real stylization)") from e
    if weights == "random":
        _randomize(full)
        if not quiet:
            print(RANDOM_WARNING, file=sys.stderr, flush=True)
    outputs = {name: full.get_layer(name).output for name in layers}
    model = keras.Model(inputs, outputs, name="vgg19")
    model.trainable = False
    return model
