"""The three backward rules at every rectifier Keras offers, against NumPy written by hand.

Each model is Dense(5 -> 4) -> activation -> Dense(4 -> 1), so the signal arriving at the
activation is the second kernel's column, ``dy``, and the projection to the input is
``rule(dy, f'(pre)) @ w1.T``. The derivatives ``f'`` below are written from each
activation's formula, independently of the backend's autodiff; the ``gradient`` rule
checks them against it, and the other two rules check tbviz's definitions. On every backend.
"""

import doctest
import functools
import math

import keras
import numpy as np
import pytest

from tbviz import backend, backward_rules
from tbviz.core.backward_rules import backward_rule, rule_sites

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts. Backend-neutral: run on JAX and PyTorch too.
pytestmark = [pytest.mark.numerics, pytest.mark.backends]

L = keras.layers
SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772
PRELU_ALPHA = np.array([0.25, -0.5, 0.1, 0.7])  # one negative slope: guided clips it at 0
W2 = np.array([[1.0], [-1.0], [0.5], [-2.0]])  # dy at the activation, both signs


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def gelu_exact_slope(x):
    phi = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return cdf + x * phi


def gelu_tanh_slope(x):
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2)


def mish_slope(x):
    t = np.tanh(np.log1p(np.exp(x)))
    return t + x * (1 - t ** 2) * sigmoid(x)


# name -> (activation layer, f'(x) in NumPy)
CASES = {
    "relu": (lambda: L.Activation("relu"), lambda x: (x > 0) * 1.0),
    "relu6": (lambda: L.Activation("relu6"), lambda x: ((x > 0) & (x < 6)) * 1.0),
    "leaky_relu": (lambda: L.Activation("leaky_relu"), lambda x: np.where(x > 0, 1, 0.2)),
    "elu": (lambda: L.Activation("elu"), lambda x: np.where(x > 0, 1, np.exp(x))),
    "selu": (lambda: L.Activation("selu"),
             lambda x: SELU_SCALE * np.where(x > 0, 1, SELU_ALPHA * np.exp(x))),
    "celu": (lambda: L.Activation("celu"), lambda x: np.where(x > 0, 1, np.exp(x))),
    "gelu": (lambda: L.Activation("gelu"), gelu_exact_slope),
    "gelu_tanh": (lambda: L.Activation(functools.partial(keras.activations.gelu,
                                                         approximate=True)), gelu_tanh_slope),
    "silu": (lambda: L.Activation("silu"), lambda x: sigmoid(x) * (1 + x * (1 - sigmoid(x)))),
    "swish": (lambda: L.Activation("swish"), lambda x: sigmoid(x) * (1 + x * (1 - sigmoid(x)))),
    "hard_silu": (lambda: L.Activation("hard_swish"),
                  lambda x: np.where(x < -3, 0, np.where(x > 3, 1, (2 * x + 3) / 6))),
    "mish": (lambda: L.Activation("mish"), mish_slope),
    "softplus": (lambda: L.Activation("softplus"), sigmoid),
    "squareplus": (lambda: L.Activation("squareplus"), lambda x: (1 + x / np.sqrt(x ** 2 + 4)) / 2),
    "sparse_plus": (lambda: L.Activation("sparse_plus"),
                    lambda x: np.where(x <= -1, 0, np.where(x >= 1, 1, (x + 1) / 2))),
    "threshold": (lambda: L.Activation(functools.partial(keras.activations.threshold,
                                                         threshold=0.5, default_value=0.0)),
                  lambda x: (x > 0.5) * 1.0),
    "ReLU": (lambda: L.ReLU(), lambda x: (x > 0) * 1.0),
    "ReLU(6)": (lambda: L.ReLU(max_value=6.0), lambda x: ((x > 0) & (x < 6)) * 1.0),
    "ReLU(slope,cap,threshold)": (
        lambda: L.ReLU(negative_slope=0.1, max_value=4.0, threshold=0.5),
        lambda x: ((x > 0.5) & (x < 4)) + 0.1 * (x < 0.5)),
    "LeakyReLU": (lambda: L.LeakyReLU(negative_slope=0.3), lambda x: np.where(x > 0, 1, 0.3)),
    "PReLU": (lambda: L.PReLU(), lambda x: np.where(x > 0, 1, PRELU_ALPHA)),
    "ELU": (lambda: L.ELU(alpha=0.5), lambda x: np.where(x > 0, 1, 0.5 * np.exp(x))),
}


