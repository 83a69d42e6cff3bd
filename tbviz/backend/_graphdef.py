"""The op graph as TensorBoard's ``GraphDef`` where the backend has none of its own.

TensorFlow hands TensorBoard its own graph. On JAX and PyTorch the same picture is
drawn from what one inference pass tells:

* :func:`from_jaxpr` (JAX): one node per jaxpr equation, named ``<name stack>/<primitive>``.
  Keras opens a ``jax.named_scope`` per layer call, so the name stack is the layer path
  (``model/block/conv``, as called: nested models nested). Calls (``jit``,
  ``custom_jvp_call``, ``remat``...) are inlined in their scope (``keras.ops.relu`` draws
  as ``max``); control flow (``cond``, ``while``, ``scan``) is one node named after its
  primitive, its body not drawn (it runs many times, or one branch of several).
* :func:`from_torch` (PyTorch): one node per PyTorch function called while ``fn`` runs
  (a ``TorchFunctionMode`` records them: ``conv2d``, ``add``, ``getitem``), scoped by
  Keras' own name-scope stack at the time. Keras layers are ``torch.nn.Module`` s but not
  each other's registered submodules, so ``torch.jit.trace`` (and TensorBoard's
  ``add_graph``, which also imports TensorFlow) would scope them not at all. Calls that
  only hand back an input (``.to`` the device it is on, ``contiguous``) are left out;
  in-place ones (``add_``, ``x[i] = v``) are drawn, and later readers wired to them.

On both, the model's weights are ``VariableV2`` nodes inside the scope of the first op
that reads them (as TensorFlow reads a variable inside its layer; the ``variable`` attr
holds the path), other tensors from outside are ``Const`` nodes there, the inputs are
``Placeholder`` nodes ``input_<i>`` and the results ``Identity`` nodes ``output_<i>``.
Each node carries ``dtype`` and ``_output_shapes`` (TensorBoard labels and sizes edges
with them) and its short non-tensor arguments (strides, axes) as attrs, which the node's
info card lists. A free size is traced twice (:func:`drawn`) and shown as ``?``.

Example (the builder both share):
    >>> g = Graph()
    >>> x = g.add("", "Placeholder", [], [((None, 3), "float32")], name="input_0")
    >>> y = g.add("net/dense", "dot_general", [(x, 0)], [((None, 2), "float32")])
    >>> [(n.name, list(n.input)) for n in graph_pb2.GraphDef.FromString(g.serialize()).node]
    [('input_0', []), ('net/dense/dot_general', ['input_0'])]
"""

from __future__ import annotations

import logging
import re

import keras
from tensorboard.compat.proto import graph_pb2, tensor_shape_pb2, types_pb2

log = logging.getLogger("tbviz")

#: Sizes a free dimension is traced at, twice: the batch, and any other (image sides,
#: sequence lengths), large enough for the strides and minimum sizes of common backbones.
BATCH_SIZES = (1, 2)
FREE_SIZES = (128, 160)
_ATTR_CHARS = 100  # longer argument values (arrays, functions) are left off the info card
_DTYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF"}


class Graph:
    """The nodes of a ``GraphDef`` being drawn: each op, its scope, inputs and outputs.

    Names are given at :meth:`serialize`: ``<scope>/<name or op>``, made unique as
    TensorFlow does (``add``, ``add_1``) and never equal to a scope (TensorBoard would
    draw one box for both).
    """

    def __init__(self):
        self.nodes: list[dict] = []

    def add(self, scope: str, op: str, inputs, outputs, attrs=None, name=None) -> int:
        """Add a node; ``inputs`` are ``(node, output index)`` pairs, ``outputs``
        ``(shape, dtype name)`` pairs (``None`` for a size not known). Returns its index."""
        self.nodes.append({"scope": scope, "op": op, "name": _clean(name or op),
                           "inputs": list(inputs), "outputs": list(outputs),
                           "attrs": dict(attrs or {})})
        return len(self.nodes) - 1

    def unknown_where_different(self, other: Graph) -> None:
        """Mark unknown the sizes that differ in ``other``, the same pass traced at other
        sizes, and leave off the attrs that differ; if the two passes did not run the same
        ops, all shapes and attrs (rather than some wrong ones)."""
        same = len(self.nodes) == len(other.nodes) and all(
            a["op"] == b["op"] and len(a["outputs"]) == len(b["outputs"])
            for a, b in zip(self.nodes, other.nodes))
        if not same:
            log.info("tbviz: the op graph's ops depend on the input's size; drawn without shapes")
        for k, a in enumerate(self.nodes):
            b = other.nodes[k] if same else {"outputs": [(None, d) for _, d in a["outputs"]],
                                             "attrs": {}}
            a["outputs"] = [(_merged(s, t), d) for (s, d), (t, _) in zip(a["outputs"], b["outputs"])]
            # Arguments that follow the size (a reshape's new sizes) would say the traced one.
            a["attrs"] = {key: v for key, v in a["attrs"].items() if b["attrs"].get(key) == v}

    def serialize(self) -> bytes:
        """The ``GraphDef``, serialized."""
        used = {"/".join(parts[:i]) for n in self.nodes if n["scope"]
                for parts in [n["scope"].split("/")] for i in range(1, len(parts) + 1)}
        names = []
        for n in self.nodes:
            base = f"{n['scope']}/{n['name']}" if n["scope"] else n["name"]
            name, k = base, 0
            while name in used:
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            names.append(name)
        graph = graph_pb2.GraphDef()
        for n, name in zip(self.nodes, names):
            node = graph.node.add(name=name, op=n["op"])
            node.input.extend(names[i] + (f":{port}" if port else "") for i, port in n["inputs"])
            if n["outputs"]:
                node.attr["_output_shapes"].list.shape.extend(_shape(s) for s, _ in n["outputs"])
                dtype = _dtype(n["outputs"][0][1])
                if dtype:
                    node.attr["dtype"].type = dtype
            for key, value in n["attrs"].items():
                node.attr[key].s = value.encode()
        return graph.SerializeToString()


