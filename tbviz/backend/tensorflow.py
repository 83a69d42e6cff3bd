"""The TensorFlow side of the backend seam (see :mod:`tbviz.backend` for the names).

Probes are ``tf.function`` s traced without autograph (their Python branches test Python
values); they read the model's variables by reference, so one trace serves a whole run.
Gradients inside a probe are symbolic (``tf.gradients``), which honours the gradient
overrides that put a rule on raw ``Relu``-family ops; eagerly, a ``GradientTape``.
Event files are written by TensorFlow's own summary writer.

>>> import numpy as np, tensorflow as tf
>>> from tbviz.backend import tensorflow as tfb
>>> double = tfb.function(lambda x: 2 * x, signature=[tfb.Spec((None, 2), "float32")])
>>> double(np.ones((1, 2), "float32")).numpy().tolist()
[[2.0, 2.0]]
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import weakref
from typing import NamedTuple

import keras
import tensorflow as tf

from tbviz.backend import _common

_log = logging.getLogger("tbviz")

#: pfor vectorizes the backward passes of many units after one forward pass.
CAN_BATCH_PULLBACKS = True

#: Name scope of the forward ops inside a ruled activation (raw-op rules skip them).
_SCOPE = "tbviz_rule"


class Spec(NamedTuple):
    """The shape (``None`` for any size) and dtype of one probe argument."""

    shape: tuple
    dtype: str = "float32"


# -- compiling probes -------------------------------------------------------------------------

class Probe:
    """A compiled probe: call it with arrays; :meth:`trace` compiles it for specs now."""

    def __init__(self, fn, signature=None):
        specs = None if signature is None else [tf.TensorSpec(s.shape, s.dtype) for s in signature]
        self._fn = tf.function(fn, input_signature=specs, autograph=False,
                               reduce_retracing=specs is None)

    def __call__(self, *args):
        return self._fn(*args)

    def trace(self, *specs):
        """Compile for ``specs`` (or the signature) now; returns the output structure's
        shapes (tuples, ``None`` for unknown sizes)."""
        args = [tf.TensorSpec(s.shape, s.dtype) for s in specs]
        with _pfor_quiet():
            outs = self._fn.get_concrete_function(*args).structured_outputs
        return tf.nest.map_structure(lambda t: tuple(t.shape), outs)

    def graph_ops(self, *specs) -> set:
        """The op types of the traced function (``specs`` as for :meth:`trace`)."""
        args = [tf.TensorSpec(s.shape, s.dtype) for s in specs]
        return {op.type for op in self._fn.get_concrete_function(*args).graph.get_operations()}

    @property
    def traces(self) -> int:
        return self._fn.experimental_get_tracing_count()


#: Backward ops pfor refuses to vectorize over units: a depthwise convolution's (its
#: converter wants a filter that varies with the unit: "expected to be not loop invariant";
#: MobileNet, EfficientNet, Xception, NASNet, ConvNeXt's grouped convolutions) and a
#: reflection padding's (no converter). And any pass through a softmax: pfor's vectorized
#: backward pass of Keras' MultiHeadAttention gives wrong numbers or aborts the process
#: (heap corruption, TensorFlow 2.21), so units behind attention go one row each.
_PFOR_REFUSES = ("DepthwiseConv2dNativeBackpropInput", "MirrorPadGrad", "Softmax")


def batch_refusals(probe: Probe, specs) -> list:
    """The ops of ``probe`` (compiled for ``specs``) that :func:`pullback_batched` cannot
    vectorize, read off its graph: cheaper than tracing the vectorized probe to see it fail."""
    return sorted(set(_PFOR_REFUSES) & probe.graph_ops(*specs))


def _drop_pfor_records(record) -> bool:
    return "parallel_for" not in record.pathname


@contextlib.contextmanager
def _pfor_quiet():
    """Hold back pfor's own log while tracing: it logs every op it cannot convert at ERROR
    level (with the op's creation trace) before raising, and that failure is expected and
    handled (units then go one row each)."""
    logger = logging.getLogger("tensorflow")
    logger.addFilter(_drop_pfor_records)
    try:
        yield
    finally:
        logger.removeFilter(_drop_pfor_records)


def function(fn, models=(), signature=None) -> Probe:
    """``fn`` as a ``tf.function``; the ``models``' variables are read live, by reference."""
    return Probe(fn, signature)


def tracing() -> bool:
    """Whether activation rules can be applied here: inside a probe being traced."""
    return not tf.executing_eagerly()


# -- gradients --------------------------------------------------------------------------------

def vjp(f, *primals, has_aux: bool = False):
    """``(f(*primals), pullback)``; ``pullback(cotangent)`` gives one gradient per primal
    (zeros where ``f`` does not depend on it). ``has_aux``: ``f`` returns ``(out, aux)``
    and this ``(out, pullback, aux)``, ``aux`` not differentiated."""
    xs = [tf.convert_to_tensor(p) for p in primals]
    zero = tf.UnconnectedGradients.ZERO
    if tf.executing_eagerly():
        with tf.GradientTape(persistent=True) as tape:
            for x in xs:
                tape.watch(x)
            result = f(*xs)
        ys = result[0] if has_aux else result

        def pullback(cotangent):
            return tuple(tape.gradient(ys, xs, output_gradients=cotangent,
                                       unconnected_gradients=zero))
    else:
        result = f(*xs)
        ys = result[0] if has_aux else result

        def pullback(cotangent):
            return tuple(tf.gradients(tf.nest.flatten(ys), xs,
                                      grad_ys=tf.nest.flatten(cotangent),
                                      unconnected_gradients=zero))
    if has_aux:
        return ys, pullback, tf.nest.map_structure(tf.stop_gradient, result[1])
    return ys, pullback


def pullback_batched(pullback, cotangents):
    """``pullback`` of each row of ``cotangents`` at once (pfor); a ``ValueError``-like error
    where an op of the backward pass cannot be vectorized (no slow while-loop fallback)."""
    return tf.vectorized_map(lambda c: pullback(c), cotangents, fallback_to_while_loop=False)


def variable_numpy(v):
    """A ``keras.Variable``'s value as a NumPy array, without a NumPy 2 warning."""
    return v.numpy()


def variable_gradients(fn, variables):
    """``(aux, grads)``: ``fn()`` returns ``(loss, aux)``; one gradient per variable,
    ``None`` where the loss does not depend on it. Sparse gradients (an ``Embedding``'s
    ``IndexedSlices``) come back dense."""
    with tf.GradientTape() as tape:
        loss, aux = fn()
    grads = tape.gradient(loss, list(variables))
    return aux, [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in grads]


# -- the activation-rule hook -----------------------------------------------------------------

def _derivative(f, x):
    """``(f(x), slope)``: ``slope()`` is ``f'(x)`` as TensorFlow differentiates ``f``.

    ``f`` is pointwise, so the gradient of ``sum(f(x))`` is its derivative (the exact or
    tanh GELU, as the model lowered it). The tape records the forward pass where it runs
    (inside a layer's autocast scope, under mixed precision), and looks gradients up by op
    type, so no rule of the enclosing trace leaks in. Persistent: a traced forward pass
    may be differentiated more than once.
    """
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = f(x)
    return y, lambda: tape.gradient(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def ruled(fn, backward, needs_slope: bool = True):
    """``fn`` (pointwise in its first argument) whose backward is ``backward(dy, slope)``,
    ``slope()`` giving ``fn'(x)`` (not computed unless ``needs_slope``)."""
    def apply_ruled(x, *args, **kwargs):
        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def apply(t):
            with tf.name_scope(_SCOPE):
                if needs_slope:
                    y, slope = _derivative(lambda u: fn(u, *args, **kwargs), t)
                else:
                    y, slope = fn(t, *args, **kwargs), None

            # ``variables``: a PReLU reads its slope inside; it gets no gradient from a rule.
            def grad(dy, variables=None):
                dx = backward(dy, slope)
                return (dx, [None] * len(variables)) if variables else dx
            return y, grad
        return apply(x)
    return apply_ruled


_RAW_OPS = {
    "Relu": lambda op: tf.nn.relu,
    "Relu6": lambda op: tf.nn.relu6,
    "LeakyRelu": lambda op: functools.partial(tf.nn.leaky_relu, alpha=op.get_attr("alpha")),
    "Elu": lambda op: tf.nn.elu,
    "Selu": lambda op: tf.nn.selu,
    "Softplus": lambda op: tf.math.softplus,
}
_REGISTERED: dict = {}  # rule -> {op type: registered gradient name}


def _overrides(rule, backward):
    if rule not in _REGISTERED:
        names = {}
        for op_type in _RAW_OPS:
            name = f"Tbviz{rule.capitalize()}{op_type}"

            def grad(op, dy, _op_type=op_type):
                return backward(dy, lambda: _derivative(_RAW_OPS[_op_type](op), op.inputs[0])[1]())
            tf.RegisterGradient(name)(grad)
            names[op_type] = name
        _REGISTERED[rule] = names
    return _REGISTERED[rule]


#: Rectifiers that TensorFlow writes out of several ops (no one op type to override): their
#: ``tf.nn`` functions, which Keras' ``ops.gelu`` and ``ops.silu`` call, are wrapped instead.
_RAW_FUNCTIONS = ("gelu", "silu", "swish")


def _outside_rules() -> bool:
    """Not inside a ruled layer's (or rectifier's) own ops: those have their rule already."""
    scope = tf.compat.v1.get_default_graph().get_name_scope()
    return _SCOPE not in scope.split("/")


@contextlib.contextmanager
def raw_rules(rule: str, backward):
    """Within the block (while a probe is traced), ``Relu``, ``Relu6``, ``LeakyRelu``,
    ``Elu``, ``Selu`` and ``Softplus`` ops, and ``tf.nn.gelu`` and ``tf.nn.silu`` calls
    (a custom layer's ``keras.activations.gelu(x)``, say), written outside any ruled layer
    get ``rule``'s ``backward(dy, slope)``. Yields ``{"ruled": [...], "missed": [...]}``,
    filled on exit: the raw op types and functions it acted on, and those it could not
    reach (none on TensorFlow)."""
    graph = tf.compat.v1.get_default_graph()
    first = len(graph.get_operations())
    # No per-thread state here: a ruled layer's ops are told apart by their name scope.
    with graph.gradient_override_map(_overrides(rule, backward)), \
            _common.rectifiers_ruled(tf.nn, _RAW_FUNCTIONS, rule, backward, ruled, None,
                                     active=_outside_rules) as sites:
        yield sites
    raw = [op.type for op in graph.get_operations()[first:]
           if op.type in _RAW_OPS and not any(part.startswith(_SCOPE)
                                              for part in op.name.split("/"))]
    sites["ruled"].extend(f"{t} op" for t in dict.fromkeys(raw))


#: Where a model's activations may come from besides ``keras.activations`` and ``keras.ops``.
ACTIVATION_MODULES = (tf.nn, tf.math)


# -- layers whose TensorFlow gradient fails inside probes: grouped convolutions ---------------
#
# Grouped convolutions (``Conv2D(groups=g)``, ConvNeXt's depthwise-as-grouped convolutions)
# have a gradient in TensorFlow only through XLA, and that one cannot be vectorized over
# units on a CPU without oneDNN ("Gradients for grouped convolutions are not supported on
# CPU"). Within a probe, their backward is the exact gradient of the same convolution
# written as a depthwise convolution (one group per channel) or one dense convolution per
# group; the forward values are Keras' own.


def _is_grouped(layer) -> bool:
    # Conv2D and Conv3D run through convolution_op; Conv1D calls ops.conv itself.
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv3D)) \
        and getattr(layer, "groups", 1) > 1


