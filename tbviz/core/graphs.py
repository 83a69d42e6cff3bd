"""The op-level graph of a Keras model, with one name scope per layer, on every backend.

Keras 3's own TensorBoard callback writes no op graph on any backend. The backend traces
the model's inference pass into TensorBoard's ``GraphDef`` (:func:`tbviz.backend.op_graph`):
on TensorFlow the ``tf.function`` graph; on JAX one node per jaxpr equation, on PyTorch
one per PyTorch function called (see :mod:`tbviz.backend._graphdef`), both scoped by the
name scopes Keras opens per layer call. Scopes nest as the layers are called:
``model/block/conv`` for a layer of a nested model.

Keras opens each layer's scope twice on TensorFlow (once to build, once to call), and
TensorFlow uniquifies the second: ``model_1/conv1_1/Conv2D``. :func:`op_graph` maps those
back to the layers' own names (``model/conv1/Conv2D``) using the model's structure;
JAX and PyTorch scopes hold the names as given. So TensorBoard's Graphs dashboard reads
like the model on every backend: one box per layer, double-click to see its ops.

What differs per backend: a layer called twice (shared) is one box on JAX and PyTorch
holding both calls, two on TensorFlow (the second keeps TensorFlow's suffix); loops and
branches on JAX (``scan``, ``while``, ``cond``: an RNN's steps) are one node each, their
bodies not drawn. JAX's and PyTorch's graphs label every edge with its shape (``?``
where the batch or another size is free: traced at two sizes, the sizes that differ left
unknown); TensorFlow's tells only the inputs' shapes.

Example:
    >>> import keras
    >>> from tbviz.core.graphs import op_graph
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="head")], name="net")
    >>> gd = op_graph(m)
    >>> any(n.name.startswith("net/head/") for n in gd.node)
    True
"""

from __future__ import annotations

import contextlib
import json
import re
import sys

from tensorboard.compat.proto import graph_pb2

from tbviz import backend
from tbviz.core.layers import children, input_shapes

_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def as_spec(spec) -> backend.Spec:
    """``spec`` as a :class:`tbviz.backend.Spec`: one already, or anything with a ``shape``
    and a ``dtype`` (a ``tf.TensorSpec``, a ``jax.ShapeDtypeStruct``)."""
    if isinstance(spec, backend.Spec):
        return spec
    shape = getattr(spec, "shape", None)
    if shape is None:
        raise ValueError(f"an input spec needs a shape and a dtype, got {spec!r}; e.g. "
                         "tbviz.backend.Spec((None, 32, 32, 3), 'float32')")
    dtype = getattr(spec, "dtype", "float32")
    return backend.Spec(tuple(None if d is None else int(d) for d in shape),
                        getattr(dtype, "name", str(dtype)))


def input_spec(model, batch_size=None) -> list:
    """:class:`tbviz.backend.Spec` s of the model's inputs (free batch and unknown dims).

    A subclassed model has no ``inputs``; once it has been called (after the first
    training step) its recorded build shape is used instead. Raises ``ValueError``
    when neither is known.
    """
    shapes = input_shapes(model)
    try:
        dtypes = [getattr(t, "dtype", "float32") for t in model.inputs]
    except (AttributeError, ValueError):  # subclassed: known by its build shape only
        dtypes = ["float32"] * len(shapes)
    return [backend.Spec((batch_size,) + tuple(s[1:]), str(getattr(d, "name", d) or "float32"))
            for s, d in zip(shapes, dtypes)]


def op_graph(model, fn=None, spec=None) -> graph_pb2.GraphDef:
    """The inference-pass op graph of ``model`` as a ``GraphDef``, scopes named after layers.

    ``fn`` replaces the traced function (default ``model(x, training=False)``),
    e.g. a loss computation with its own name scopes; ``spec`` its input specs
    (default: the model's inputs).
    """
    spec = [as_spec(s) for s in (spec if spec is not None else input_spec(model))]
    if fn is None:
        def fn(*xs):
            return model(xs[0] if len(xs) == 1 else list(xs), training=False)
    graph_def = graph_pb2.GraphDef.FromString(backend.op_graph(fn, spec, models=[model]))
    # Only TensorFlow uniquifies scope names (``conv1_1``); JAX's name stack and Keras' own
    # scope stack (PyTorch) hold each layer's name as given, so a real layer named
    # ``dense_1`` must stay ``dense_1`` there.
    return rename_scopes(graph_def, model) if backend.name == "tensorflow" else graph_def


def _scope_tree(model):
    """``{layer name: subtree}`` for the model's layers, under the model's own name."""
    def sub(layer):
        return {c.name: sub(c) for c in children(layer)}
    top = sub(model)
    # graph_fn may call the model's sub-models directly, so they are roots too.
    return {**top, model.name: top}


def rename_scopes(graph_def, model) -> graph_pb2.GraphDef:
    """Strip Keras' ``_<n>`` scope suffixes where they stand for a layer's own name.

    A scope component ``c`` under a known parent is renamed to the child layer
    ``name`` if ``c == name`` plus one ``_<n>`` suffix (the call scope); the first
    call of a layer keeps the clean name, later calls of a shared layer keep their
    suffixed one so names stay unique. Other components (ops, custom scopes) are
    left alone; if renaming would ever make two nodes collide, nothing is renamed.
    """
    tree = _scope_tree(model)
    mapping: dict[tuple, str] = {}  # (original parent path, component) -> new component
    taken: dict[tuple, set] = {}    # original parent path -> new names used there

    def resolve(parts):
        out, node = [], tree
        for i, comp in enumerate(parts):
            key = (tuple(parts[:i]), comp)
            if key not in mapping:
                m = _SUFFIX.match(comp)
                new = m.group(1) if m and m.group(1) in node else comp
                used = taken.setdefault(key[0], set())
                if new in used:  # a shared layer's second call: keep its own scope
                    new = comp
                used.add(new)
                mapping[key] = new
            new = mapping[key]
            out.append(new)
            # Below a layer come op names; a model called inside a custom scope (graph_fn)
            # starts over from the top of the layer tree.
            node = node[new] if node.get(new) else tree
        return "/".join(out)

    renamed = {n.name: resolve(n.name.split("/")) for n in graph_def.node}
    if len(set(renamed.values())) != len(renamed):  # never produce a malformed graph
        return graph_def

    def ref(name):
        ctrl = name.startswith("^")
        base, _, port = name.lstrip("^").partition(":")
        base = renamed.get(base, base)
        return ("^" if ctrl else "") + base + (":" + port if port else "")

    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        node.name = renamed[node.name]
        node.input[:] = [ref(i) for i in node.input]
    return out


def keras_config_json(model) -> str | None:
    """``model.to_json()`` for TensorBoard's conceptual graph, or ``None`` if the model
    cannot be serialized (subclassed models without ``get_config``)."""
    try:
        with _tensorflow_left_unimported():
            text = model.to_json()
        json.loads(text)
        return text
    except Exception:  # noqa: BLE001 - any failure to serialize means no conceptual graph
        return None


@contextlib.contextmanager
def _tensorflow_left_unimported():
    """Keras' serializer imports TensorFlow, where it is installed, only to ask whether a
    value is a ``tf.TensorShape``: seconds and hundreds of MB in a JAX or PyTorch process.
    No value can be one while TensorFlow is not imported, so Keras is told it is absent."""
    try:
        from keras.src.utils import module_utils

        lazy = module_utils.tensorflow
        skip = lazy._available is None and "tensorflow" not in sys.modules
    except (ImportError, AttributeError):  # another Keras: let it import what it wants
        skip = False
    if not skip:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None
