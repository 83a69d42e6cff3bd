"""LossCallback: scalars per step and epoch, train/validation runs, custom-scalars layout."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2

import tbviz
from eventfiles import load, scalars
from tbviz.callbacks.losses import group_keys


class MultiLoss(keras.Model):
    """A model whose train_step returns several raw loss terms, like the style pipeline."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            pred = self(x, training=True)
            content_loss = tf.reduce_mean(tf.square(pred - y))
            style_loss = 0.5 * tf.reduce_mean(tf.abs(pred))
            loss = content_loss + style_loss
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss, "content_loss": content_loss, "style_loss": style_loss,
                "images_per_second": tf.constant(1.0)}


class StepRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = {}

    def on_train_batch_end(self, batch, logs=None):
        self.logs[int(self.model.optimizer.iterations.numpy())] = dict(logs)


def read_layout(run_dir):
    acc = load(run_dir)
    proto = acc.Tensors("custom_scalars__config__")[-1].tensor_proto
    return layout_pb2.Layout.FromString(tf.make_ndarray(proto).item())


def test_epoch_and_step_scalars_with_validation_match_history(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=["mae"])
    x = np.random.default_rng(0).random((40, 4)).astype("float32")
    y = x.sum(1, keepdims=True)
    rec = StepRecorder()
    cb = tbviz.LossCallback(str(tmp_path), every_n_steps=2)
    hist = model.fit(x, y, validation_split=0.2, epochs=3, batch_size=8, verbose=0,
                     callbacks=[rec, cb])
    train, val = tmp_path / "train", tmp_path / "validation"
    for key in ("loss", "mae"):
        got = scalars(train, f"epoch_{key}")
        assert [s for s, _ in got] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in got], hist.history[key], rtol=1e-6)
        got_val = scalars(val, f"epoch_{key}")
        np.testing.assert_allclose([v for _, v in got_val], hist.history[f"val_{key}"], rtol=1e-6)
    steps = scalars(train, "batch_loss")
    assert [s for s, _ in steps] == [2, 4, 6, 8, 10, 12]
    for step, value in steps:
        assert value == pytest.approx(rec.logs[step]["loss"], rel=1e-6)


def test_layout_groups_every_loss_in_one_chart(tmp_path):
    model = MultiLoss()
    model.compile(keras.optimizers.SGD(0.01))
    x = np.ones((16, 3), "float32")
    y = np.zeros((16, 1), "float32")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0,
              callbacks=[tbviz.LossCallback(str(tmp_path), every_n_steps=1)])
    layout = read_layout(tmp_path / "train")
    regexes = [t for cat in layout.category for chart in cat.chart for t in chart.multiline.tag]
    epoch_re = next(r for r in regexes if r.startswith("^epoch_"))
    tags = ["epoch_loss", "epoch_content_loss", "epoch_style_loss", "epoch_images_per_second"]
    matched = [t for t in tags if re.match(epoch_re, t)]
    assert matched == ["epoch_loss", "epoch_content_loss", "epoch_style_loss"]
    # Raw per-step values arrive as logged.
    content = scalars(tmp_path / "train", "batch_content_loss")
    assert len(content) == 8 and content[0][0] == 1


def test_custom_groups(tmp_path):
    model = MultiLoss()
    model.compile(keras.optimizers.SGD(0.01))
    cb = tbviz.LossCallback(str(tmp_path), groups={"terms": ["content_loss", "style_loss"],
                                                   "speed": [re.compile(r"images_.*")]})
    model.fit(np.ones((8, 3), "float32"), np.zeros((8, 1), "float32"), epochs=1, verbose=0,
              callbacks=[cb])
    titles = [c.title for cat in read_layout(tmp_path / "train").category for c in cat.chart]
    assert "terms (per epoch)" in titles and "speed (per step)" in titles


def test_group_keys_default_and_validation_names():
    assert group_keys(["val_loss", "loss", "acc", "val_style_loss"], None) == {
        "losses": ["loss", "style_loss"]}


@pytest.mark.parametrize("groups", [["loss"], {"a": "loss"}, {"a": []}])
def test_bad_groups_are_rejected(groups):
    with pytest.raises(ValueError, match="groups must be a dict"):
        tbviz.LossCallback("runs/x", groups=groups)


def test_non_finite_losses_are_written_not_fatal(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(1e30), "mse")
    x = np.full((8, 2), 1e20, "float32")
    model.fit(x, x[:, :1], epochs=2, batch_size=4, verbose=0,
              callbacks=[tbviz.LossCallback(str(tmp_path), every_n_steps=1)])
    values = [v for _, v in scalars(tmp_path / "train", "batch_loss")]
    assert len(values) == 4 and not np.isfinite(values[-1])
