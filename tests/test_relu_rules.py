"""The three backward rules at ReLU and ReLU6, against NumPy written by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbviz.relu_rules import gradients, relu_rule

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts.
pytestmark = pytest.mark.numerics


def net(activation):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              activation, keras.layers.Dense(1, name="d2")])
    rng = np.random.default_rng(0)
    model.get_layer("d1").set_weights([rng.normal(size=(5, 4)) * 3, rng.normal(size=4)])
    model.get_layer("d2").set_weights([rng.normal(size=(4, 1)), np.zeros(1)])
    return model


def backward(model, x, rule):
    @tf.function
    def f(x):
        with relu_rule(rule):
            y = model(x, training=False)
        return gradients(tf.reduce_sum(y), x)
    return f(tf.constant(x)).numpy()


@pytest.mark.parametrize("activation,cap", [(keras.layers.ReLU(), None),
                                            (keras.layers.Activation("relu"), None),
                                            (keras.layers.ReLU(max_value=6.0), 6.0)])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_rules_match_numpy(activation, cap, rule):
    model = net(activation)
    x = np.random.default_rng(1).normal(size=(3, 5)).astype("float32") * 2
    w1, b1 = model.get_layer("d1").get_weights()
    w2, _ = model.get_layer("d2").get_weights()
    pre = x @ w1 + b1
    dy = np.tile(w2[:, 0], (3, 1))  # d(sum y)/d(activation output)
    live = (pre > 0) & (pre < cap) if cap else pre > 0
    if rule == "deconvnet":
        dpre = np.maximum(dy, 0)
    elif rule == "guided":
        dpre = np.maximum(dy, 0) * live
    else:
        dpre = dy * live
    expect = dpre @ w1.T
    np.testing.assert_allclose(backward(model, x, rule), expect, rtol=1e-5, atol=1e-6)


def test_rule_outside_a_traced_function_is_refused():
    with pytest.raises(RuntimeError, match="tf.function"):
        with relu_rule("deconvnet"):
            pass


def test_unknown_rule_lists_the_rules():
    with pytest.raises(ValueError, match="deconvnet, guided, gradient"):
        with relu_rule("zeiler"):
            pass
