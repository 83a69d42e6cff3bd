"""Backward rules at activations: the deconvnet, guided backprop and the plain gradient.

Zeiler & Fergus' deconvnet, guided backpropagation and the saliency gradient differ
only in what the backward pass does at an activation (convolutions run their
transposed filters and max-pooling routes to the recorded argmax in all three,
which is just autodiff). So each method is autodiff with one swapped rule. With
``dy`` the signal arriving at ``y = f(x)`` and ``f'`` the activation's derivative
as TensorFlow computes it:

==========  ==================================  =========================================
rule        backward at ``y = f(x)``            where it comes from
==========  ==================================  =========================================
deconvnet   ``relu(dy)``                        Zeiler & Fergus 2013 (for ReLU)
guided      ``relu(dy) * max(f'(x), 0)``        Springenberg et al. 2014 (for ReLU)
gradient    ``dy * f'(x)``                      Simonyan et al. 2013 (saliency): autodiff
==========  ==================================  =========================================

At a ReLU (``f' = [x > 0]``) these are the papers' rules. The papers define them
for ReLU only; for the other activations tbviz takes the natural generalization:

* **deconvnet** rectifies the backward signal at each activation whatever the
  forward pass did. The deconvnet's reconstruction keeps no forward information
  at an activation (only the pooling switches), so a cap (``relu6``, ``max_value``),
  a threshold, a negative slope (``leaky_relu``, PReLU) or a smooth shape (GELU,
  SiLU, ELU...) changes nothing: ``relu(dy)`` everywhere.
* **guided** keeps the positive backward signal where the forward derivative lets
  it through: the deconvnet's ``relu(dy)`` times the gradient's ``f'(x)``. The
  derivative is kept as a weight rather than a 0/1 gate (``f'(x) > 0``), so a
  leaky or ELU unit's negative side passes only its small slope, as in the
  gradient; with a gate, guided would equal the deconvnet for every activation
  whose derivative is never 0 (ELU, softplus, leaky ReLU) and lose the forward
  information it exists to add. The weight is clipped at 0 so that, as for ReLU,
  no activation turns the kept positive signal negative (GELU, SiLU and Mish have
  ``f' < 0`` on part of their negative side, where the unit is mostly off). For
  ``relu6``, ``f' = [0 < x < 6]``: the cap closes the gate, as the gradient does.
* **gradient** is plain autodiff; nothing is swapped.

The rules act on the rectifiers, activations that pass large positive inputs
through and cut or shrink negative ones: :data:`RECTIFIERS` (``swish`` and
``hard_swish`` are Keras' aliases of ``silu`` and ``hard_silu``), the ``ReLU``
(any ``negative_slope``, ``max_value``, ``threshold``), ``LeakyReLU``, ``PReLU``
and ``ELU`` layers, ``Activation(...)`` of any of them, and ``functools.partial``
of them (``partial(gelu, approximate=True)``), in nested models too. Squashing
functions and gates (``sigmoid``, ``tanh``, ``softmax``, ``hard_sigmoid``; the
sigmoid of a squeeze-excitation block, an LSTM gate) keep the gradient: the
papers rectify what a ReLU rectifies, and a gate has nothing to rectify. The
rules are applied at two levels while a probe's ``tf.function`` is traced:

* Keras layers: each such layer's ``activation`` (or its ``call``, for the
  activation layers) is replaced by a ``tf.custom_gradient`` version for the
  duration of the trace and restored in ``finally`` (the model is never
  modified otherwise; training after a probe is bit-identical);
* raw TensorFlow ops written outside those layers (``tf.nn.relu`` in a subclassed
  model's ``call``): ``Relu``, ``Relu6``, ``LeakyRelu``, ``Elu``, ``Selu`` and
  ``Softplus`` ops get the rule by a gradient override.

:func:`rule_sites` says what a rule acted on, so a model without any such
activation is reported instead of shown as "deconvnet" (its deconvnet is the
plain gradient).

Grouped convolutions (``Conv2D(groups=g)``, ConvNeXt's depthwise-as-grouped
convolutions) have a gradient in TensorFlow only through XLA, and that one
cannot be vectorized over units on a CPU without oneDNN ("Gradients for grouped
convolutions are not supported on CPU"). Within a rule, their backward is the
exact gradient of the same convolution written as a depthwise convolution (one
group per channel) or one dense convolution per group; the forward values are
Keras' own.

Example:
    >>> import numpy as np, tensorflow as tf, keras
    >>> from tbviz.backward_rules import backward_rule, gradients
    >>> model = keras.Sequential([keras.Input((4,)),
    ...                           keras.layers.Dense(3, activation="gelu", name="mlp")])
    >>> @tf.function
    ... def backward(x):
    ...     with backward_rule("deconvnet", model):
    ...         y = model(x, training=False)
    ...     return gradients(tf.reduce_sum(y), x)
    >>> backward(tf.ones((1, 4))).shape
    TensorShape([1, 4])
    >>> rule_sites(model, "deconvnet")
    ('mlp (gelu)',)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref

import keras
import tensorflow as tf

from tbviz.layers import _walk

__all__ = ["RULES", "RECTIFIERS", "check_rule", "backward_rule", "rule_sites",
           "plain_gradient_note", "gradients"]

log = logging.getLogger(__name__)

RULES = ("deconvnet", "guided", "gradient")

#: Activation names (in ``keras.activations``, ``keras.ops``, ``tf.nn``, ``tf.math``) the
#: deconvnet and guided rules act on.
RECTIFIERS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
              "hard_silu", "hard_swish", "mish", "softplus", "squareplus", "sparse_plus",
              "threshold")

#: Keras layers whose ``call`` is a rectifier of its input.
RECTIFIER_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU,
                    keras.layers.ELU)

_SCOPE = "tbviz_rule"  # name scope of the forward ops inside a ruled activation


def _rectifier_names() -> dict:
    """``{id(function): name}`` of every spelling of the rectifiers."""
    names = {}
    for name in RECTIFIERS:
        for home in (keras.activations, keras.ops, tf.nn, tf.math):
            fn = getattr(home, name, None)
            if callable(fn):
                names.setdefault(id(fn), name)
    return names


_NAMES = _rectifier_names()


def _rectifier_name(fn) -> str | None:
    """The rectifier ``fn`` is (through ``functools.partial``), or None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return _NAMES.get(id(fn))


