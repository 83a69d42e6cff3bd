"""HistogramCallback: weights, gradients, activations, dead units, update ratios."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbviz
from eventfiles import load, scalars
from models import compile, data, functional_bn_nested, sequential

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts.
pytestmark = pytest.mark.numerics


def histogram(acc, tag, index=-1):
    """(step, buckets array [left, right, count]) of a tensor-stored histogram."""
    ev = acc.Tensors(tag)[index]
    return ev.step, tf.make_ndarray(ev.tensor_proto)


class WeightRecorder(keras.callbacks.Callback):
    """Independent record of the weights after every step."""

    def __init__(self):
        super().__init__()
        self.after = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.after[step] = [w.numpy().copy() for w in self.model.trainable_weights]


def test_every_weight_by_layer_and_values_match(tmp_path):
    model = compile(functional_bn_nested())
    x, y = data(32)
    cb = tbviz.HistogramCallback(str(tmp_path), every_n_epochs=1)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    acc = load(tmp_path / "train")
    tags = set(acc.Tags()["tensors"])
    expected = {"conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta", "bn1/moving_mean",
                "bn1/moving_variance", "block/inner_conv/kernel", "block/inner_conv/bias",
                "head/kernel", "head/bias"}
    assert expected <= tags
    # Two epochs of 4 steps: logged at global steps 4 and 8, last one equals final weights.
    steps = [e.step for e in acc.Tensors("head/kernel")]
    assert steps == [4, 8]
    step, buckets = histogram(acc, "head/kernel")
    w = model.get_layer("head").kernel.numpy()
    assert buckets[:, 2].sum() == pytest.approx(w.size)
    assert buckets[0, 0] == pytest.approx(w.min(), rel=1e-5)
    assert buckets[-1, 1] == pytest.approx(w.max(), rel=1e-5)


def test_probe_gradients_activations_and_dead_units(tmp_path):
    inp = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")
    out = keras.layers.Dense(1, name="out")(hidden(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: weights stay as set below
    kernel = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    bias = np.array([0.0, 0.0, -100.0, -100.0], "float32")  # units 2 and 3 are dead
    hidden.set_weights([kernel, bias])
    px = np.random.default_rng(2).random((5, 6)).astype("float32")
    py = np.random.default_rng(3).random((5, 1)).astype("float32")
    cb = tbviz.HistogramCallback(str(tmp_path), probe_data=(px, py))
    model.fit(px, py, epochs=1, batch_size=5, verbose=0, callbacks=[cb])
    acc = load(tmp_path / "train")

    # Independent gradient of the MSE w.r.t. every weight, by hand in NumPy.
    w1, b1 = hidden.get_weights()
    w2, b2 = model.get_layer("out").get_weights()
    pre = px @ w1 + b1
    h = np.maximum(pre, 0)
    pred = h @ w2 + b2
    d_pred = 2 * (pred - py) / pred.size
    g_w2, g_b2 = h.T @ d_pred, d_pred.sum(0)
    d_h = d_pred @ w2.T * (pre > 0)
    g_w1, g_b1 = px.T @ d_h, d_h.sum(0)
    norm_hidden = np.sqrt((g_w1 ** 2).sum() + (g_b1 ** 2).sum())
    norm_out = np.sqrt((g_w2 ** 2).sum() + (g_b2 ** 2).sum())
    assert scalars(tmp_path / "train", "gradient_norm/hidden")[-1][1] == pytest.approx(norm_hidden, rel=1e-4)
    assert scalars(tmp_path / "train", "gradient_norm/out")[-1][1] == pytest.approx(norm_out, rel=1e-4)
    _, gb = histogram(acc, "gradients/hidden/kernel")
    assert gb[:, 2].sum() == g_w1.size
    assert gb[0, 0] == pytest.approx(g_w1.min(), rel=1e-4, abs=1e-7)

    assert scalars(tmp_path / "train", "dead_units/hidden")[-1][1] == pytest.approx(0.5)
    zero = float((h == 0).mean())
    assert scalars(tmp_path / "train", "zero_fraction/hidden")[-1][1] == pytest.approx(zero)
    _, ab = histogram(acc, "activations/hidden")
    assert ab[:, 2].sum() == h.size and ab[-1, 1] == pytest.approx(h.max(), rel=1e-5)


def test_update_ratio_matches_recorded_weights(tmp_path):
    model = compile(sequential(), keras.optimizers.SGD(0.1))
    x, y = data(32)
    rec = WeightRecorder()
    cb = tbviz.HistogramCallback(str(tmp_path), every_n_epochs=None, every_n_steps=3)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False, callbacks=[rec, cb])
    got = scalars(tmp_path / "train", "update_ratio/conv1")
    assert [s for s, _ in got] == [3, 6]
    conv1 = {id(w) for w in model.get_layer("conv1").weights}
    idx = [i for i, w in enumerate(model.trainable_weights) if id(w) in conv1]
    assert len(idx) == 2
    for step, ratio in got:
        before = np.concatenate([rec.after[step - 1][i].ravel() for i in idx])
        after = np.concatenate([rec.after[step][i].ravel() for i in idx])
        expect = np.linalg.norm(after - before) / np.linalg.norm(before)
        assert ratio == pytest.approx(expect, rel=1e-4)


def test_probe_is_traced_once_and_does_not_change_reported_metrics(tmp_path):
    x, y = data(32)
    model_a = compile(functional_bn_nested())
    keras.utils.set_random_seed(7)
    hist_a = model_a.fit(x, y, epochs=5, batch_size=8, verbose=0, shuffle=False)
    keras.utils.set_random_seed(1234)
    model_b = compile(functional_bn_nested())
    keras.utils.set_random_seed(7)
    cb = tbviz.HistogramCallback(str(tmp_path), every_n_steps=2, probe_data=(x[:4], y[:4]))
    hist_b = model_b.fit(x, y, epochs=5, batch_size=8, verbose=0, shuffle=False, callbacks=[cb])
    assert cb._probe.traces == 1
    assert hist_a.history["loss"] == hist_b.history["loss"]
    for wa, wb in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_probe_data_of_wrong_shape_names_the_expected_shape(tmp_path):
    model = compile(sequential())
    x, y = data(8)
    cb = tbviz.HistogramCallback(str(tmp_path), probe_data=np.zeros((2, 10, 10, 3)))
    with pytest.raises(ValueError, match=r"expects \(N,\) \+ \(12, 12, 3\)"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])


def test_labels_missing_gives_activations_without_gradients(tmp_path, caplog):
    model = compile(sequential())
    x, y = data(8)
    cb = tbviz.HistogramCallback(str(tmp_path), probe_data=x[:2])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    tags = set(load(tmp_path / "train").Tags()["tensors"])
    assert "activations/conv1" in tags and not any(t.startswith("gradients/") for t in tags)
    assert "probe_data=(x, y)" in caplog.text


class Poison(keras.callbacks.Callback):
    """Puts a NaN and an Inf into the head's kernel at epoch end, before tbviz writes."""

    def on_epoch_end(self, epoch, logs=None):
        k = self.model.get_layer("head").kernel
        bad = k.numpy()
        bad[0, 0], bad[1, 1] = np.nan, np.inf
        k.assign(bad)