def drawn(trace, specs) -> bytes:
    """``trace(shapes)`` (a :class:`Graph` of one pass at those input shapes), serialized;
    traced again at other sizes where ``specs`` leave some free, those shown unknown."""
    first, second = trace_shapes(specs)
    graph = trace(first)
    if second is not None:
        graph.unknown_where_different(trace(second))
    return graph.serialize()


def trace_shapes(specs):
    """``(shapes, other shapes or None)``: ``specs`` ' shapes with the free sizes filled in
    twice (:data:`BATCH_SIZES` on the batch axis, :data:`FREE_SIZES` elsewhere).

    >>> trace_shapes([((None, 8, 3), "float32")])
    ([(1, 8, 3)], [(2, 8, 3)])
    """
    def fill(k):
        return [tuple((BATCH_SIZES if i == 0 else FREE_SIZES)[k] if d is None else int(d)
                      for i, d in enumerate(spec[0])) for spec in specs]
    free = any(d is None for spec in specs for d in spec[0])
    return fill(0), (fill(1) if free else None)


def attrs_of(values: dict) -> dict:
    """Short string forms of the plain values among ``values`` (numbers, strings, tuples of
    them, dtypes), for the node's info card; ``None`` and long ones are left off."""
    out = {}
    for key, value in values.items():
        if value is None or callable(value) or _holds_jaxpr(value):
            continue
        text = str(value)
        if len(text) <= _ATTR_CHARS and "\n" not in text:
            out[_clean(str(key))] = text
    return out


# -- JAX ----------------------------------------------------------------------------------------

#: Primitives that call one jaxpr once, in and out as given: drawn inline, in their scope.
_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin"}


def from_jaxpr(closed, weights) -> Graph:
    """The :class:`Graph` of ``closed`` (a ``ClosedJaxpr``) whose first inputs are the
    variables at the paths ``weights``, the rest the function's inputs."""
    from jax.extend import core

    g = Graph()
    env: dict = {}
    later: dict = {}  # invar or constvar -> (op, name, attrs): drawn where first read
    jaxpr = closed.jaxpr
    for var, path in zip(jaxpr.invars, weights):
        later[var] = ("VariableV2", path.rsplit("/", 1)[-1], {"variable": path})
    for i, var in enumerate(jaxpr.invars[len(weights):]):
        env[var] = (g.add("", "Placeholder", [], [_aval(var)], name=f"input_{i}"), 0)
    for var in jaxpr.constvars:
        later[var] = ("Const", "const", {})

    def read(v, scope, env):
        if isinstance(v, core.Literal):
            return None  # a number in the equation: no edge (TensorBoard shows none either)
        if v not in env and v in later:
            op, name, attrs = later.pop(v)
            env[v] = (g.add(scope, op, [], [_aval(v)], attrs, name=name), 0)
        return env.get(v)

    def walk(jaxpr, env, prefix):
        for eqn in jaxpr.eqns:
            stack = str(eqn.source_info.name_stack)
            scope = f"{prefix}/{stack}" if prefix and stack else prefix or stack
            ins = [read(v, scope, env) for v in eqn.invars]
            body = _called(eqn)
            if body is not None:
                inner, consts = body
                sub = dict(zip(inner.invars, ins))
                for var, _ in zip(inner.constvars, consts):
                    later[var] = ("Const", "const", {})
                walk(inner, sub, scope)
                outs = [read(v, scope, sub) for v in inner.outvars]
            else:
                node = g.add(scope, eqn.primitive.name, [r for r in ins if r is not None],
                             [_aval(v) for v in eqn.outvars], attrs_of(eqn.params))
                outs = [(node, k) for k in range(len(eqn.outvars))]
            for var, ref in zip(eqn.outvars, outs):
                if not isinstance(var, core.DropVar) and ref is not None:
                    env[var] = ref

    walk(jaxpr, env, "")
    for i, var in enumerate(jaxpr.outvars):
        ref = read(var, "", env)
        if ref is not None:
            g.add("", "Identity", [ref], [_aval(var)], name=f"output_{i}")
    return g


