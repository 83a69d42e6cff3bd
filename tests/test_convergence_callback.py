"""ConvergenceCallback: scalars read back with TensorBoard's readers and recomputed independently.

The reference records each watched layer's activations through a Keras sub-model
(``keras.Model(inputs, layer.output)``, not tbviz's capture) at the same moments as
the callback, and computes CKA from the papers' formulas in test_cka (float64, the
explicit centering matrix / Song et al.'s unbiased HSIC).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import eventfiles
import models
import plugin_logs
from test_cka import hsic_biased, hsic_unbiased, reference_cka
from test_plugin_routes import make_client
from tbviz.callbacks.convergence import ConvergenceCallback
from tbviz.callbacks.losses import LossCallback
from tbviz.callbacks.tensorboard_viz import TensorBoardViz

# The callback's Gram matrices are float32 on the device (products of ~600 features);
# their relative rounding (~1e-6) moves a CKA near 1 by far less than this.
TOL = 1e-4


class Recorder(keras.callbacks.Callback):
    """Activations of ``layers`` on ``x`` at train begin and every ``every`` batches."""

    def __init__(self, x, layers, every):
        super().__init__()
        self.x, self.layers, self.every, self.seen = x, layers, every, []

    def _record(self):
        sub = keras.Model(self.model.inputs[0],
                          [self.model.get_layer(p).output for p in self.layers])
        outs = sub(self.x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        step = int(self.model.optimizer.iterations.numpy())
        self.seen.append((step, {p: np.asarray(o, np.float64).reshape(len(self.x), -1)
                                 for p, o in zip(self.layers, outs)}))

    def on_train_begin(self, logs=None):
        self._record()

    def on_train_batch_end(self, batch, logs=None):
        if (int(self.model.optimizer.iterations.numpy())) % self.every == 0:
            self._record()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("convergence")
    keras.utils.set_random_seed(0)
    model = models.compile(models.sequential())
    x, y = models.data(48)
    probes = x[:6]
    cb = ConvergenceCallback(logdir, probes, every_n_epochs=None, every_n_steps=2)
    rec = Recorder(probes, ["conv1", "conv2", "head"], 2)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb, rec])
    return logdir, cb, rec


def test_default_layers_are_every_conv_and_dense_layer(run):
    _, cb, _ = run
    assert cb.layers == ["conv1", "conv2", "head"]


def test_scalars_match_an_independent_cka_of_the_recorded_activations(run):
    logdir, _, rec = run
    start = rec.seen[0][1]
    for layer in ("conv1", "conv2", "head"):
        prev = eventfiles.scalars(logdir / "train", f"convergence/{layer}/vs_previous")
        first = eventfiles.scalars(logdir / "train", f"convergence/{layer}/vs_start")
        steps = [s for s, _ in rec.seen[1:]]
        assert [s for s, _ in prev] == [s for s, _ in first] == steps == list(range(2, 13, 2))
        for i, ((_, got_prev), (_, got_start)) in enumerate(zip(prev, first)):
            before, now = rec.seen[i][1][layer], rec.seen[i + 1][1][layer]
            center = lambda a: a - a.mean(0)  # noqa: E731 - the sub-model's raw activations
            assert got_prev == pytest.approx(
                reference_cka(center(before), center(now), hsic_unbiased), abs=TOL)
            assert got_start == pytest.approx(
                reference_cka(center(start[layer]), center(now), hsic_unbiased), abs=TOL)
    # The test can fail: training moved the head away from where it started.
    assert first[-1][1] < 0.999


def test_custom_scalars_charts_of_losses_and_convergence_both_show(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.compile(models.sequential())
    x, y = models.data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[
        LossCallback(tmp_path, every_n_steps=1), ConvergenceCallback(tmp_path, x[:4])])
    client = make_client(tmp_path, _custom_scalars_plugin())
    r = client.get("/data/plugin/custom_scalars/layout")
    assert r.status_code == 200
    layout = json.loads(r.get_data())
    by_title = {cat["title"]: cat["chart"] for cat in layout["category"]}
    assert set(by_title) == {"tbviz losses, per epoch", "tbviz losses, per step",
                             "tbviz convergence"}
    conv = by_title["tbviz convergence"]
    assert [c["multiline"]["tag"] for c in conv] == [["^convergence/.*/vs_previous$"],
                                                     ["^convergence/.*/vs_start$"]]


def _custom_scalars_plugin():
    from tensorboard.plugins.custom_scalar import custom_scalars_plugin

    return custom_scalars_plugin.CustomScalarsPlugin


def settled_texts(run_dir, layer):
    acc = eventfiles.load(run_dir)
    return [(e.step, tf.make_ndarray(e.tensor_proto).item().decode())
            for e in acc.Tensors(f"convergence/{layer}/settled")]


def test_settled_after_patience_quiet_logs_and_again_after_a_move(tmp_path):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="d"),
                              keras.layers.Dense(2, name="out")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
    cb = ConvergenceCallback(tmp_path, x[:10], layers=["d"], patience=3, every_n_epochs=None,
                             every_n_steps=1)
    model.fit(x, np.zeros((40, 2)), batch_size=4, epochs=1, verbose=0,
              callbacks=[plugin_logs.Kicks({5: "d"}), cb])
    prev = dict(eventfiles.scalars(tmp_path / "train", "convergence/d/vs_previous"))
    assert prev[5] < 0.9 and all(prev[s] == pytest.approx(1.0, abs=TOL) for s in prev if s != 5)
    # Quiet at 1, 2, 3: settled at step 1, said at step 3; moved at 5; quiet again 6, 7, 8.
    assert settled_texts(tmp_path / "train", "d") == [(3, "layer d settled at step 1"),
                                                       (8, "layer d settled at step 6")]
    assert cb.settled == {"d": 6}


def test_biased_and_pooled_options(tmp_path):
    keras.utils.set_random_seed(1)
    model = models.compile(models.sequential())
    x, y = models.data(16)
    cb = ConvergenceCallback(tmp_path, x[:3], layers=["conv2"], debiased=False, reduce="pool")
    rec = Recorder(x[:3], ["conv2"], 2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb, rec])
    (step, got), = eventfiles.scalars(tmp_path / "train", "convergence/conv2/vs_start")
    pooled = [acts["conv2"].reshape(3, -1, 6).mean(1) for _, acts in rec.seen]
    assert step == 2
    assert got == pytest.approx(reference_cka(*(p - p.mean(0) for p in pooled), hsic_biased),
                                abs=TOL)


def test_on_in_tensorboard_viz_with_probe_images(tmp_path):
    model = models.compile(models.sequential())
    x, y = models.data(16)
    viz = TensorBoardViz(tmp_path, probe_images=x[:4], probe_labels=y[:4], graph=False,
                         histograms=False, deconvnet=False, feature_maps=False,
                         convergence={"threshold": 0.5})
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[viz])
    tags = eventfiles.tags(tmp_path / "train")
    assert {"convergence/conv1/vs_previous", "convergence/head/vs_start"} <= set(tags)
    assert any(type(c).__name__ == "ConvergenceCallback" for c in
               TensorBoardViz(tmp_path, probe_images=x[:4]).callbacks)
    assert not any(type(c).__name__ == "ConvergenceCallback" for c in
                   TensorBoardViz(tmp_path, probe_images=x[:4], convergence=False).callbacks)


def test_bad_arguments_say_what_to_do(tmp_path):
    x, y = models.data(8)
    with pytest.raises(ValueError, match="at least 4 probe images, got 3; pass more or "
                                         "debiased=False"):
        ConvergenceCallback(tmp_path, x[:3])
    with pytest.raises(ValueError, match="threshold must be a CKA value"):
        ConvergenceCallback(tmp_path, x[:4], threshold=2)
    with pytest.raises(ValueError, match="reduce must be one of flatten, pool"):
        ConvergenceCallback(tmp_path, x[:4], reduce="mean")
    with pytest.raises(ValueError, match="convergence must be True, False or a dict"):
        TensorBoardViz(tmp_path, probe_images=x[:4], convergence="yes")
    model = models.compile(models.sequential())
    with pytest.raises(ValueError, match="unknown layer.*'nope'.*layers are: conv1, pool1"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[ConvergenceCallback(tmp_path, x[:4], layers=["nope"])])
