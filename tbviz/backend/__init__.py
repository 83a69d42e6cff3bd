"""The backend seam: the one place where tbviz differs between TensorFlow, JAX and PyTorch.

Keras 3 runs one model on any of three backends; ``keras.ops`` covers the tensor math on
all of them. What it does not cover lives here, one module per backend with the same
names in each (as Keras itself does it in ``keras/src/backend/<name>/``):

=======================  =====================================================================
name                     what it does
=======================  =====================================================================
``function(fn, models)``  compile a probe that reads the models' live weights (``tf.function``;
                          ``jax.jit`` with the weights passed in; plain eager PyTorch)
``vjp(f, *primals)``      ``(outputs, pullback)``: the vector-Jacobian product of ``f``, honouring
                          the activation rules entered while ``f`` ran
``pullback_batched``      one pullback for many cotangents at once (``tf.vectorized_map``,
                          ``jax.vmap``, PyTorch's ``is_grads_batched``)
``variable_gradients``    the gradient of a loss w.r.t. variables (histograms)
``ruled(fn, backward)``   the activation-rule hook: ``fn`` with a backward of our own
``raw_rules(rule)``       rules at rectifier ops written outside any layer (where it can)
``backward_fixes(layer)`` a layer's exact gradient where the backend's own fails in probes
``op_graph(...)``         the op-level graph as a TensorBoard ``GraphDef``
``is_chief(model)``       whether this process writes summaries
``processes(model)``      ``(count, index)`` of this process in a multi-process job
``all_gather(tree)``      every process's ``tree`` of NumPy arrays, in process order
``is_out_of_memory(e)``   whether an exception is the device running out of memory
``is_file_error(e)``      whether it is the file system (a log directory deleted, full, ...)
``event_sink(path)``      an event-file writer: TensorFlow's own, else tensorboardX's
=======================  =====================================================================

Nothing outside ``tbviz/backend/`` imports TensorFlow, JAX or PyTorch: every other module
reaches them through this seam, and imports it lazily enough that TensorBoard's server
(which imports the dashboard plugin) loads none of them. Which backend is Keras' own
choice (``KERAS_BACKEND``, ``~/.keras/keras.json``), read once at first use.

Example:
    >>> import numpy as np, keras
    >>> from tbviz import backend
    >>> backend.name in ("tensorflow", "jax", "torch")
    True
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> def input_gradient(x):
    ...     y, pullback = backend.vjp(lambda t: model(t, training=False), x)
    ...     return pullback(keras.ops.ones_like(y))[0]
    >>> probe = backend.function(input_gradient, models=[model])
    >>> backend.numpy(probe(np.ones((4, 3), "float32"))).shape
    (4, 3)
"""

from __future__ import annotations

import importlib

import keras

#: The Keras backend tbviz runs on: ``"tensorflow"``, ``"jax"`` or ``"torch"``.
name = keras.backend.backend()

_SUPPORTED = ("tensorflow", "jax", "torch")
if name not in _SUPPORTED:
    raise ImportError(f"tbviz runs on the Keras backends {', '.join(_SUPPORTED)}; this Keras "
                      f"uses {name!r} (set KERAS_BACKEND to one of them)")

_impl = importlib.import_module(f"tbviz.backend.{name}")

function = _impl.function
vjp = _impl.vjp
pullback_batched = _impl.pullback_batched
batch_refusals = _impl.batch_refusals
variable_gradients = _impl.variable_gradients
ruled = _impl.ruled
raw_rules = _impl.raw_rules
backward_fixes = _impl.backward_fixes
tell_fixed = _impl.tell_fixed
ACTIVATION_MODULES = _impl.ACTIVATION_MODULES
tracing = _impl.tracing
op_graph = _impl.op_graph
is_chief = _impl.is_chief
processes = _impl.processes
all_gather = _impl.all_gather
is_out_of_memory = _impl.is_out_of_memory
is_file_error = _impl.is_file_error
event_sink = _impl.event_sink
Spec = _impl.Spec
#: Whether one forward pass can serve many cotangents at once (:func:`pullback_batched`).
CAN_BATCH_PULLBACKS = _impl.CAN_BATCH_PULLBACKS


def numpy(tree):
    """Every tensor in ``tree`` (a tensor, list, tuple or dict of them) as a NumPy array.

    >>> numpy({"a": keras.ops.ones((2,))})["a"].tolist()
    [1.0, 1.0]
    """
    return keras.tree.map_structure(
        lambda t: t if t is None else keras.ops.convert_to_numpy(t), tree)
