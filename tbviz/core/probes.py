"""Machinery shared by the probe functions of attribution, synthesis and feature maps.

A probe runs the model in inference mode and reads a score, a gradient or a layer's
output, compiled by the backend (:func:`tbviz.backend.function`: a ``tf.function``, a
``jax.jit``). Compiling one costs far more than running it, so each is built once per
model and input shape and kept here, keyed by the model (weakly: a dropped model frees
its probes). A probe reads the model's live weights, so one serves a whole training run.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.core import probes
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> f = probes.traced(m, ("double",), lambda ref: probes.function(
    ...     ref, lambda x: 2 * ref()(x, training=False), (None, 4)))
    >>> f is probes.traced(m, ("double",), lambda ref: None)
    True
    >>> probes.numpy(f(np.ones((3, 4), "float32"))).shape
    (3, 2)
"""

from __future__ import annotations

import contextlib
import weakref

import keras
import numpy as np

from tbviz import backend
from tbviz.core import tokens
from tbviz.core.layers import Swaps, call_model, capture_outputs, layer_paths, structure

_FUNCS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

numpy = backend.numpy


def traced(model, key, build):
    """The probe cached for ``model`` under ``key``; ``build(model_ref)`` makes it once.

    ``build`` gets a weak reference to the model so the cached function does not
    keep the model alive.
    """
    per_model = _FUNCS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build(weakref.ref(model))
    return per_model[key]


def cached(model) -> dict:
    """``{key: probe}`` of every probe cached for ``model`` (:func:`traced`), a copy: what a
    later ``fit`` finds ready.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> _ = traced(m, ("doc",), lambda ref: "a probe")
    >>> cached(m)
    {('doc',): 'a probe'}
    """
    return dict(_FUNCS.get(model, {}))


def function(model_ref, fn, *shapes, dtypes=None):
    """A probe of ``fn`` over the model behind ``model_ref`` (a weak reference or the model):
    one argument per shape in ``shapes`` (``None`` for any size; float32 unless ``dtypes``
    says otherwise), compiled once per backend.
    """
    model = model_ref() if isinstance(model_ref, weakref.ref) else model_ref
    dtypes = dtypes or ["float32"] * len(shapes)
    signature = [backend.Spec(tuple(s), d) for s, d in zip(shapes, dtypes)]
    return backend.function(fn, models=[model], signature=signature)


def batches(n: int, max_batch: int):
    """Slices covering ``range(n)`` in runs of at most ``max_batch``."""
    for start in range(0, n, max_batch):
        yield slice(start, min(n, start + max_batch))


def input_gradients(f, *xs, has_aux: bool = False):
    """Inside a probe: the gradient of ``sum(f(*xs))`` w.r.t. each of ``xs`` (a tuple); with
    ``has_aux``, ``f`` returns ``(value, aux)`` and this ``(gradients, aux)``.

    Rows are independent in inference mode, so the gradient of the sum is each row's own.
    """
    if has_aux:
        y, pullback, aux = backend.vjp(f, *xs, has_aux=True)
        return pullback(keras.tree.map_structure(keras.ops.ones_like, y)), aux
    y, pullback = backend.vjp(f, *xs)
    return pullback(keras.tree.map_structure(keras.ops.ones_like, y))


# -- scores before the last activation --------------------------------------------------------

def _activation_name(layer) -> str:
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", "") if fn is not None else ""


def _identity(x, *args, **kwargs):
    return x


@contextlib.contextmanager
def before_activation(layer, kinds=("softmax",)):
    """Within the block, ``layer`` returns what it computes before its activation when that
    is one of ``kinds`` (``"softmax"``, ``"relu"``): a ``Dense(activation="softmax")``
    gives its logits, a ``Softmax`` or ``Activation("softmax")`` layer passes its input
    through, a nested model hands the question to its last layer. The layer is restored on
    exit. Saliency and Grad-CAM differentiate the class score before the softmax (a
    probability's gradient is dominated by the other classes); activation maximization
    scores a ReLU unit before the ReLU (a unit silent on the start image would never move).
    """
    swaps = Swaps()
    try:
        target = layer
        while isinstance(target, keras.Model) and target.layers:
            target = target.layers[-1]
        kind = _activation_name(target)
        if isinstance(target, keras.layers.Softmax):
            kind = "softmax"
        elif isinstance(target, keras.layers.ReLU) and target.max_value is None \
                and not target.negative_slope and not target.threshold:
            kind = "relu"
        if kind in kinds:
            if isinstance(target, (keras.layers.Activation, keras.layers.Softmax,
                                   keras.layers.ReLU)):
                swaps.set(target, "call", _identity)
            elif getattr(target, "activation", None) is not None:
                swaps.set(target, "activation", keras.activations.linear)
        yield
    finally:
        swaps.restore()


def _shapes(model, image_shape) -> tuple[dict, tuple | None]:
    """``({path: output shape}, model output shape or None)`` for one image of ``image_shape``,
    from one eager forward pass on zeros (cached): every part that needs a shape reads it
    from this one pass of the whole model."""
    image_shape = tuple(int(s) for s in image_shape)

    def build(ref):
        m = ref()
        paths = layer_paths(m)
        with capture_outputs(m, paths) as seen:
            y = call_model(m, np.zeros((1,) + image_shape, np.float32))
        out = {}
        for path in paths:  # keep network order
            if path in seen and hasattr(seen[path], "shape"):
                out[path] = tuple(seen[path].shape)
        return out, (tuple(y.shape) if hasattr(y, "shape") else None)

    # (keyed by the layers too: a layer added since must be in it)
    return traced(model, ("shapes", image_shape, structure(model)[0]), build)


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
    """``(h, w, skip)`` of ``layer``'s output as a spatial grid (see :mod:`tbviz.core.tokens`):
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
    """The output of ``layer`` for images ``x``, by a probe compiled once per image shape."""
    def build(ref):
        def forward(xb):
            with capture_outputs(ref(), [layer]) as seen:
                call_model(ref(), xb)
            return seen[layer]
        return function(ref, forward, (None,) + x.shape[1:])

    forward = traced(model, ("layer_output", layer, x.shape[1:]), build)
    # float32 whatever the compute dtype (a mixed_float16 model's layers give float16).
    return np.concatenate([numpy(forward(x[s])) for s in batches(len(x), max_batch)]
                          ).astype(np.float32, copy=False)