# -- the rules ----------------------------------------------------------------------------------

def _forward(f, x):
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


def _rule_backward(rule: str, dy, slope):
    """The signal ``rule`` sends back through an activation whose derivative is ``slope()``."""
    if rule == "deconvnet":
        return tf.nn.relu(dy)
    return tf.nn.relu(dy) * tf.nn.relu(slope())


def _ruled(fn, rule: str):
    """``fn`` (a pointwise activation of its first argument) with ``rule``'s backward."""
    def ruled(x, *args, **kwargs):
        x = tf.convert_to_tensor(x)

        @tf.custom_gradient
        def apply(t):
            with tf.name_scope(_SCOPE):
                if rule == "deconvnet":  # needs no derivative
                    y, slope = fn(t, *args, **kwargs), None
                else:
                    y, slope = _forward(lambda u: fn(u, *args, **kwargs), t)

            # ``variables``: a PReLU reads its slope inside; it gets no gradient from a rule.
            def backward(dy, variables=None):
                dx = _rule_backward(rule, dy, slope)
                return (dx, [None] * len(variables)) if variables else dx
            return y, backward
        return apply(x)
    return ruled


_RAW_OPS = {
    "Relu": lambda op: tf.nn.relu,
    "Relu6": lambda op: tf.nn.relu6,
    "LeakyRelu": lambda op: functools.partial(tf.nn.leaky_relu, alpha=op.get_attr("alpha")),
    "Elu": lambda op: tf.nn.elu,
    "Selu": lambda op: tf.nn.selu,
    "Softplus": lambda op: tf.math.softplus,
}


def _register_raw(rule: str, op_type: str) -> str:
    name = f"Tbviz{rule.capitalize()}{op_type}"

    @tf.RegisterGradient(name)
    def _grad(op, dy):
        return _rule_backward(rule, dy,
                              lambda: _forward(_RAW_OPS[op_type](op), op.inputs[0])[1]())
    return name


_OVERRIDES = {rule: {op_type: _register_raw(rule, op_type) for op_type in _RAW_OPS}
              for rule in ("deconvnet", "guided")}


