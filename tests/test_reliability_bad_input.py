"""Bad input everywhere a user can give it: the README's table, row by row.

Each command error is one line on stderr naming the problem and the fix, exit status
2, no traceback, and nothing left behind (no log folder, no checkpoint folder, no
partial file). Library errors are ``ValueError`` naming the problem and the choices.
Inputs that are merely imperfect (a grayscale or RGBA painting, a few broken photos)
are accepted, or skipped and counted.
"""

import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tbviz
from eventfiles import load
from models import Subclassed, compile, data, sequential
from style_transfer import cli
from style_transfer import data as st_data
from style_transfer.callbacks import StylizedProbes
from style_transfer.transform_net import build_transform_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--vgg-weights", "random", "--epochs", "1", "--steps-per-epoch", "1",
         "--batch-size", "2", "--image-size", "16", "--style-size", "16", "--probe-size", "16",
         "--content-layer", "block1_conv1", "--style-layers", "block1_conv1",
         "--transform-layers", "conv1", "--vgg-layers", "block1_conv1", "--quiet"]


@pytest.fixture
def where(tmp_path):
    """Inputs users get wrong, in a folder of their own; ``run`` is the log dir to use."""
    ok = tmp_path / "photos"
    ok.mkdir()
    for path in st_data.bundled_photos()[:2]:
        shutil.copy(path, ok)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no photos here")
    (tmp_path / "broken").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "broken" / name).write_bytes(b"\xff\xd8\xff\xe0 not really")
    (tmp_path / "garbage.jpg").write_bytes(b"GIF89a but truncated")
    (tmp_path / "a_file").write_text("I am a file")
    return tmp_path


def train_argv(where, **change):
    options = {"--content-dir": str(where / "photos"),
               "--style-image": st_data.asset_path("styles", "wave.jpg"),
               "--log-dir": str(where / "run")}
    options.update({k: str(v) for k, v in change.items() if not k.startswith("+")})
    extra = [str(a) for k, v in change.items() if k.startswith("+") for a in v]
    return ["train", *SMALL, *[a for kv in options.items() for a in kv], *extra]  # last wins


