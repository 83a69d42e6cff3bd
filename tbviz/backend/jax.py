"""The JAX side of the backend seam (see :mod:`tbviz.backend` for the names).

A probe is ``jax.jit`` of a pure function of the models' variable values: each call
passes the current values in, and inside the trace a ``keras.StatelessScope`` maps every
variable to its value, so the model runs as written (layers, custom ``call`` s) and reads
its live weights, not the ones of the first trace; nothing it assigns (a BatchNorm in
training mode, a metric) reaches the real variables. Gradients are ``jax.vjp``, many
units at once ``jax.vmap``, and rules ``jax.custom_vjp``. Event files are written by
tensorboardX (no TensorFlow).

>>> import numpy as np
>>> from tbviz.backend import jax as jb
>>> jb.function(lambda x: 2 * x)(np.ones(2, "float32")).tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras

from tbviz.backend import _common

#: ``jax.vmap`` of a pullback serves many units after one forward pass.
CAN_BATCH_PULLBACKS = True

_state = threading.local()  # the variable -> value mapping of the probe being traced


class Spec(NamedTuple):
    """The shape (``None`` for any size) and dtype of one probe argument."""

    shape: tuple
    dtype: str = "float32"


def _variables(models) -> list:
    seen, out = set(), []
    for ref in models:
        model = ref()
        if model is None:
            raise RuntimeError("the model of this probe no longer exists")
        for v in model.variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    return out


def _mapping() -> dict:
    return getattr(_state, "mapping", None) or {}


class Probe:
    """A compiled probe: ``jax.jit`` over (variable values, arguments).

    JAX compiles once per input shape. Where the signature leaves the batch free
    (``Spec((None, ...))``), the arguments with as many rows as the first such one are padded
    along it to the next power of two and outputs of that many rows cut back, so a run's varying batch sizes (the last chunk of units, say) cost
    a handful of compilations, not one each. Rows never mix in a probe (inference mode),
    so padding changes no row's result.
    """

    def __init__(self, fn, models=(), signature=None):
        self._models = [weakref.ref(m) for m in models]
        self._free = [bool(s.shape) and s.shape[0] is None for s in signature or ()]
        self.traces = 0

        def stateless(values, *args):
            self.traces += 1
            variables = _variables(self._models)
            outer = getattr(_state, "mapping", None)
            _state.mapping = {id(v): (v, x) for v, x in zip(variables, values)}
            try:
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return fn(*args)
            finally:
                _state.mapping = outer

        self._stateless = stateless
        self._jit = jax.jit(stateless)

    def __call__(self, *args):
        values = [v.value for v in _variables(self._models)]
        free = [i for i, f in enumerate(self._free) if f and i < len(args)]
        if not free:
            return self._jit(values, *args)
        n = len(args[free[0]])
        bucket = 1 << max(n - 1, 0).bit_length()
        if bucket == n:
            return self._jit(values, *args)
        args = list(args)
        for i in free:  # the arguments that share the first one's rows (not, say, a lookup table)
            a = jnp.asarray(args[i])
            if len(a) == n:
                args[i] = jnp.concatenate([a, jnp.zeros((bucket - n,) + a.shape[1:], a.dtype)])
        outs = self._jit(values, *args)
        return jax.tree_util.tree_map(
            lambda o: o[:n] if getattr(o, "ndim", 0) and o.shape[0] == bucket else o, outs)

    def trace(self, *specs):
        """The output shapes for ``specs`` (``None`` sizes taken as 1 and given back as
        ``None`` on the batch axis). JAX compiles per concrete shape at the first call."""
        shapes, free, unknown = _common.concrete([s.shape for s in specs])
        if unknown:  # sizes only a call will tell (crops): compiled then, checked then
            return None
        values = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in _variables(self._models)]
        args = [jax.ShapeDtypeStruct(shape, s.dtype) for shape, s in zip(shapes, specs)]
        outs = jax.eval_shape(self._jit, values, *args)
        return jax.tree_util.tree_map(lambda o: _common.with_free_batch(o.shape, free), outs)


def batch_refusals(probe: Probe, specs) -> list:
    """Ops :func:`pullback_batched` is known to refuse: none known here (a failure shows when
    the vectorized probe first runs, and units then go one row each)."""
    return []


def function(fn, models=(), signature=None) -> Probe:
    """``fn`` compiled by ``jax.jit``; the ``models``' variables are passed in at each call."""
    return Probe(fn, models, signature)


def tracing() -> bool:
    """Activation rules apply wherever the model runs (custom VJPs work in and out of jit)."""
    return True


# -- gradients --------------------------------------------------------------------------------

def vjp(f, *primals, has_aux: bool = False):
    """``(f(*primals), pullback)``; ``pullback(cotangent)`` gives one gradient per primal.
    ``has_aux``: ``f`` returns ``(out, aux)`` and this ``(out, pullback, aux)``."""
    return jax.vjp(f, *[jnp.asarray(p) for p in primals], has_aux=has_aux)


