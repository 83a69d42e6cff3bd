"""Machinery shared by the probe functions of attribution, synthesis and feature maps.

A probe is a ``tf.function`` that runs the model in inference mode and reads a
score, a gradient or a layer's output. Tracing one costs far more than running
it, so each is traced once per model and input shape and kept here, keyed by
the model (weakly: a dropped model frees its probes). A traced probe reads the
model's live weights, so one trace serves a whole training run.

Example:
    >>> import keras, tensorflow as tf
    >>> from tbviz import _probe
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> f = _probe.traced(m, ("double",), lambda ref: tf.function(lambda x: 2 * ref()(x)))
    >>> f is _probe.traced(m, ("double",), lambda ref: None)
    True
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from tbviz import tokens
from tbviz.layers import capture_outputs, layer_paths

_FUNCS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def traced(model, key, build):
    """The probe cached for ``model`` under ``key``; ``build(model_ref)`` makes it once.

    ``build`` gets a weak reference to the model so the cached function does not
    keep the model alive.
    """
    per_model = _FUNCS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build(weakref.ref(model))
    return per_model[key]


def probe_function(input_signature):
    """``tf.function`` with ``input_signature`` for a probe: traced once, without autograph.

    A probe's Python is plain at trace time (its branches test Python values, not
    tensors), so autograph's conversion of it would only add to every trace.
    """
    return tf.function(input_signature=input_signature, autograph=False)


def batches(n: int, max_batch: int):
    """Slices covering ``range(n)`` in runs of at most ``max_batch``."""
    for start in range(0, n, max_batch):
        yield slice(start, min(n, start + max_batch))


def _input_of(t, op_type: str):
    """The input of the ``op_type`` op that made ``t`` (through Identity ops), else ``t``."""
    op = getattr(t, "op", None)
    while op is not None and op.type == "Identity":
        op = op.inputs[0].op
    return op.inputs[0] if op is not None and op.type == op_type else t


def pre_softmax(t):
    """The logits feeding ``t`` when ``t`` is (an identity of) a softmax, else ``t``.

    Works on graph tensors only (inside a ``tf.function``), where the op that made
    ``t`` can be read. Saliency and Grad-CAM differentiate the class score before
    the softmax: a probability's gradient is dominated by the other classes.
    """
    return _input_of(t, "Softmax")


def pre_relu(t):
    """The input of ``t``'s ReLU when ``t`` is (an identity of) a ReLU output, else ``t``.

    Graph tensors only. Activation maximization scores a ReLU unit before the ReLU:
    a unit that is silent on the starting image has zero gradient after it and
    would never move.
    """
    return _input_of(t, "Relu")


def _shapes(model, image_shape) -> tuple[dict, tuple | None]:
    """``({path: output shape}, model output shape or None)`` for one image of ``image_shape``,
    from one eager forward pass on zeros (cached): every part that needs a shape reads it
    from this one pass of the whole model."""
    image_shape = tuple(int(s) for s in image_shape)

    def build(ref):
        m = ref()
        paths = layer_paths(m)
        with capture_outputs(m, paths) as seen:
            y = m(np.zeros((1,) + image_shape, np.float32), training=False)
        out = {}
        for path in paths:  # keep network order
            if path in seen and hasattr(seen[path], "shape"):
                out[path] = tuple(seen[path].shape)
        return out, (tuple(y.shape) if hasattr(y, "shape") else None)

    return traced(model, ("shapes", image_shape), build)


def layer_output_shapes(model, image_shape) -> dict:
    """``{path: output shape}`` of every layer that runs on one image of ``image_shape``.

    Found with one eager forward pass on zeros (cached), which works for any model
    that accepts such an image, nested and subclassed models included.
    """
    return _shapes(model, image_shape)[0]


def output_shape(model, image_shape) -> tuple | None:
    """The model's output shape for one image of ``image_shape`` (``None``: several outputs),
    from the same pass as :func:`layer_output_shapes`.

    >>> import keras
    >>> output_shape(keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                                keras.layers.Dense(3)]), (4, 4, 1))
    (1, 3)
    """
    return _shapes(model, image_shape)[1]


def check_layer_rank(model, image_shape, layer: str, ranks, what: str) -> tuple:
    """The output shape of ``layer``; a ``ValueError`` unless its rank is in ``ranks``."""
    shapes = layer_output_shapes(model, image_shape)
    if layer not in shapes:
        raise ValueError(f"layer {layer!r} does not run when model {model.name!r} is called, so "
                         f"it has no output to {what}")
    shape = shapes[layer]
    if len(shape) not in ranks:
        fitting = [p for p, s in shapes.items() if len(s) in ranks]
        raise ValueError(
            f"layer {layer!r} has output shape {shape}; {what} needs a "
            f"{' or '.join(f'{r}-D' for r in sorted(ranks))} output. Layers that fit: "
            f"{', '.join(fitting) or '(none)'}")
    return shape


def _grid(shape, image_shape, token_grid, class_token):
    try:
        return tokens.token_grid(shape, image_shape, token_grid, class_token)
    except ValueError:
        return None


def check_spatial(model, image_shape, layer: str, what: str, token_grid=None,
                  class_token=None) -> tuple:
    """``(h, w, skip)`` of ``layer``'s output as a spatial grid (see :mod:`tbviz.tokens`):
    a 4-D ``(N, h, w, C)`` feature map, or a vision transformer's patch tokens. A
    ``ValueError`` naming the layers that fit otherwise."""
    shapes = layer_output_shapes(model, image_shape)
    if layer not in shapes:
        raise ValueError(f"layer {layer!r} does not run when model {model.name!r} is called, so "
                         f"it has no output to {what}")
    grid = tokens.token_grid(shapes[layer], image_shape, token_grid, class_token)
    if grid is None:
        fitting = [p for p, s in shapes.items()
                   if _grid(s, image_shape, token_grid, class_token) is not None]
        raise ValueError(
            f"layer {layer!r} has output shape {shapes[layer]}; {what} needs a 4-D (N, h, w, C) "
            "output or a vision transformer's patch tokens (N, T, D) (T = h*w at the image's "
            "aspect ratio, plus one class token or none; else say token_grid=(h, w) and "
            f"class_token=). Layers that fit: {', '.join(fitting) or '(none)'}")
    return grid


def last_spatial_layer(model, image_shape, token_grid=None, class_token=None) -> str:
    """Path of the last layer whose output is a spatial grid (:func:`check_spatial`)."""
    shapes = layer_output_shapes(model, image_shape)
    fitting = [p for p, s in shapes.items()
               if _grid(s, image_shape, token_grid, class_token) is not None]
    if not fitting:
        raise ValueError(f"model {model.name!r} has no layer with a 4-D (N, h, w, C) output or "
                         "patch tokens to weigh")
    return fitting[-1]


def layer_outputs(model, x: np.ndarray, layer: str, max_batch: int = 32) -> np.ndarray:
    """The output of ``layer`` for images ``x``, by a probe traced once per image shape."""
    def build(ref):
        @tf.function(input_signature=[tf.TensorSpec((None,) + x.shape[1:], tf.float32)])
        def forward(xb):
            with capture_outputs(ref(), [layer]) as seen:
                ref()(xb, training=False)
            return seen[layer]
        return forward

    forward = traced(model, ("layer_output", layer, x.shape[1:]), build)
    # float32 whatever the compute dtype (a mixed_float16 model's layers give float16).
    return np.concatenate([forward(x[s]).numpy() for s in batches(len(x), max_batch)]
                          ).astype(np.float32, copy=False)