def snapshot(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def fails_cleanly(argv, where, capsys, *needles, status=2):
    """The command fails with one clear line, no traceback, and leaves the disk as it was."""
    before = snapshot(where)
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("style-transfer")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(where) == before
    return lines[0]


# -- train: the photos ------------------------------------------------------------------
@pytest.mark.parametrize("folder, needles", [
    ("missing", ["--content-dir", "no such file or folder", "pass a folder of photos"]),
    ("empty", ["--content-dir", "no images (.jpg", "pass a folder of photos"]),
    ("texts", ["no images (.jpg", "1 other file(s) there"]),
    ("broken", ["--content-dir", "none of the first 2 image files could be read", "a.jpg"]),
])
def test_content_folder(where, capsys, folder, needles):
    fails_cleanly(train_argv(where, **{"--content-dir": where / folder}), where, capsys, *needles)


# -- train: the painting ----------------------------------------------------------------
@pytest.mark.parametrize("style, needles", [
    ("missing.jpg", ["--style-image", "cannot read image", "missing.jpg"]),
    ("garbage.jpg", ["--style-image", "cannot read image", "garbage.jpg"]),
])
def test_unreadable_style_image(where, capsys, style, needles):
    fails_cleanly(train_argv(where, **{"--style-image": where / style}), where, capsys, *needles)


def test_huge_style_image_is_refused_before_it_is_decoded(where, capsys, monkeypatch):
    big = where / "big.png"
    Image.new("RGB", (600, 500), (10, 20, 30)).save(big)
    # Pillow refuses images over twice MAX_IMAGE_PIXELS (179 MP by default) unread, as
    # decompression bombs; lower the limit instead of writing a 200-megapixel file, to the
    # size of the content photos (384 x 384, read before the style image), so that only the
    # style image is over twice the limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 384 * 384)
    fails_cleanly(train_argv(where, **{"--style-image": big}), where, capsys,
                  "--style-image", "too large to open safely", "downscale it first")


def test_large_style_image_is_decoded_small(tmp_path):
    """Under the limit, only what --style-size needs is decoded (JPEG scales while decoding)."""
    photo = st_data.read_image(st_data.asset_path("photos", "chelsea.jpg"))
    big = Image.fromarray(photo.astype(np.uint8)).resize((2400, 1800), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    small = st_data.read_image(tmp_path / "big.jpg", max_size=64)
    assert 128 <= max(small.shape[:2]) <= 4 * 128 and small.shape[2] == 3
    from style_transfer.model import resize_longest

    full = resize_longest(st_data.read_image(tmp_path / "big.jpg"), 64)
    reduced = resize_longest(small, 64)
    assert full.shape == reduced.shape == (48, 64, 3)
    # The same picture at the size the Grams use: JPEG's scaled decode (DCT at 1/8) and a
    # full decode resized differ by a few levels at edges, 2.09 of 255 on the mean here.
    assert np.abs(full - reduced).mean() < 3.0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_grayscale_rgba_palette_and_16_bit_style_images_are_read_as_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([gray, gray, gray, np.zeros_like(gray)]), "RGBA")
    else:
        image = Image.fromarray(gray).convert(mode)
    image.save(tmp_path / "style.png")
    rgb = st_data.read_image(tmp_path / "style.png")
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.float32
    # Every mode comes back as the gray values on three channels (alpha dropped).
    np.testing.assert_allclose(rgb, np.repeat(gray[..., None], 3, -1).astype(np.float32),
                               atol=0.5 if mode != "P" else 8)


# -- train: paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, needles", [
    ("--log-dir", "a_file/run", ["--log-dir", "is a file, not a folder"]),
    ("--log-dir", "/proc/run", ["--log-dir", "not writable"]),
    ("--checkpoint-dir", "a_file/ckpts", ["--checkpoint-dir", "is a file, not a folder"]),
    ("--output", "a_file/net.keras", ["--output", "is a file, not a folder"]),
    ("--output", "run/net.h5", ["--output", "must end in .keras"]),
    ("--output", "empty", ["--output", "must end in .keras"]),
    ("--vgg-weights", "missing.h5", ["VGG19 weights", "no such file", "'random'"]),
    ("--probe-images", "garbage.jpg", ["--probe-images", "cannot read image", "garbage.jpg"]),
])
def test_bad_paths(where, capsys, option, value, needles):
    value = value if value.startswith("/") else str(where / value)
    fails_cleanly(train_argv(where, **{option: value}), where, capsys, *needles)


# -- train: sizes, layers, options ------------------------------------------------------
@pytest.mark.parametrize("change, needles", [
    ({"--image-size": 30}, ["--image-size 30 is not a multiple of 4", "use 28 or 32"]),
    ({"--image-size": 12}, ["--image-size 12 is too small", "at least 16"]),
    ({"--probe-size": 8}, ["--probe-size 8 is too small"]),
    ({"--content-layer": "block9_conv9"}, ["'block9_conv9'", "choose from block1_conv1"]),
    ({"--style-layers": "block1_conv1,conv5"}, ["'conv5'", "choose from"]),
    ({"--vgg-layers": "block3_conv1"}, ["--vgg-layers 'block3_conv1'",
                                        "the loss network stops at 'block1_conv1'"]),
    ({"--vgg-layers": "nope"}, ["'nope'", "choose from"]),
    ({"--transform-layers": "conv1,res9"}, ["'res9'", "layers are: pad, conv1"]),
    ({"--strategy": "multiworker"}, ["TF_CONFIG", "--strategy mirrored"]),
])
def test_bad_sizes_layers_and_options(where, capsys, monkeypatch, change, needles):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    fails_cleanly(train_argv(where, **change), where, capsys, *needles)