def expected(rule, slope, dy):
    if rule == "deconvnet":
        return np.maximum(dy, 0)
    if rule == "guided":
        return np.maximum(dy, 0) * np.maximum(slope, 0)
    return dy * slope


def net(activation, nested=False):
    inner = [L.Dense(4, name="d1"), activation]
    body = [keras.Sequential(inner, name="block")] if nested else inner
    model = keras.Sequential([keras.Input((5,))] + body + [L.Dense(1, name="d2")])
    model(np.zeros((1, 5), "float32"))
    rng = np.random.default_rng(0)
    d1 = model.get_layer("block").get_layer("d1") if nested else model.get_layer("d1")
    d1.set_weights([rng.normal(size=(5, 4)) * 1.5, rng.normal(size=4)])
    model.get_layer("d2").set_weights([W2, np.zeros(1)])
    if isinstance(activation, L.PReLU):
        activation.set_weights([PRELU_ALPHA])
    return model, d1


def backward(model, x, rule):
    def f(x):
        def forward(t):
            with backward_rule(rule, model):
                return model(t, training=False)
        y, pullback = backend.vjp(forward, x)
        return pullback(keras.ops.ones_like(y))[0]
    return backend.numpy(backend.function(f, [model])(x))


def inputs():
    # Pre-activations spread over about +-15: every region of every activation is hit
    # (below -3 and within +-3 for hard_silu, above 6 for relu6...).
    return np.random.default_rng(1).normal(size=(16, 5)).astype("float32") * 2


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_activation_follows_the_rule(name, rule):
    make, slope = CASES[name]
    model, d1 = net(make(), nested=name in ("gelu", "PReLU"))
    x = inputs()
    w1, b1 = d1.get_weights()
    pre = x.astype(np.float64) @ w1 + b1
    dy = np.tile(W2[:, 0], (len(x), 1))
    want = expected(rule, slope(pre), dy) @ w1.T
    # float32 forward and backward through two small matmuls and one transcendental each:
    # relative errors of a few ulps on values of order 10.
    np.testing.assert_allclose(backward(model, x, rule), want, rtol=1e-5, atol=1e-5)


def test_the_rules_name_what_they_acted_on():
    model, _ = net(L.Activation("gelu", name="act"), nested=True)
    assert rule_sites(model, "guided") is None  # nothing traced yet
    backward(model, inputs(), "guided")
    assert rule_sites(model, "guided") == ("block/act (gelu)",)
    plain = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="sigmoid"), L.Dense(1)])
    backward(plain, inputs(), "deconvnet")
    assert rule_sites(plain, "deconvnet") == ()  # a gate is not a rectifier


class RawOps(keras.Model):
    """A subclassed model applying a raw rectifier between its Dense layers (``keras.ops``: a
    TensorFlow op, a ``jax.nn`` or ``torch.nn.functional`` call)."""

    def __init__(self, op):
        super().__init__()
        self.d1, self.d2, self.op = L.Dense(4), L.Dense(1), op

    def call(self, x):
        return self.d2(self.op(self.d1(x)))


