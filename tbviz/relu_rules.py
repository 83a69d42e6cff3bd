"""Backward rules for ReLU: the deconvnet, guided backprop and the plain gradient.

Zeiler & Fergus' deconvnet, guided backpropagation and the saliency gradient differ
only in what the backward pass does at a ReLU (conv layers run their transposed
filters and max-pooling routes to the recorded argmax in all three, which is just
autodiff). So each method is autodiff with one swapped rule:

==========  ================================  ===============================
rule        backward at ``y = relu(x)``       literature
==========  ================================  ===============================
deconvnet   ``relu(dy)``                      Zeiler & Fergus 2013
guided      ``relu(dy) * (x > 0)``            Springenberg et al. 2014
gradient    ``dy * (x > 0)``                  Simonyan et al. 2013 (saliency)
==========  ================================  ===============================

The rule is applied to every ``Relu`` (and ``Relu6``, gated at both ends) op in
the graph being traced, however the model wrote it (``activation="relu"``, ``keras.layers.ReLU``,
``Activation("relu")``, inside nested models). It only exists while a
``tf.function`` is being traced: the traced graph reads the live weights, so a
probe is traced once and the model itself is never modified.

Example:
    >>> import numpy as np, tensorflow as tf, keras
    >>> from tbviz.relu_rules import relu_rule, gradients
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
    >>> @tf.function
    ... def backward(x):
    ...     with relu_rule("deconvnet"):
    ...         y = model(x, training=False)
    ...     return gradients(tf.reduce_sum(y), x)
    >>> backward(tf.ones((1, 4))).shape
    TensorShape([1, 4])
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

RULES = ("deconvnet", "guided", "gradient")

_OVERRIDE = {"deconvnet": "TbvizDeconvnetRelu", "guided": "TbvizGuidedRelu"}
_OVERRIDE6 = {"deconvnet": "TbvizDeconvnetRelu", "guided": "TbvizGuidedRelu6"}


@tf.RegisterGradient(_OVERRIDE["deconvnet"])
def _deconvnet_relu_grad(op, dy):
    # The signal is rectified on its way back; the forward activation is ignored.
    return tf.nn.relu(dy)


@tf.RegisterGradient(_OVERRIDE["guided"])
def _guided_relu_grad(op, dy):
    # Both gates: the forward one (x > 0) and the deconvnet's (dy > 0).
    return tf.nn.relu(dy) * tf.cast(op.outputs[0] > 0, dy.dtype)


@tf.RegisterGradient("TbvizGuidedRelu6")
def _guided_relu6_grad(op, dy):
    # ReLU6 (MobileNet) passes gradient only where 0 < x < 6; guided adds dy > 0.
    y = op.outputs[0]
    return tf.nn.relu(dy) * tf.cast((y > 0) & (y < 6), dy.dtype)


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`RULES`, else raise a ``ValueError``.

    >>> check_rule("guided")
    'guided'
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    return rule


@contextlib.contextmanager
def relu_rule(rule: str):
    """Within this context, ``Relu`` ops created in the current graph use ``rule`` backward.

    Must be entered while a ``tf.function`` is being traced, and the gradient
    must be taken with :func:`gradients` (symbolic ``tf.gradients``): an eager
    ``GradientTape`` looks gradients up by op type and would ignore the rule.
    """
    check_rule(rule)
    if rule == "gradient":
        yield
        return
    if tf.executing_eagerly():
        raise RuntimeError(
            "relu_rule() only works while tracing a tf.function; wrap the forward pass in "
            "@tf.function and take the gradient with tbviz.relu_rules.gradients()"
        )
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({"Relu": _OVERRIDE[rule], "Relu6": _OVERRIDE6[rule]}):
        yield


def gradients(target, sources):
    """Symbolic gradient of ``target`` w.r.t. ``sources`` honouring :func:`relu_rule`.

    ``sources`` may be one tensor or a list; the result has the same structure,
    with zeros where ``target`` does not depend on a source.
    """
    single = not isinstance(sources, (list, tuple))
    srcs = [sources] if single else list(sources)
    grads = tf.gradients(target, srcs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grads[0] if single else grads
