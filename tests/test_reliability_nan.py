"""NaN and Inf: a non-finite loss stops training (last good checkpoint kept, exit 1), no
checkpoint of non-finite weights is ever written, and every tbviz callback survives a
model whose weights and activations are NaN or Inf: images still draw, a warning says
so once per tag, and the count is logged."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbviz
from eventfiles import images, load, panels, scalars
from models import compile, data, sequential
from style_transfer import cli
from style_transfer.callbacks import Checkpointing, NonFiniteLossGuard, StylizedProbes
from style_transfer.checkpoints import TrainingState

OPTIONS = ["--vgg-weights", "random", "--epochs", "2", "--steps-per-epoch", "4",
           "--batch-size", "2", "--image-size", "16", "--style-size", "16", "--probe-size", "16",
           "--log-every", "100", "--loss-every", "1", "--checkpoint-every", "2",
           "--content-layer", "block1_conv1", "--style-layers", "block1_conv1",
           "--transform-layers", "", "--vgg-layers", "", "--quiet"]


def test_nan_loss_stops_at_its_step_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from style_transfer import data

    log_dir = tmp_path / "run"
    status = cli.main(["train", "--content-dir", data.asset_path("photos"),
                       "--style-image", data.asset_path("styles", "wave.jpg"),
                       "--log-dir", str(log_dir), *OPTIONS, "--debug-nan-at-step", "7"])
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if "style-transfer train" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite loss at step 7: content_loss = nan (also loss)" in lines[0]
    assert "ckpt-6" in lines[0] and "--resume" in lines[0]
    ckpts = log_dir / "checkpoints"
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-6")
    assert not [f for f in os.listdir(ckpts) if f.startswith(("ckpt-7", "ckpt-8"))]
    reader = tf.train.load_checkpoint(str(ckpts / "ckpt-6"))
    dtypes = reader.get_variable_to_dtype_map()  # weights and Adam's moments: all finite
    floats = [reader.get_tensor(k) for k, d in dtypes.items() if d.is_floating]
    assert len(floats) > 100 and all(np.all(np.isfinite(w)) for w in floats)
    assert not (log_dir / "transform_net.keras").exists()
    # TensorBoard shows the curve up to the NaN, which is where it stopped.
    loss = scalars(log_dir / "train", "batch_loss")
    assert [s for s, _ in loss] == list(range(1, 8))
    assert np.isnan(loss[-1][1]) and np.all(np.isfinite([v for _, v in loss[:-1]]))
    assert "debug" not in cli.build_parser()._subparsers._group_actions[0].choices[
        "train"].format_help()  # a test hook, not an option users see


def test_guard_names_the_first_non_finite_part_and_stops():
    class Opt:
        iterations = tf.Variable(41, dtype=tf.int64)

    class Model:
        optimizer, stop_training = Opt(), False

    guard = NonFiniteLossGuard()
    guard.set_model(Model())
    guard.on_train_batch_end(0, {"loss": 3.0, "content_loss": 1.0, "tv_loss": 2.0})
    assert guard.failure is None and not guard.model.stop_training
    guard.on_train_batch_end(1, {"loss": np.inf, "style_loss": np.inf, "content_loss": 1.0,
                                 "style_loss_block1_conv1": np.float32(np.inf)})
    assert guard.model.stop_training
    assert guard.failure == ("non-finite loss at step 41: style_loss_block1_conv1 = inf "
                             "(also style_loss, loss)")


class TinyStyleModel(keras.Model):
    """What TrainingState needs of a StyleTransferModel, around a 2-layer net."""

    def __init__(self):
        super().__init__()
        self.transform_net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        self.data_position = tf.Variable(0, dtype=tf.int64)
        self.skipped_files = tf.Variable(0, dtype=tf.int64)
        self.skipped_steps = tf.Variable(0, dtype=tf.int64)


def test_checkpointing_never_saves_non_finite_weights(tmp_path):
    model = TinyStyleModel()
    model.compile(optimizer=keras.optimizers.Adam())
    state = TrainingState(model, tmp_path)
    cb = Checkpointing(state, every_n_steps=1)
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    model.optimizer.iterations.assign(1)
    cb.on_train_batch_end(0)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")
    kernel = model.transform_net.layers[0].kernel
    kernel.assign(np.where(np.eye(4, 3) > 0, np.inf, kernel.numpy()))
    model.optimizer.iterations.assign(2)
    cb.on_train_batch_end(1)
    cb.on_epoch_end(0)
    assert cb.failure == "a transform-net weight became NaN or Inf by step 2"
    assert model.stop_training
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")


class Stylizer(keras.Model):
    """An image-to-image model with a stylize() method, for StylizedProbes."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(3, 3, padding="same", name="conv")

    def call(self, x):
        return self.conv(x)

    def stylize(self, x):
        return self(tf.convert_to_tensor(x, tf.float32))