RAW = {
    "Relu": (keras.ops.relu, lambda x: (x > 0) * 1.0),
    "Relu6": (keras.ops.relu6, lambda x: ((x > 0) & (x < 6)) * 1.0),
    "LeakyRelu": (lambda t: keras.ops.leaky_relu(t, negative_slope=0.1),
                  lambda x: np.where(x > 0, 1, 0.1)),
    "Elu": (keras.ops.elu, lambda x: np.where(x > 0, 1, np.exp(x))),
    "Selu": (keras.ops.selu, lambda x: SELU_SCALE * np.where(x > 0, 1, SELU_ALPHA * np.exp(x))),
    "Softplus": (keras.ops.softplus, sigmoid),
    # Written out of several ops on TensorFlow: its tf.nn function is ruled instead.
    "gelu": (lambda t: keras.ops.gelu(t, approximate=False), gelu_exact_slope),
    "silu": (keras.ops.silu, lambda x: sigmoid(x) * (1 + x * (1 - sigmoid(x)))),
}


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("op_type", list(RAW))
def test_raw_ops_in_a_subclassed_model_follow_the_rule(op_type, rule):
    op, slope = RAW[op_type]
    model = RawOps(op)
    model(np.zeros((1, 5), "float32"))
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(5, 4)) * 1.5, rng.normal(size=4)
    model.d1.set_weights([w1, b1])
    model.d2.set_weights([W2, np.zeros(1)])
    x = inputs()
    pre = x.astype(np.float64) @ w1 + b1
    want = expected(rule, slope(pre), np.tile(W2[:, 0], (len(x), 1))) @ w1.T
    np.testing.assert_allclose(backward(model, x, rule), want, rtol=1e-5, atol=1e-5)
    if rule != "gradient":  # the op on TensorFlow, the function elsewhere, named once
        (site,) = rule_sites(model, rule)
        assert site.endswith((" op", " call")), site


def test_model_is_restored_even_when_the_trace_fails():
    model = keras.Sequential([keras.Input((6, 6, 4)), L.Conv2D(4, 3, groups=2, activation="gelu"),
                              L.PReLU(), L.Activation("silu")])
    model(np.zeros((1, 6, 6, 4), "float32"))
    before = [dict(layer.__dict__) for layer in model.layers]

    def f(x):
        with backward_rule("guided", model):
            model(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        backend.function(f, [model])(np.zeros((1, 6, 6, 4), "float32"))
    for layer, old in zip(model.layers, before):
        assert layer.__dict__.keys() == old.keys()
        assert all(layer.__dict__[k] is v for k, v in old.items())


@pytest.mark.skipif(backend.name != "tensorflow", reason="eager JAX and PyTorch take rules")
def test_rule_outside_a_probe_is_refused_on_tensorflow():
    with pytest.raises(RuntimeError, match="inside a probe"):
        with backward_rule("deconvnet"):
            pass


def test_unknown_rule_lists_the_rules():
    with pytest.raises(ValueError, match="deconvnet, guided, gradient"):
        with backward_rule("zeiler"):
            pass


def test_docstring_examples_run():
    result = doctest.testmod(backward_rules, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow  # about 30 s on 2 cores: XLA-compiled grouped convolutions and two fits
def test_training_after_probes_under_every_rule_is_bit_identical():
    from tbviz import attribution, deconvnet

    def make():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([
            keras.Input((8, 8, 4)),
            L.Conv2D(4, 3, groups=2, padding="same", activation="gelu", name="grouped"),
            L.PReLU(name="prelu"), L.Conv2D(4, 3, groups=4, name="depthwise"),
            L.Activation("swish", name="swish"), L.ELU(name="elu"),
            L.GlobalAveragePooling2D(), L.Dense(2, name="head")])
        m.compile(keras.optimizers.SGD(0.1), "mse")
        return m

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 8, 8, 4)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    probed, plain = make(), make()
    for rule in ("deconvnet", "guided", "gradient"):
        units = deconvnet.strongest(probed, x[:2], "elu", k=3)
        deconvnet.project(probed, x[:2], "elu", units, rule=rule)
    attribution.guided_backprop(probed, x[:2], target=0)
    for m in (probed, plain):
        m.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(probed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_rules_under_mixed_precision_match_float32(rule):
    def build():
        model, _ = net(L.PReLU(), nested=True)
        return model

    reference = build()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = inputs()
    got, want = backward(mixed, x, rule), backward(reference, x, rule)
    # float16 forward and backward: 11-bit mantissas, a few roundings on values of order 10.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
