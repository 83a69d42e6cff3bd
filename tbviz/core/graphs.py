"""The op-level graph of a Keras model, with one name scope per layer, on every backend.

Keras 3's own TensorBoard callback writes no usable op graph (on JAX and PyTorch none at
all). The backend traces the model's inference pass (:func:`tbviz.backend.op_graph`: a
``tf.function`` graph, a jaxpr, a ``torch.jit`` trace) into TensorBoard's ``GraphDef``
with the layers' name scopes. Keras opens each layer's scope twice (once to build, once
to call), so on TensorFlow every scope comes out suffixed: ``model_1/conv1_1/Conv2D``.
:func:`op_graph` maps those back to the layers' own names (``model/conv1/Conv2D``) using
the model's structure, so TensorBoard's Graphs dashboard reads like the model.

Example:
    >>> import keras
    >>> from tbviz.core.graphs import op_graph
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="head")], name="net")
    >>> gd = op_graph(m)
    >>> any(n.name.startswith("net/head/") for n in gd.node)
    True
"""

from __future__ import annotations

import json
import re

from tensorboard.compat.proto import graph_pb2

from tbviz import backend
from tbviz.core.layers import call_model, children, input_shapes

_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def as_spec(spec) -> "backend.Spec":
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
            return call_model(model, xs[0]) if len(xs) == 1 else model(list(xs), training=False)
    graph_def = graph_pb2.GraphDef.FromString(backend.op_graph(fn, spec, models=[model]))
    return rename_scopes(graph_def, model)


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
            node = node[new] if new in node and node[new] else tree
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
        text = model.to_json()
        json.loads(text)
        return text
    except Exception:
        return None