def poison(layer):
    kernel = layer.kernel.numpy()
    kernel.flat[0], kernel.flat[-1] = np.nan, np.inf
    layer.kernel.assign(kernel)


@pytest.mark.numerics
def test_every_tbviz_callback_tolerates_nan_and_inf_weights(tmp_path, caplog):
    x, y = data(8)
    model = compile(sequential())
    model(x[:1])
    poison(model.get_layer("conv1"))  # NaN and Inf weights -> NaN/Inf activations, gradients
    run = str(tmp_path)
    callbacks = [
        tbviz.HistogramCallback(run, probe_data=(x[:2], y[:2])),
        tbviz.DeconvnetCallback(run, x[:2], ["conv1", "conv2"], top_k=2),
        tbviz.AttributionCallback(run, x[:2], methods=["saliency", "grad_cam", "occlusion"]),
        tbviz.FeatureMapsCallback(run, x[:2]),
        tbviz.SynthesisCallback(run, x[:2], maximize={"conv2": 1}, invert=["conv1"], steps=2),
    ]
    with caplog.at_level(logging.WARNING):
        history = model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=callbacks)
        stylizer = Stylizer()
        stylizer.compile("sgd", "mse")
        stylizer(x[:1])
        poison(stylizer.conv)
        photos = x[:2] * 255
        stylizer.fit(photos, photos, epochs=2, verbose=0,
                     callbacks=[StylizedProbes(run, photos, every_n_epochs=1)])
    # Training went on undisturbed: every epoch and every step ran.
    assert len(history.history["loss"]) == 2 and not model.stop_training
    assert int(model.optimizer.iterations) == 2 * 2  # 8 samples, batches of 4, 2 epochs
    assert int(stylizer.optimizer.iterations) == 2
    # Each part that met NaN or Inf says so, once: a problem that lasts is not repeated at
    # every trigger. How many different messages a part gives is not fixed: how far NaN
    # spreads through max-pooling and ReLU depends on the kernel TensorFlow picks.
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for needle in ("tbviz: conv1/kernel has", "layer 'conv1'", "attribution/saliency has",
                   "feature_maps/conv2 has", "synthesis/conv2 has", "stylized/probes has"):
        said = [m for m in messages if needle in m]
        assert said and len(said) == len(set(said)), (needle, messages)
        assert all("NaN or Inf" in m or "non-finite" in m or "no finite" in m for m in said)
    # Every image still draws: two steps each, decodable. The deconvnet shows the units
    # whose activation is finite; where no finite one is left (whether ReLU and max-pooling
    # keep NaN or drop it depends on the kernel), it says that it drew nothing.
    train = load(tmp_path / "train")
    drawn = ["attribution/saliency", "attribution/grad_cam", "feature_maps/conv2",
             "kernels/conv1", "synthesis/conv2/0", "synthesis/inversion/conv1"]
    drawn_panels = ["tbviz/stylized/probes"]
    if "tbviz/deconvnet/conv1/topk" in train.Tags()["tensors"]:
        drawn_panels.append("tbviz/deconvnet/conv1/topk")
    else:
        assert [m for m in messages if "'conv1': no finite activation to project" in m]
    for tag in drawn:
        logged = images(train, tag)
        assert len(logged) == 2 and logged[0][0] < logged[1][0], tag  # one per epoch
        assert all(p.dtype == np.uint8 and p.size for _, ps in logged for p in ps), tag
    for tag in drawn_panels:
        logged = panels(tmp_path / "train", tag)[1]
        assert len(logged) == 2 and logged[0][0] < logged[1][0], tag
        assert all(p.dtype == np.uint8 and p.size for _, _, ps in logged for p in ps), tag
    # The non-finite values are counted, at every step, under nonfinite/<tag>. NaN times
    # anything is NaN, so this holds on any kernel: each of these is a NaN weight or went
    # through a convolution with NaN weights (after the first step every weight of
    # `model` is NaN: its NaN loss reaches every gradient through conv2 and the head).
    for tag in ("conv1/kernel", "attribution/saliency", "feature_maps/conv2", "kernels/conv1",
                "synthesis/conv2", "synthesis/inversion/conv1", "stylized/probes"):
        counts = scalars(train, f"nonfinite/{tag}")
        assert len(counts) == 2 and all(v > 0 for _, v in counts), (tag, counts)