# -- grouped convolutions -------------------------------------------------------------------------

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
        log.info("tbviz: model %r has %d grouped convolution(s) (%s); probes take their "
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


# -- the context ----------------------------------------------------------------------------------

def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`RULES`, else raise a ``ValueError``.

    >>> check_rule("guided")
    'guided'
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    return rule


_SITES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def rule_sites(model, rule: str) -> tuple[str, ...] | None:
    """What ``rule`` acted on in the probes of ``model`` traced so far, or None if none was.

    Layer paths with their activation (``"conv1 (relu)"``, ``"act (PReLU)"``) and
    raw ops (``"Relu op"``). An empty tuple means the traced probes met no
    activation the rule acts on, so they computed the plain gradient.

    >>> import keras
    >>> rule_sites(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), "guided") is None
    True
    """
    found = _SITES.get(model, {}).get(check_rule(rule))
    return None if found is None else tuple(found)


def plain_gradient_note(model, rule: str) -> str | None:
    """A sentence for captions when ``rule`` met no activation in ``model``'s probes, else None.

    Then the "deconvnet" or "guided" result is the plain gradient, and a panel
    must say so rather than show it under the rule's name.

    >>> import numpy as np, keras, tensorflow as tf
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name="linear_net")
    >>> @tf.function
    ... def probe(x):
    ...     with backward_rule("deconvnet", m):
    ...         return gradients(tf.reduce_sum(m(x)), x)
    >>> _ = probe(tf.ones((1, 2)))
    >>> print(plain_gradient_note(m, "deconvnet"))
    model 'linear_net' has no activation the rule 'deconvnet' acts on (...), so ... plain gradient
    """
    if rule == "gradient" or rule_sites(model, rule) != ():
        return None
    return (f"model {model.name!r} has no activation the rule {rule!r} acts on (no ReLU, GELU, "
            f"SiLU, ELU or other rectifier), so its {rule} result is the plain gradient")


def _swap(layer, name: str, value, swapped: list):
    had_own = name in layer.__dict__
    swapped.append((layer, name, getattr(layer, name), had_own))
    # object.__setattr__: skip Keras' attribute tracking, this is not state.
    object.__setattr__(layer, name, value)


@contextlib.contextmanager
def backward_rule(rule: str, model=None):
    """Within this block, the forward pass traced for ``model`` gets ``rule``'s backward.

    Must be entered while a ``tf.function`` is being traced, and the gradient must
    be taken with :func:`gradients` (symbolic ``tf.gradients``): an eager
    ``GradientTape`` looks gradients up by op type and would ignore raw-op rules.
    ``model`` (optional) names the model whose layers get the rule; without it,
    only raw ``Relu``-family ops do. Yields the list of sites the rule acted on,
    filled in as the model runs (see :func:`rule_sites`). Grouped convolutions of
    ``model`` get their exact per-group backward under every rule.
    """
    check_rule(rule)
    if tf.executing_eagerly():
        raise RuntimeError(
            "backward_rule() only works while tracing a tf.function; wrap the forward pass in "
            "@tf.function and take the gradient with tbviz.backward_rules.gradients()")
    graph = tf.compat.v1.get_default_graph()
    first_op = len(graph.get_operations())
    sites: list = []
    swapped: list = []
    try:
        seen, grouped = set(), []
        for path, layer in (_walk(model) if model is not None else ()):
            # An unbuilt layer may create sub-layers from its activation during the trace;
            # they would keep the swapped function, so it is left to the raw-op rule.
            if id(layer) in seen or not layer.built:
                continue
            seen.add(id(layer))
            if _is_grouped(layer):
                _swap(layer, "convolution_op", _grouped_conv(layer), swapped)
                grouped.append(path)
            if rule == "gradient":
                continue
            if isinstance(layer, RECTIFIER_LAYERS):
                _swap(layer, "call", _counted(_ruled(layer.call, rule), sites,
                                              f"{path} ({type(layer).__name__})"), swapped)
            name = _rectifier_name(getattr(layer, "activation", None))
            if name is not None:
                _swap(layer, "activation", _counted(_ruled(layer.activation, rule), sites,
                                                    f"{path} ({name})"), swapped)
        _tell_grouped(model, grouped)
        if rule == "gradient":
            yield sites
        else:
            with graph.gradient_override_map(_OVERRIDES[rule]):
                yield sites
            raw = [op.type for op in graph.get_operations()[first_op:]
                   if op.type in _RAW_OPS and not any(part.startswith(_SCOPE)
                                                      for part in op.name.split("/"))]
            sites.extend(f"{t} op" for t in dict.fromkeys(raw))
        if model is not None:
            found = _SITES.setdefault(model, {}).setdefault(rule, {})  # a dict keeps the order
            found.update(dict.fromkeys(sites))
    finally:
        for layer, name, original, had_own in reversed(swapped):
            if had_own:
                object.__setattr__(layer, name, original)
            else:
                object.__delattr__(layer, name)


def _counted(fn, sites: list, label: str):
    """``fn`` that notes ``label`` in ``sites`` the first time it runs."""
    def counted(*args, **kwargs):
        if label not in sites:
            sites.append(label)
        return fn(*args, **kwargs)
    return counted


def gradients(target, sources):
    """Symbolic gradient of ``target`` w.r.t. ``sources`` honouring :func:`backward_rule`.

    ``sources`` may be one tensor or a list; the result has the same structure,
    with zeros where ``target`` does not depend on a source.
    """
    single = not isinstance(sources, (list, tuple))
    srcs = [sources] if single else list(sources)
    grads = tf.gradients(target, srcs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grads[0] if single else grads