def _called(eqn):
    """``(jaxpr, consts)`` of a call-like equation to draw inline, else ``None``."""
    if eqn.primitive.name not in _CALLS:
        return None
    bodies = [p for p in eqn.params.values() if hasattr(p, "eqns") or hasattr(p, "jaxpr")]
    if len(bodies) != 1:
        return None
    body = bodies[0]
    inner, consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, ())
    if len(inner.invars) != len(eqn.invars) or len(inner.outvars) != len(eqn.outvars):
        return None
    return inner, consts


def _aval(var):
    aval = var.aval
    return tuple(getattr(aval, "shape", ()) or ()), str(getattr(aval, "dtype", ""))


def _holds_jaxpr(value) -> bool:
    items = value if isinstance(value, (tuple, list)) else (value,)
    return any(hasattr(x, "eqns") or hasattr(x, "jaxpr") for x in items)


# -- PyTorch ------------------------------------------------------------------------------------

#: In-place operators: they change their first argument and hand it back.
_INPLACE_DUNDERS = {f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod",
                                              "pow", "and", "or", "xor", "lshift", "rshift",
                                              "matmul")}


def from_torch(fn, args, models=()) -> Graph:
    """The :class:`Graph` of ``fn(*args)`` (``args`` PyTorch tensors), run once eagerly
    under ``torch.no_grad``; the ``models``' variables are drawn as weights."""
    import torch
    from keras.src.backend.common import global_state
    from torch.overrides import TorchFunctionMode

    g = Graph()
    producer: dict = {}  # id(tensor) -> (node, output index)
    alive: list = []  # every tensor seen, kept so that no id is reused while recording
    weights = {id(v.value): v for m in models for v in m.variables}

    def scope():
        # The call stack of Keras' name scopes (layer inside model), not `current_path()`,
        # which is the variables' path (each layer's path at creation).
        return "/".join(e.name for e in global_state.get_global_attribute(
            "name_scope_stack", default=None) or [])

    def tensors(tree):
        out = []
        for x in _leaves(tree):
            x = x.value if isinstance(x, keras.Variable) else x
            if isinstance(x, torch.Tensor):
                out.append(x)
        return out

    def read(t, where):
        if id(t) not in producer:
            v = weights.get(id(t))
            op, name, attrs = ("VariableV2", v.name, {"variable": v.path}) if v is not None else ("Const", "const", {})
            producer[id(t)] = (g.add(where, op, [], [_tensor(t)], attrs, name=name), 0)
            alive.append(t)
        return producer[id(t)]

    for i, a in enumerate(args):
        producer[id(a)] = (g.add("", "Placeholder", [], [_tensor(a)], name=f"input_{i}"), 0)
        alive.append(a)

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            result = func(*args, **kwargs)  # the mode is off inside: its own calls unseen
            name = getattr(func, "__name__", "op")
            if name == "__get__":  # a property (x.T, x.mT): named after it
                name = getattr(getattr(func, "__self__", None), "__name__", name)
            ins, outs = tensors((args, kwargs)), tensors(result)
            changed = ins[:1] if (name == "__setitem__" or name in _INPLACE_DUNDERS or (
                name.endswith("_") and not name.endswith("__"))) else []
            changed += tensors(kwargs.get("out"))
            if not changed and all(any(o is i for i in ins) for o in outs):
                return result  # a shape, a dtype, or an input handed back as it was
            where = scope()
            refs = [read(t, where) for t in ins]
            outs = outs or changed
            plain = {f"arg{k}": a for k, a in enumerate(args) if not tensors(a)}
            plain.update({k: a for k, a in kwargs.items() if not tensors(a)})
            node = g.add(where, _op_name(name), refs, [_tensor(t) for t in outs], attrs_of(plain))
            for k, t in enumerate(outs):
                producer[id(t)] = (node, k)
                alive.append(t)
            return result

    with torch.no_grad(), Recorder():
        result = fn(*args)
    for i, t in enumerate(tensors(result)):
        g.add("", "Identity", [read(t, "")], [_tensor(t)], name=f"output_{i}")
    return g


def _tensor(t):
    return tuple(t.shape), str(t.dtype).removeprefix("torch.")


def _op_name(name: str) -> str:
    return name[2:-2] if name.startswith("__") and name.endswith("__") else name


def _leaves(tree):
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return [leaf for x in tree for leaf in _leaves(x)]
    return [tree]


# -- the parts of a NodeDef -----------------------------------------------------------------------

def _clean(name: str) -> str:
    """A node-name component TensorBoard reads as one (no ``/``, no spaces or brackets)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "op"


def _merged(a, b):
    if a is None or b is None or len(a) != len(b):
        return None
    return tuple(x if x == y else None for x, y in zip(a, b))


def _shape(shape) -> tensor_shape_pb2.TensorShapeProto:
    if shape is None:
        return tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else int(d))
             for d in shape])


def _dtype(name: str) -> int:
    """TensorFlow's ``DataType`` number of a NumPy/PyTorch dtype name (0 if it has none)."""
    key = _DTYPES.get(name, "DT_" + name.upper())
    return types_pb2.DataType.Value(key) if key in types_pb2.DataType.keys() else 0  # noqa: SIM118
