"""Backward rules at activations: the deconvnet, guided backprop and the plain gradient.

Zeiler & Fergus' deconvnet, guided backpropagation and the saliency gradient differ
only in what the backward pass does at an activation (convolutions run their
transposed filters and max-pooling routes to the recorded argmax in all three,
which is just autodiff). So each method is autodiff with one swapped rule. With
``dy`` the signal arriving at ``y = f(x)`` and ``f'`` the activation's derivative
as the backend computes it:

==========  ==================================  =========================================
rule        backward at ``y = f(x)``            where it comes from
==========  ==================================  =========================================
deconvnet   ``relu(dy)``                        Zeiler & Fergus 2013 (for ReLU)
guided      ``relu(dy) * max(f'(x), 0)``        Springenberg et al. 2014 (for ReLU)
gradient    ``dy * f'(x)``                      Simonyan et al. 2013 (saliency): autodiff
redirected  ``dy * f'(x)``; in an image whose       Olah et al. 2017 (Lucid's
            units all shut that signal out:         ``redirected_relu_grad``), for
            ``dy * f'(x)`` where ``f'(x) > 0``,     synthesis: a start image on which
            ``relu(dy)`` where the unit is shut     a layer is silent still moves
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
rules are applied at two levels while a probe runs (is traced, on TensorFlow and JAX),
on every backend through the activation-rule hook of :mod:`tbviz.backend`:

* Keras layers: each such layer's ``activation`` (or its ``call``, for the
  activation layers) is replaced by a version with the rule's backward
  (``tf.custom_gradient``, ``jax.custom_vjp``, a ``torch.autograd.Function``) for the
  duration of the block and restored in ``finally`` (the model is never modified
  otherwise; training after a probe is bit-identical);
* rectifiers written outside those layers (``keras.ops.relu`` in a subclassed
  model's ``call``): on TensorFlow the ``Relu``, ``Relu6``, ``LeakyRelu``, ``Elu``,
  ``Selu`` and ``Softplus`` ops get the rule by a gradient override; on JAX and
  PyTorch calls of the ``jax.nn`` / ``torch.nn.functional`` rectifiers (which
  ``keras.ops`` uses) are wrapped while the block runs. A rectifier written out of
  primitives (``maximum(x, 0)``) keeps its gradient on JAX and PyTorch.

:func:`rule_sites` says what a rule acted on, so a model without any such
activation is reported instead of shown as "deconvnet" (its deconvnet is the
plain gradient).

Where a backend's own gradient of a layer fails inside a probe (TensorFlow's grouped
convolutions, see :func:`tbviz.backend.tensorflow.backward_fixes`), the backend swaps in
an exact one for the block too.

Example:
    >>> import numpy as np, keras
    >>> from tbviz import backend
    >>> from tbviz.core.backward_rules import backward_rule, rule_sites
    >>> model = keras.Sequential([keras.Input((4,)),
    ...                           keras.layers.Dense(3, activation="gelu", name="mlp")])
    >>> def deconvnet(x):
    ...     def forward(t):
    ...         with backward_rule("deconvnet", model):
    ...             return model(t, training=False)
    ...     y, pullback = backend.vjp(forward, x)
    ...     return pullback(keras.ops.ones_like(y))[0]
    >>> backend.numpy(backend.function(deconvnet, [model])(np.ones((1, 4), "float32"))).shape
    (1, 4)
    >>> rule_sites(model, "deconvnet")
    ('mlp (gelu)',)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref

import keras

from tbviz import backend
from tbviz.core.layers import Swaps, _walk

__all__ = ["RULES", "RECTIFIERS", "check_rule", "backward_rule", "rule_sites",
           "plain_gradient_note"]

log = logging.getLogger(__name__)

RULES = ("deconvnet", "guided", "gradient", "redirected")

#: Activation names (in ``keras.activations``, ``keras.ops`` and the backend's own modules,
#: ``tf.nn``, ``jax.nn``, ``torch.nn.functional``) the deconvnet and guided rules act on.
RECTIFIERS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
              "hard_silu", "hard_swish", "mish", "softplus", "squareplus", "sparse_plus",
              "threshold")

#: Keras layers whose ``call`` is a rectifier of its input.
RECTIFIER_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU,
                    keras.layers.ELU)


def _rectifier_names() -> dict:
    """``{id(function): name}`` of every spelling of the rectifiers."""
    names = {}
    for name in RECTIFIERS:
        for home in (keras.activations, keras.ops) + backend.ACTIVATION_MODULES:
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

def rule_backward(rule: str):
    """``backward(dy, slope)``: the signal ``rule`` sends back through an activation whose
    derivative is ``slope()``.

    >>> import numpy as np
    >>> dy = keras.ops.convert_to_tensor(np.array([-1.0, 2.0], "float32"))
    >>> keras.ops.convert_to_numpy(rule_backward("deconvnet")(dy, None)).tolist()
    [0.0, 2.0]
    """
    def backward(dy, slope):
        if rule == "deconvnet":
            return keras.ops.relu(dy)
        if rule == "redirected":
            return _redirected(dy, slope())
        return keras.ops.relu(dy) * keras.ops.relu(slope())
    return backward


def _redirected(dy, s):
    """Lucid's redirected gradient (ascent sign): the gradient, unless it is zero for a whole
    image (every unit shut); then also the signal that would open a shut unit."""
    passed = dy * s
    opening = keras.ops.where(s > 0, passed, keras.ops.relu(dy))
    axes = list(range(1, len(passed.shape)))
    magnitude = keras.ops.abs(passed)
    if axes:
        magnitude = keras.ops.sum(magnitude, axis=axes, keepdims=True)
    return keras.ops.where(magnitude > 0, passed, opening)


def _ruled(fn, rule: str):
    """``fn`` (a pointwise activation of its first argument) with ``rule``'s backward."""
    return backend.ruled(fn, rule_backward(rule), needs_slope=rule != "deconvnet")


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
#: Per model and rule, rectifiers the backend could see but not rule (none so far).
_MISSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name="linear_net")
    >>> def probe(x):
    ...     with backward_rule("deconvnet", m):
    ...         return m(x, training=False)
    >>> _ = backend.function(probe, [m])(np.ones((1, 2), "float32"))
    >>> print(plain_gradient_note(m, "deconvnet"))
    model 'linear_net' has no activation the rule 'deconvnet' acts on (...), so ... plain gradient
    """
    if rule == "gradient" or rule_sites(model, rule) != ():
        return None
    return (f"model {model.name!r} has no activation the rule {rule!r} acts on (no ReLU, GELU, "
            f"SiLU, ELU or other rectifier), so its {rule} result is the plain gradient")


@contextlib.contextmanager
def backward_rule(rule: str, model=None):
    """Within this block, the forward pass run for ``model`` gets ``rule``'s backward.

    Enter it inside a probe (:func:`tbviz.backend.function`) around the forward pass, and
    take the gradient with :func:`tbviz.backend.vjp`. ``model`` (optional) names the model
    whose layers get the rule; without it, only rectifiers written outside layers do.
    Yields the list of sites the rule acted on, filled in as the model runs (see
    :func:`rule_sites`). Layers whose backend gradient needs a fix inside probes get it
    under every rule (TensorFlow's grouped convolutions).
    """
    check_rule(rule)
    if not backend.tracing():
        raise RuntimeError(
            "backward_rule() only works inside a probe: wrap the function in "
            "tbviz.backend.function(...) and take the gradient with tbviz.backend.vjp()")
    sites: list = []
    swaps = Swaps()
    try:
        seen, fixed = set(), []
        for path, layer in (_walk(model) if model is not None else ()):
            # An unbuilt layer may create sub-layers from its activation during the trace;
            # they would keep the swapped function, so it is left to the raw-op rule.
            if id(layer) in seen or not layer.built:
                continue
            seen.add(id(layer))
            fixes = backend.backward_fixes(layer)
            for name, value in fixes.items():
                swaps.set(layer, name, value)
            if fixes:
                fixed.append(path)
            if rule == "gradient":
                continue
            if isinstance(layer, RECTIFIER_LAYERS):
                swaps.set(layer, "call", _counted(_ruled(layer.call, rule), sites,
                                                  f"{path} ({type(layer).__name__})"))
            name = _rectifier_name(getattr(layer, "activation", None))
            if name is not None:
                swaps.set(layer, "activation", _counted(_ruled(layer.activation, rule), sites,
                                                        f"{path} ({name})"))
        if model is not None:
            backend.tell_fixed(model, fixed)
        if rule == "gradient":
            yield sites
        else:
            with backend.raw_rules(rule, rule_backward(rule)) as raw:
                yield sites
            sites.extend(raw["ruled"])
            missed = list(raw["missed"])
            if missed and model is not None:
                _MISSED.setdefault(model, {}).setdefault(rule, {}).update(dict.fromkeys(missed))
        if model is not None:
            found = _SITES.setdefault(model, {}).setdefault(rule, {})  # a dict keeps the order
            found.update(dict.fromkeys(sites))
    finally:
        swaps.restore()


def _counted(fn, sites: list, label: str):
    """``fn`` that notes ``label`` in ``sites`` the first time it runs."""
    def counted(*args, **kwargs):
        if label not in sites:
            sites.append(label)
        return fn(*args, **kwargs)
    return counted