def _grouped_as_dense(layer, x, kernel):
    """``layer``'s grouped convolution of ``x`` written with ops that have a CPU gradient."""
    axis = -1 if layer.data_format == "channels_last" else 1
    channels, groups = x.shape[axis], layer.groups
    if groups == channels and layer.rank == 2:
        # One group per channel is a depthwise convolution: group g's outputs g*m..g*m+m-1
        # are the depthwise outputs of channel g with multiplier m, in the same order.
        depthwise = tf.reshape(kernel, tuple(kernel.shape[:2]) + (channels, -1))
        return keras.ops.depthwise_conv(x, depthwise, strides=layer.strides,
                                        padding=layer.padding, data_format=layer.data_format,
                                        dilation_rate=layer.dilation_rate)
    xs = tf.split(x, groups, axis=axis)
    ks = tf.split(kernel, groups, axis=-1)
    return tf.concat([keras.ops.conv(xg, kg, strides=list(layer.strides), padding=layer.padding,
                                     dilation_rate=layer.dilation_rate,
                                     data_format=layer.data_format)
                      for xg, kg in zip(xs, ks)], axis=axis)


_TOLD: "weakref.WeakSet" = weakref.WeakSet()  # models whose grouped convolutions were named


def _tell_grouped(model, paths):
    if paths and model not in _TOLD:
        _TOLD.add(model)
        _log.info("tbviz: model %r has %d grouped convolution(s) (%s); probes take their "
                 "gradient through the same convolutions written per group (exact), because "
                 "TensorFlow's own works only through XLA and fails when vectorized on a CPU "
                 "without oneDNN", model.name, len(paths),
                 ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else ""))