def test_non_finite_weights_are_skipped_and_counted(tmp_path):
    model = compile(sequential())
    x, y = data(8)
    cb = tbviz.HistogramCallback(str(tmp_path), probe_data=(x[:2], y[:2]))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[Poison(), cb])
    acc = load(tmp_path / "train")
    _, buckets = histogram(acc, "head/kernel")
    size = model.get_layer("head").kernel.numpy().size
    assert buckets[:, 2].sum() == size - 2
    assert scalars(tmp_path / "train", "nonfinite/head/kernel")[-1][1] == 2
    # The probe's activations of the head are all NaN now: logged as counted, not crashed.
    assert scalars(tmp_path / "train", "nonfinite/activations/head")[-1][1] > 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_frequency_arguments_are_validated(bad):
    with pytest.raises(ValueError, match="positive integer"):
        tbviz.HistogramCallback("runs/x", every_n_steps=bad)


@pytest.mark.parametrize("values", [np.random.default_rng(0).normal(size=1000),
                                    np.full(7, 3.0), np.arange(10.0), np.array([])])
def test_numpy_buckets_equal_tensorboards_own(values):
    from tensorboard.plugins.histogram.summary_v2 import histogram_pb

    from tbviz.summary.histograms import buckets

    ref = tf.make_ndarray(histogram_pb("t", values).value[0].tensor)
    np.testing.assert_allclose(buckets(values), ref)