def pullback_batched(pullback, cotangents):
    """``pullback`` of each row of ``cotangents`` at once: ``jax.vmap``."""
    return jax.vmap(pullback)(cotangents)


def variable_gradients(fn, variables):
    """``(aux, grads)``: ``fn()`` returns ``(loss, aux)``; one gradient per variable (zeros
    where the loss does not depend on it: JAX does not tell unused from zero)."""
    variables = list(variables)
    outer = _mapping()
    values = [outer[id(v)][1] if id(v) in outer else v.value for v in variables]

    def loss(vals):
        mapping = dict(outer)
        mapping.update({id(v): (v, x) for v, x in zip(variables, vals)})
        with keras.StatelessScope(state_mapping=list(mapping.values())):
            return fn()

    (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(values)
    return aux, list(grads)


# -- the activation-rule hook -----------------------------------------------------------------

def ruled(fn, backward, needs_slope: bool = True):
    """``fn`` (pointwise in its first argument) whose backward is ``backward(dy, slope)``,
    ``slope()`` giving ``fn'(x)`` (a forward-mode derivative with a tangent of ones)."""
    def apply_ruled(x, *args, **kwargs):
        def plain(t):
            _state.inside = getattr(_state, "inside", 0) + 1
            try:
                return fn(t, *args, **kwargs)
            finally:
                _state.inside -= 1

        @jax.custom_vjp
        def apply(t):
            return plain(t)

        def fwd(t):
            return plain(t), t

        def bwd(t, dy):
            slope = (lambda: jax.jvp(plain, (t,), (jnp.ones_like(t),))[1]) if needs_slope else None
            return (backward(dy, slope),)

        apply.defvjp(fwd, bwd)
        return apply(jnp.asarray(x))
    return apply_ruled


#: The rectifiers of ``jax.nn`` that raw calls (``keras.ops.relu``, ``jax.nn.gelu``) reach.
_RAW_FUNCTIONS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
                  "softplus", "mish", "hard_silu", "hard_swish", "squareplus", "sparse_plus")


def raw_rules(rule: str, backward):
    """Within the block, calls of ``jax.nn`` rectifiers outside any ruled layer (a custom
    layer's ``keras.ops.relu(x)``, say) get ``rule``'s backward. Yields ``{"ruled": [...],
    "missed": [...]}``, filled as the model runs. A rectifier written out of primitives
    (``jnp.maximum(x, 0)``) is not seen."""
    return _common.rectifiers_ruled(jax.nn, _RAW_FUNCTIONS, rule, backward, ruled, _state)


#: Where a model's activations may come from besides ``keras.activations`` and ``keras.ops``.
ACTIVATION_MODULES = (jax.nn,)


def backward_fixes(layer) -> dict:
    """Nothing to fix: every Keras layer's gradient works inside probes here."""
    return {}


def tell_fixed(model, paths) -> None:
    pass


# -- the op graph -----------------------------------------------------------------------------

def op_graph(fn, specs, models=()) -> bytes:
    """The serialized ``GraphDef`` of ``fn(*specs)``: one node per jaxpr equation, named by
    the ``jax.named_scope`` s Keras opens per layer (``model/conv1/conv_general_dilated``),
    the weights as inputs (as TensorFlow's graph reads its variables); see
    :mod:`tbviz.backend._graphdef`."""
    from tbviz.backend import _graphdef

    probe = Probe(fn, models)
    variables = _variables(probe._models)
    values = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in variables]

    def trace(shapes):
        args = [jax.ShapeDtypeStruct(shape, s.dtype) for shape, s in zip(shapes, specs)]
        closed = jax.make_jaxpr(probe._stateless)(values, *args)
        return _graphdef.from_jaxpr(closed, [v.path for v in variables])

    return _graphdef.drawn(trace, specs)


# -- processes, errors, event files -----------------------------------------------------------

def is_chief(model=None) -> bool:
    """Process 0 writes (``jax.process_index()``), as Keras' JAX distribution elects it."""
    return jax.process_index() == 0


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err)


def is_file_error(err: BaseException) -> bool:
    return isinstance(err, OSError)


def event_sink(path: str):
    from tbviz.backend import _tensorboardx

    return _tensorboardx.Sink(path)


# -- processes of a multi-process job ---------------------------------------------------------

def processes(model=None) -> tuple[int, int]:
    """``(jax.process_count(), jax.process_index())``."""
    return jax.process_count(), jax.process_index()


def all_gather(tree, model=None) -> list:
    """Every process's ``tree`` (any picklable values), in process order, through
    ``jax.experimental.multihost_utils.process_allgather`` of its pickled bytes (so dtypes
    JAX would narrow, int64 without ``jax_enable_x64``, come back as they were)."""
    if jax.process_count() == 1:
        return [tree]
    import pickle

    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(tree), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([len(data)], np.int32))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:len(data)] = data
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(every[i, :int(n)].tobytes()) for i, n in enumerate(np.ravel(sizes))]