def _grouped_conv(layer):
    """``layer.convolution_op`` with the exact gradient of :func:`_grouped_as_dense`."""
    original = layer.convolution_op

    def convolution_op(inputs, kernel):
        @tf.custom_gradient
        def conv(x, k):
            y = original(x, k)

            def backward(dy):
                with tf.GradientTape() as tape:
                    tape.watch([x, k])
                    z = _grouped_as_dense(layer, x, k)
                return tape.gradient(z, [x, k], output_gradients=dy)
            return y, backward
        # The kernel goes in as a tensor, so its gradient comes back like the input's.
        return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))
    return convolution_op


def backward_fixes(layer) -> dict:
    """``{attribute: replacement}`` that a probe swaps into ``layer`` for its duration:
    a grouped convolution's ``convolution_op`` with a gradient that works on a CPU."""
    return {"convolution_op": _grouped_conv(layer)} if _is_grouped(layer) else {}


def tell_fixed(model, paths) -> None:
    """Say once per model which of its layers got a fixed gradient."""
    _tell_grouped(model, paths)


# -- the op graph -----------------------------------------------------------------------------

def op_graph(fn, specs, models=()) -> bytes:
    """The serialized ``GraphDef`` of ``fn(*specs)`` traced once (Keras' name scopes kept)."""
    args = [tf.TensorSpec(s.shape, s.dtype, name=f"input_{i}") for i, s in enumerate(specs)]
    graph = tf.function(fn, autograph=False).get_concrete_function(*args).graph
    return graph.as_graph_def().SerializeToString()