@pytest.mark.parametrize("option, value", [
    ("--epochs", "0"), ("--batch-size", "-1"), ("--lr", "0"), ("--lr", "nan"),
    ("--style-weight", "-1"), ("--strategy", "tpu"), ("--image-size", "big"),
])
def test_bad_numbers_are_usage_errors(where, capsys, option, value):
    argv = train_argv(where) + [option, value]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err
    assert not (where / "run").exists()


def test_batch_not_divisible_by_replicas(where):
    """A real process: the two logical CPUs must exist before TensorFlow starts."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "style_transfer", *train_argv(
        where, **{"--batch-size": 3, "+": ["--strategy", "mirrored", "--cpu-replicas", "2"]})],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert ("style-transfer train: error: --batch-size 3 (the global batch) cannot be split "
            "evenly over 2 replicas; use a multiple of 2") in out.stderr
    assert "Traceback" not in out.stderr and not (where / "run").exists()


def test_existing_run_without_resume(where, capsys):
    ckpts = where / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(ckpts / "ckpt"))
    fails_cleanly(train_argv(where), where, capsys, "already holds checkpoints", "--resume")


def test_resume_from_a_checkpoint_of_another_model(where, capsys):
    ckpts = where / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(transform_net=keras.Sequential([keras.Input((3,)),
                                                            keras.layers.Dense(2)])),
        str(ckpts), max_to_keep=1)
    manager.save()
    fails_cleanly(train_argv(where, **{"+": ["--resume"]}), where, capsys,
                  "does not fit this model", "resume with the options the run was started with")


# -- stylize --------------------------------------------------------------------------------
@pytest.fixture
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    build_transform_net().save(folder / "net.keras")
    compile(sequential()).save(folder / "classifier.keras")
    sub = Subclassed()
    sub(np.zeros((1, 8, 8, 3), "float32"))
    sub.save(folder / "subclassed.keras")
    with zipfile.ZipFile(folder / "not_a_model.keras", "w") as z:
        z.writestr("hello.txt", "hi")
    return folder


@pytest.mark.parametrize("model, needles", [
    ("missing.keras", ["--model", "no such file"]),
    ("not_a_model.keras", ["--model: cannot load", "pass the .keras file"]),
    ("classifier.keras", ["(None, 12, 12, 3) -> (None, 3)", "not a transform-net"]),
    ("subclassed.keras", ["--model", "pass the .keras file 'style-transfer train' saved"]),
])
def test_stylize_bad_model(where, saved_models, capsys, model, needles):
    argv = ["stylize", "--model", str(saved_models / model), "--output-dir",
            str(where / "out"), st_data.asset_path("photos", "coffee.jpg")]
    fails_cleanly(argv, where, capsys, *needles)


def test_stylize_unwritable_output_dir(where, saved_models, capsys):
    argv = ["stylize", "--model", str(saved_models / "net.keras"), "--output-dir",
            str(where / "a_file" / "out"), st_data.asset_path("photos", "coffee.jpg")]
    fails_cleanly(argv, where, capsys, "--output-dir", "is a file, not a folder")


def test_stylize_skips_and_counts_what_it_cannot_read(where, saved_models, capsys):
    argv = ["stylize", "--model", str(saved_models / "net.keras"), "--output-dir",
            str(where / "out"), str(where / "garbage.jpg"), str(where / "nothing.jpg"),
            str(where / "empty"), str(where / "photos")]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "stylized 2 image(s), 3 failed" in captured.out
    for name in ("garbage.jpg", "nothing.jpg", "empty"):
        assert f"skipped {where / name}" in captured.err
    assert len(os.listdir(where / "out")) == 2
    # Nothing readable at all: no empty output folder is left.
    argv[4] = str(where / "out2")
    assert cli.main(argv[:5] + [str(where / "garbage.jpg")]) == 1
    assert not (where / "out2").exists()


# -- the tbviz API ----------------------------------------------------------------------
def fit_with(model, callback, x=None):
    x_, y = data(8)
    x = x_ if x is None else x
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_tbviz_model_without_conv_layers(tmp_path, caplog):
    x, _ = data(8)
    mlp = compile(keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(name="flatten"),
                                    keras.layers.Dense(3, name="head")], name="mlp"))
    with pytest.raises(ValueError, match="model 'mlp' has no conv layers"):
        fit_with(mlp, tbviz.FeatureMapsCallback(str(tmp_path), x[:2]))
    with pytest.raises(ValueError, match=r"unknown layer\(s\) 'conv1'.*layers are: flatten, head"):
        fit_with(mlp, tbviz.DeconvnetCallback(str(tmp_path), x[:2], ["conv1"]))
    fit_with(mlp, tbviz.TensorBoardViz(str(tmp_path), probe_images=x[:2]))  # skipped, and said
    assert any("deconvnet images are off: model 'mlp' has no Conv2D layer and no layer of "
               "patch tokens" in r.getMessage() for r in caplog.records)


def test_tbviz_non_image_input(tmp_path):
    vec = compile(keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)], name="vec"))
    v = np.random.default_rng(0).random((8, 10), dtype=np.float32)
    with pytest.raises(ValueError, match=r"probe_images must be an \(N, H, W, C\) array"):
        tbviz.DeconvnetCallback(str(tmp_path), v[:2], ["dense"])
    with pytest.raises(ValueError, match=r"image probes need a \(batch, height, width"):
        fit_with(vec, tbviz.AttributionCallback(str(tmp_path), v[:2]), v)


@pytest.mark.parametrize("probes, message", [
    (np.zeros((2, 8, 12, 3), "float32"), r"have shape \(2, 8, 12, 3\), but the model expects"),
    (np.full((2, 12, 12, 3), "x"), "must be a numeric array"),
    (np.full((2, 12, 12, 3), np.nan, "float32"), "contain NaN or Inf"),
])
def test_tbviz_probe_images_of_wrong_shape_dtype_or_values(tmp_path, probes, message):
    model = compile(sequential())
    with pytest.raises(ValueError, match=message):
        fit_with(model, tbviz.AttributionCallback(str(tmp_path), probes))


@pytest.mark.parametrize("photos, message", [
    (np.random.default_rng(0).random((2, 8, 8, 3)), r"look like \[0, 1\] images"),
    (np.full((2, 8, 8, 3), 300.0), r"must be in \[0, 255\]"),
    (np.full((2, 8, 8, 3), -1.0), r"must be in \[0, 255\]"),
    (np.zeros((2, 8, 8)), r"\(N, H, W, 3\) RGB"),
    (np.full((2, 8, 8, 3), "x"), "must be numbers"),
])
def test_stylized_probes_of_wrong_range_shape_or_dtype(tmp_path, photos, message):
    with pytest.raises(ValueError, match=message):
        StylizedProbes(str(tmp_path), photos)


def test_tbviz_subclassed_model_never_called(tmp_path):
    x, y = data(8)
    cb = tbviz.DeconvnetCallback(str(tmp_path), x[:2], ["conv"], top_k=2, strict=True)
    model = compile(Subclassed())
    cb.set_model(model)
    cb.on_train_begin()  # a guest is never first: it waits for Keras to build the model
    assert not model.built and not cb.ready
    cb.on_train_end()
    fit_with(model, cb)  # ... which the first training step does; then it sets up
    assert cb.ready and "tbviz/deconvnet/conv/topk" in load(tmp_path / "train").Tags()["tensors"]
    # A part of TensorBoardViz failing after others started: no run folder either.
    with pytest.raises(ValueError, match=r"has shape \(2, 8, 12, 3\), but model .seq. expects"):
        fit_with(compile(sequential()), tbviz.TensorBoardViz(
            str(tmp_path / "viz"), probe_images=x[:2, :8], attribution=["saliency"]))
    assert not (tmp_path / "viz").exists()
