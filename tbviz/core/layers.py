"""Finding layers by path and capturing their outputs during a forward pass.

A layer is named by its path from the model: ``"conv1"`` or, for a layer inside
a nested model (VGG19 inside a loss model, say), ``"vgg19/block1_conv1"``.
Paths come in the network's order, so pickers and summaries read top to bottom.

Capturing works by wrapping the chosen layers' ``call`` for the duration of a
``with`` block. Used while tracing a ``tf.function`` it costs nothing at run time
and works for Sequential, Functional, nested and subclassed models alike, which a
``keras.Model(inputs, layer.output)`` sub-model cannot (it breaks on nested models).

Example:
    >>> import numpy as np, keras
    >>> from tbviz.core.layers import layer_paths, capture_outputs
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
    ...                           keras.layers.Flatten(name="flat")])
    >>> layer_paths(model)
    ['c1', 'flat']
    >>> with capture_outputs(model, ["c1"]) as seen:
    ...     _ = model(np.zeros((1, 8, 8, 3), "float32"))
    >>> tuple(seen["c1"].shape)
    (1, 6, 6, 4)
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterable, Iterator, Sequence

import keras
import numpy as np


def _children(layer) -> list:
    """Direct sub-layers: a model's ``layers`` (topological order for Functional and
    Sequential), otherwise the sub-layers a custom layer tracks (attribute order)."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return []
    return list(flatten(include_self=False, recursive=False))


def children(layer) -> list:
    """Direct sub-layers of a model or layer, without input layers, in network order."""
    return [c for c in _children(layer) if not isinstance(c, keras.layers.InputLayer)]