# -- processes, errors, event files -----------------------------------------------------------

def is_chief(model=None) -> bool:
    """True on the process that should write logs, images and checkpoints.

    Without a multi-worker cluster that is always this process. With one, it is the
    ``chief`` task, or ``worker`` 0 when the cluster has no chief, exactly as
    ``MultiWorkerMirroredStrategy`` elects it.
    """
    strategy = getattr(model, "distribute_strategy", None) if model is not None else None
    task_type = task_id = None
    cluster = {}
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None):
        task_type, task_id = resolver.task_type, resolver.task_id
        try:
            cluster = resolver.cluster_spec().as_dict()
        except Exception:  # noqa: BLE001 - no spec: a single task
            cluster = {}
    else:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        task = tf_config.get("task") or {}
        task_type, task_id = task.get("type"), task.get("index", 0)
        cluster = tf_config.get("cluster") or {}
    if not task_type:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in cluster


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, tf.errors.ResourceExhaustedError)) or "OOM" in str(err)


def is_file_error(err: BaseException) -> bool:
    """An error of the file system under the log directory (deleted, full, read-only)."""
    return isinstance(err, (OSError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
                            tf.errors.FailedPreconditionError))


class _Sink:
    """Serialized ``Event`` s into TensorFlow's own event-file writer."""

    def __init__(self, path: str):
        self._writer = tf.summary.create_file_writer(path)

    def write(self, event: bytes) -> None:
        tf.raw_ops.ImportEvent(writer=self._writer._resource, event=event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def event_sink(path: str) -> _Sink:
    return _Sink(path)



# -- processes of a multi-process job ---------------------------------------------------------

def _strategy(model=None):
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


def processes(model=None) -> tuple[int, int]:
    """``(count, index)`` of this process among the workers of the model's
    ``MultiWorkerMirroredStrategy`` (the chief first, as the strategy numbers them);
    ``(1, 0)`` under any other strategy (one process, whatever its replicas)."""
    strategy = _strategy(model)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1, 0
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if chiefs + workers <= 1:
        return 1, 0
    index = 0 if resolver.task_type == "chief" else chiefs + int(resolver.task_id or 0)
    return chiefs + workers, index


def all_gather(tree, model=None) -> list:
    """Every process's ``tree`` (NumPy arrays and numbers, the same structure and shapes
    on each), in process order: one collective ``all_gather`` of the model's strategy."""
    count, _ = processes(model)
    if count == 1:
        return [tree]
    strategy = _strategy(model)
    leaves = [tf.convert_to_tensor(x) for x in tf.nest.flatten(tree)]

    def gather(*xs):
        ctx = tf.distribute.get_replica_context()
        # (tf.identity places each input on this replica's device, which the collective needs)
        return [ctx.all_gather(tf.identity(x)[None], axis=0) for x in xs]

    out = tf.function(lambda: strategy.run(gather, args=leaves), autograph=False)()
    stacked = [strategy.experimental_local_results(t)[0].numpy() for t in out]
    per = stacked[0].shape[0] // count  # replicas per worker: each holds the same tree
    return [tf.nest.pack_sequence_as(tree, [s[i * per] for s in stacked]) for i in range(count)]