def _walk(model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    for layer in children(model):
        path = f"{prefix}{layer.name}"
        yield path, layer
        yield from _walk(layer, prefix=path + "/")


def layer_paths(model, kind=None) -> list[str]:
    """Every layer's path, in network order, nested layers after their model.

    ``kind`` keeps only layers that are instances of that class (or tuple).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    >>> layer_paths(m, kind=keras.layers.Dense)
    ['d']
    """
    return [p for p, layer in _walk(model) if kind is None or isinstance(layer, kind)]


#: ``model -> (its layer objects, {path: layer})``: the walk of :func:`by_path`, kept while
#: the model holds the same layers (setup looks up hundreds of paths per ``fit``).
_PATHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def by_path(model) -> dict:
    """``{path: layer}`` of every layer of ``model``, in network order (one walk, reused
    while the model's layers are the same objects).

    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    >>> list(by_path(m))
    ['d']
    """
    ids = tuple(id(layer) for layer in all_layers(model))
    try:
        cached = _PATHS.get(model)
    except TypeError:  # (not weakly referable)
        return dict(_walk(model))
    if cached is None or cached[0] != ids:
        cached = (ids, dict(_walk(model)))
        _PATHS[model] = cached
    return cached[1]


def get_layer(model, path: str):
    """The layer at ``path`` (``"name"`` or ``"outer/inner"``).

    Raises ``ValueError`` listing every valid path when there is no such layer.
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"layer must be a non-empty name or path, got {path!r}")
    found = by_path(model)
    if path in found:
        return found[path]
    choices = ", ".join(found) or "(the model has no layers)"
    raise ValueError(f"unknown layer {path!r} in model {model.name!r}; layers are: {choices}")


def check_layers(model, paths: Iterable[str]) -> list[str]:
    """Validate several paths at once; one error lists all unknown ones and all choices."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    found = by_path(model)
    unknown = [p for p in paths if p not in found]
    if unknown:
        raise ValueError(
            f"unknown layer(s) {', '.join(map(repr, unknown))} in model {model.name!r}; "
            f"layers are: {', '.join(found) or '(none)'}"
        )
    return paths


class Swaps:
    """Attributes set on layers for a while, as plain attributes (not Keras state, which
    ``object.__setattr__`` skips), and put back as they were by :meth:`restore`.

    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    >>> swaps = Swaps()
    >>> swaps.set(m.layers[0], "activation", abs)
    >>> m.layers[0].activation is abs
    True
    >>> swaps.restore(); m.layers[0].activation.__name__
    'linear'
    """

    def __init__(self):
        self._done: list = []

    def set(self, obj, name: str, value) -> None:
        own = obj.__dict__
        self._done.append((obj, name, name in own, own.get(name)))
        object.__setattr__(obj, name, value)

    def restore(self) -> None:
        for obj, name, had_own, original in reversed(self._done):
            if had_own:
                object.__setattr__(obj, name, original)
            else:
                object.__delattr__(obj, name)
        self._done = []


@contextlib.contextmanager
def wrapped_calls(model, paths: Iterable[str], wrap):
    """Within the block, each layer in ``paths`` runs ``wrap(path, call, *args, **kwargs)``
    instead of its own ``call`` (which ``wrap`` gets as ``call``); restored on exit, also on
    error. The one way tbviz looks inside a forward pass: it works for Sequential,
    Functional, nested and subclassed models alike."""
    paths = check_layers(model, paths)
    swaps = Swaps()
    try:
        for path in paths:
            layer = get_layer(model, path)

            def call(*args, _original=layer.call, _path=path, **kwargs):
                return wrap(_path, _original, *args, **kwargs)

            swaps.set(layer, "call", call)
        yield
    finally:
        swaps.restore()


@contextlib.contextmanager
def capture_outputs(model, paths: Iterable[str], add: dict | None = None):
    """Record the output of each layer in ``paths`` while the block runs the model.

    Yields a dict filled in as the layers run: ``{path: output tensor}``. The
    model is restored on exit, also on error. A layer called several times
    (a shared layer) keeps its last output. ``add`` (``{path: tensor}``) is added to
    those layers' outputs: zeros there turn a gradient w.r.t. a layer's output into a
    gradient w.r.t. an input of the probe (how Grad-CAM reads it on every backend).
    """
    add = add or {}
    seen: dict = {}

    def record(path, call, *args, **kwargs):
        out = call(*args, **kwargs)
        if path in add:
            out = out + keras.ops.cast(add[path], out.dtype)
        seen[path] = out
        return out

    with wrapped_calls(model, paths, record):
        yield seen


def up_to(model, path: str):
    """A Keras model from ``model``'s image input to the output of the layer at ``path``.

    It runs no layer after that one, and accepts images of any size (crops); a path
    into a nested model goes through the outer layers up to the nested model's input.
    Raises ``ValueError`` or ``AttributeError`` where the graph does not allow it (a
    subclassed model, a layer called more than once). The sub-model shares the
    model's layers (and so its live weights).

    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
    ...                       keras.layers.Conv2D(2, 3, name="c2")])
    >>> [layer.name for layer in up_to(m, "c1").layers[1:]]
    ['c1']
    """
    head, _, rest = path.partition("/")
    layer = model.get_layer(head)
    inputs = _inputs(model)
    if not rest:
        sub = keras.Model(inputs, layer.output)
    else:
        before = keras.Model(inputs, layer.input)
        before.input_spec = None
        after = up_to(layer, rest)
        x = keras.Input(model.inputs[0].shape[1:])
        sub = keras.Model(x, after(before(x)))
    # Our own sub-model may run on crops smaller than the model's declared input.
    sub.input_spec = None
    return sub


def _inputs(model):
    """``model``'s inputs in the structure it is called with: one tensor for one input
    (a list of one makes Keras warn at every call that the structures differ)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def forward_to(model, paths: Sequence[str]):
    """``x -> {path: output}`` in inference mode, running the model no further than it must.

    One sub-model ends at the listed layers where the graph allows (see :func:`up_to`;
    for one nested path or top-level layers): a probe traced through it traces only
    the layers up to the deepest one, not the whole model. Otherwise the outputs are
    captured while the whole model runs (subclassed models, several nested paths).

    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
    ...                       keras.layers.Conv2D(2, 3, name="c2")])
    >>> tuple(forward_to(m, ["c1"])(np.zeros((1, 8, 8, 3), "float32"))["c1"].shape)
    (1, 6, 6, 4)
    """
    paths = list(paths)
    try:
        if len(paths) == 1:
            sub = up_to(model, paths[0])
        elif all("/" not in p for p in paths):
            sub = keras.Model(_inputs(model), [model.get_layer(p).output for p in paths])
            sub.input_spec = None
        else:
            sub = None
    except (AttributeError, ValueError, TypeError):
        sub = None
    if sub is not None:
        def truncated(x):
            outs = sub(x, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            return dict(zip(paths, outs))
        return truncated

    ref = weakref.ref(model)  # cached per model (weakly): the function must not keep it alive

    def whole(x):
        model = ref()
        with capture_outputs(model, paths) as seen:
            call_model(model, x)
        missing = [p for p in paths if p not in seen]
        if missing:
            raise ValueError(f"layer(s) {', '.join(map(repr, missing))} did not run when model "
                             f"{model.name!r} was called on images; choose a layer on the path "
                             "from the image input")
        return {p: seen[p] for p in paths}
    return whole


def all_layers(model) -> list:
    """``model`` and every layer inside it, each once (Keras' own walk: the layers a custom
    layer tracks in attributes and lists too)."""
    flatten = getattr(model, "_flatten_layers", None)
    return list(flatten(include_self=True, recursive=True)) if flatten else [model]


def is_built(model) -> bool:
    """Whether ``model`` and every layer in it are built.

    A Functional model is built when it is made; a subclassed model (or a Sequential one
    without an ``Input``) when it is first called, which ``fit`` on TensorFlow does at the
    first training step, in training mode. tbviz waits for that (a layer used only in
    training, a ``RandomCrop`` say, may build from other shapes in inference mode).

    >>> m = keras.Sequential([keras.layers.Dense(2)])
    >>> is_built(m), is_built(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    (False, True)
    """
    return all(getattr(layer, "built", True) for layer in all_layers(model))


def structure(model) -> tuple:
    """A key for what a probe traced for ``model`` depends on: its layers and its weights (the
    objects themselves, and whether each is trainable). While it stays equal, a trace made
    earlier serves again (a second ``fit``); adding or freezing layers changes it.

    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> before = structure(m)
    >>> m.layers[0].trainable = False
    >>> structure(m) == before
    False
    """
    return (tuple(id(layer) for layer in all_layers(model)),
            tuple((id(v), bool(v.trainable)) for v in model.weights))


def as_model_input(model, x):
    """``x`` (one tensor) in the structure ``model`` is called with: ``[x]`` for a Functional
    model built with ``inputs=[inputs]`` (Keras warns at every call that gets a bare tensor
    there), else ``x`` itself.

    >>> inp = keras.Input((2,))
    >>> listed = keras.Model([inp], keras.layers.Dense(1)(inp))
    >>> type(as_model_input(listed, np.zeros((1, 2)))).__name__
    'list'
    """
    # Functional models keep the structure they were built with here (Keras' own check
    # compares the call's inputs against it).
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, (list, tuple)) and len(struct) == 1 and not isinstance(x, (list, tuple)):
        return type(struct)([x]) if isinstance(struct, list) else (x,)
    return x


def call_model(model, x, **kwargs):
    """``model(x, training=False, **kwargs)`` with ``x`` as the model takes it
    (:func:`as_model_input`)."""
    return model(as_model_input(model, x), training=False, **kwargs)


def input_shapes(model) -> list[tuple]:
    """The shapes (batch axis included) of the model's inputs.

    Functional and Sequential models declare them; a subclassed model knows them
    once it has been called (Keras records the shape it was built with). Raises
    ``ValueError`` when neither is known.
    """
    try:
        shapes = model.input_shape
    except (AttributeError, ValueError):
        built = getattr(model, "_build_shapes_dict", None) or {}
        first = next(iter(built.values()), None)
        if len(built) != 1 or not isinstance(first, (tuple, list)):
            raise ValueError(
                f"model {model.name!r} has no defined input (a subclassed model that was never "
                "called?); build it with keras.Input or call it once on data first") from None
        shapes = tuple(first)
    return [tuple(s) for s in shapes] if isinstance(shapes, list) else [tuple(shapes)]


def image_input_shape(model) -> tuple:
    """The model's single image input shape without batch, e.g. ``(None, None, 3)``.

    Raises ``ValueError`` when the model has several inputs or a non-image
    (not rank-4, channels-last) input, saying what a probe needs.
    """
    shapes = input_shapes(model)
    if len(shapes) != 1:
        raise ValueError(f"model {model.name!r} has {len(shapes)} inputs; tbviz probes need "
                         "one image input")
    shape = shapes[0][1:]
    if len(shape) != 3:
        raise ValueError(
            f"model {model.name!r} input has shape {shapes[0]}; image probes need a "
            "(batch, height, width, channels) input"
        )
    return shape


def check_images(model, images, name: str = "images") -> np.ndarray:
    """Return ``images`` as a float32 array that fits the model's image input.

    Accepts any real-valued array of shape ``(N, H, W, C)`` (a single ``(H, W, C)``
    image gets a batch axis); raises ``ValueError`` naming the expected shape.
    The caller's array is never modified.
    """
    want = image_input_shape(model)
    arr = np.asarray(images)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == len(want):
        arr = arr[None]
    if arr.ndim != len(want) + 1:
        raise ValueError(f"{name} must have shape (N,) + {want}, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; give at least one image")
    for got, expected in zip(arr.shape[1:], want):
        if expected is not None and got != expected:
            raise ValueError(f"{name} have shape {arr.shape}, but the model expects (N,) + {want}")
    arr = arr.astype(np.float32, copy=True)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or Inf values")
    return arr


# --------------------------------------------------------------------------------------------
# Weights by layer, and which layers are plain ReLUs


def own_weights(layer) -> list:
    """The variables a layer owns itself, not those of its sub-layers."""
    inner = {id(v) for c in children(layer) for v in c.weights}
    return [v for v in layer.weights if id(v) not in inner]


def weights_by_layer(model, include_frozen: bool = False) -> list[tuple[str, object]]:
    """``[("<layer path>/<variable>", variable), ...]`` in network order.

    Layers that are frozen (``trainable=False``, e.g. a pretrained loss network)
    are left out unless ``include_frozen``; a trainable layer's non-trainable
    state (BatchNorm's moving mean and variance) is kept. Weights a subclassed model
    creates itself are listed under the model's name; two weights of one layer with the
    same name get ``_1``, ``_2``, ... so every weight has a tag of its own.

    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    >>> [tag for tag, _ in weights_by_layer(m)]
    ['d/kernel', 'd/bias']
    """
    out, seen, tags = [], set(), set()

    def add(path, v):
        seen.add(id(v))
        name = v.name.split("/")[-1].split(":")[0]
        tag = base = f"{path}/{name}" if path else name
        n = 0
        while tag in tags:
            n += 1
            tag = f"{base}_{n}"
        tags.add(tag)
        out.append((tag, v))

    def visit(layer, path, frozen):
        frozen = frozen or not layer.trainable
        if not frozen or include_frozen:
            for v in own_weights(layer):
                if id(v) not in seen:
                    add(path, v)
        for c in children(layer):
            visit(c, f"{path}/{c.name}" if path else c.name, frozen)

    if model.trainable or include_frozen:
        for v in own_weights(model):
            if id(v) not in seen:
                add(model.name, v)
    for c in children(model):
        visit(c, c.name, not model.trainable)
    return out


def is_relu(layer) -> bool:
    """True if the layer's output is a plain ReLU: ``activation="relu"``,
    ``keras.layers.ReLU()`` (no slope/cap) or ``Activation("relu")``."""
    if isinstance(layer, keras.layers.ReLU):
        return (not layer.negative_slope and layer.max_value is None and not layer.threshold)
    act = getattr(layer, "activation", None)
    return act is keras.activations.relu or getattr(act, "__name__", "") == "relu"


def relu_layers(model) -> list[str]:
    """Paths of the layers whose output is a ReLU (leaf layers only)."""
    return [p for p, layer in by_path(model).items() if not children(layer) and is_relu(layer)]
