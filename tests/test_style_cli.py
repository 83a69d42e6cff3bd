"""Both commands end to end at tiny sizes, read back the way TensorBoard reads them.

The run of ``train`` and what it wrote are checked on every backend (marked ``backends``);
the demo, the scan and mixed precision on TensorFlow (their parts are each tested on every
backend elsewhere; the demo's whole run is timed in the README).
"""

import io
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from tensorboard.util import tensor_util

import eventfiles
from style_transfer import cli, data, vgg
from style_transfer.transform_net import load_transform_net
from tbviz import deconvnet
from tbviz.summary import metadata

TRAIN = ["--vgg-weights", "random", "--epochs", "2", "--steps-per-epoch", "3",
         "--batch-size", "2", "--image-size", "32", "--style-size", "32", "--probe-size", "32",
         "--log-every", "2", "--loss-every", "1", "--checkpoint-every", "2",
         "--style-layers", "block1_conv1,block2_conv1", "--content-layer", "block2_conv1",
         "--transform-layers", "conv1", "--vgg-layers", "block1_conv1", "--quiet"]


@pytest.fixture(scope="module")
def content_dir(tmp_path_factory):
    """Real photos plus the broken files users' folders hold."""
    folder = tmp_path_factory.mktemp("content")
    for path in data.bundled_photos()[:3]:
        shutil.copy(path, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((20, 20), 90, np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, content_dir):
    log_dir = tmp_path_factory.mktemp("run") / "wave"
    out = tmp_path_factory.mktemp("out")
    probe_dir = out  # two probe photos of different aspect ratio, cropped square
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(probe_dir / "wide.png")
    probes = [data.asset_path("photos", "coffee.jpg"), str(probe_dir / "wide.png")]
    argv = ["train", "--content-dir", str(content_dir), "--log-dir", str(log_dir),
            "--style-image", data.asset_path("styles", "wave.jpg"), "--probe-images", *probes,
            *TRAIN]
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        status = cli.main(argv)
    return {"status": status, "log_dir": log_dir, "argv": argv, "stdout": buf.getvalue()}


BACKENDS = pytest.mark.backends
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"


def latest_checkpoint(folder):
    """The newest checkpoint's name, read the way each backend's store writes its index."""
    if ON_TENSORFLOW:
        import tensorflow as tf

        path = tf.train.latest_checkpoint(str(folder))
        return path and os.path.basename(path)
    with open(os.path.join(folder, "checkpoint")) as f:
        return json.load(f)["checkpoints"][-1]["name"]


def rewind_checkpoints(folder, name):
    """Make checkpoint ``name`` the latest of ``folder`` again (as a run stopped there)."""
    if ON_TENSORFLOW:
        import tensorflow as tf

        tf.compat.v1.train.update_checkpoint_state(str(folder), os.path.join(folder, name))
        return
    path = os.path.join(folder, "checkpoint")
    with open(path) as f:
        entries = json.load(f)["checkpoints"]
    names = [e["name"] for e in entries]
    with open(path, "w") as f:
        json.dump({"checkpoints": entries[:names.index(name) + 1]}, f)


@BACKENDS
def test_train_runs_and_saves_the_transform_net(trained):
    assert trained["status"] == 0, trained["stdout"]
    net = load_transform_net(trained["log_dir"] / "transform_net.keras")
    assert net.get_layer("res5") is not None
    assert "global step 6" in trained["stdout"]
    assert "unreadable image file(s) skipped" in trained["stdout"]  # broken + empty, every pass


@BACKENDS
def test_train_logs_every_loss_as_scalars(trained):
    run = trained["log_dir"] / "train"
    for key in ("loss", "content_loss", "style_loss", "tv_loss", "style_loss_block1_conv1"):
        epochs = eventfiles.scalars(run, f"epoch_{key}")
        assert len(epochs) == 2 and all(np.isfinite(v) for _, v in epochs), key
        steps = eventfiles.scalars(run, f"batch_{key}")
        assert [s for s, _ in steps] == list(range(1, 7)), key
    total = dict(eventfiles.scalars(run, "batch_loss"))
    parts = [dict(eventfiles.scalars(run, f"batch_{k}")) for k in ("content_loss", "style_loss",
                                                                   "tv_loss")]
    for step, value in total.items():
        assert value == pytest.approx(sum(p[step] for p in parts), rel=1e-5)


@BACKENDS
def test_train_logs_stylized_probes_as_a_tbviz_panel(trained):
    acc = eventfiles.load(trained["log_dir"] / "train")
    content, steps = eventfiles.panels(acc, "tbviz/stylized/probes")
    assert content["kind"] == metadata.STYLIZED
    assert [step for step, _, _ in steps] == [2, 3, 4, 6]  # every 2 steps, epoch ends (3, 6)
    _, header, images = steps[-1]
    assert [t["label"] for t in header["tiles"]] == ["coffee", "wide"]
    assert len(images) == 2 and all(im.shape == (32, 32, 3) for im in images)
    assert not np.array_equal(steps[0][2][0], images[0])  # the transform-net learned
    # One copy: the Images-dashboard summary is opt-in (StylizedProbes(image_summary=True)).
    assert "stylized/probes" not in acc.Tags()["tensors"]
    originals = acc.Tensors("stylized/originals")
    wide = np.asarray(Image.open(io.BytesIO(tensor_util.make_ndarray(
        originals[0].tensor_proto)[3])))
    assert np.all(np.abs(wide.astype(int) - 200) <= 1)  # the probe photo itself


@BACKENDS
def test_train_logs_histograms_graph_and_checkpoints(trained):
    acc = eventfiles.load(trained["log_dir"] / "train")
    tags = acc.Tags()["tensors"]
    for name in ("conv1/norm/gamma", "conv1/norm/beta", "res3/b/conv/kernel", "output/conv/kernel"):
        assert any(t.endswith(name) and t.startswith("transform_net") for t in tags), name
    assert not any("block1_conv1" in t and "kernel" in t for t in tags)  # VGG19 is frozen
    if ON_TENSORFLOW:  # the op graph of JAX and PyTorch is drawn by tbviz.backend (elsewhere)
        scopes = {node.name.split("/")[0] for node in acc.Graph().node}
        assert {"transform_net", "vgg_content", "vgg_transformed", "losses"} <= scopes
    assert latest_checkpoint(trained["log_dir"] / "checkpoints") == "ckpt-6"


@BACKENDS
def test_train_logs_deconvnet_of_transform_net_and_of_vgg_through_the_stylized_output(trained):
    acc = eventfiles.load(trained["log_dir"] / "train")
    tags = acc.Tags()["tensors"]
    for layer in ("conv1", "block1_conv1"):  # --transform-layers conv1 --vgg-layers block1_conv1
        for kind in ("topk", "evolution"):
            assert [e.step for e in acc.Tensors(f"tbviz/deconvnet/{layer}/{kind}")] == [2, 3, 4, 6]
    # Each tile once: no Images-dashboard copies nor raw tensors at the defaults.
    assert not [t for t in tags if t.startswith("deconvnet/")]
    # VGG19 looks at the stylized probes: its input patches change as the net learns.
    steps = eventfiles.panels(acc, "tbviz/deconvnet/block1_conv1/topk")[1]
    (_, first_header, first), (_, last_header, last) = steps[0], steps[-1]
    patch = [i for i, t in enumerate(last_header["tiles"]) if t["role"] == "patch"]
    assert [t["role"] for t in first_header["tiles"]] == [t["role"] for t in last_header["tiles"]]
    assert any(first[i].shape != last[i].shape or not np.array_equal(first[i], last[i])
               for i in patch)


@BACKENDS
def test_vgg19_cuts_its_patches_from_the_stylized_panel_stored_once(trained):
    acc = eventfiles.load(trained["log_dir"] / "train")
    tags = acc.Tags()["tensors"]
    # The photos VGG19 looks at are the Stylized panel's: no second copy of them.
    assert "tbviz/deconvnet/vgg19/probes" not in tags
    assert "tbviz/deconvnet/transform_net/probes" in tags  # the transform-net's own photos
    content, steps = eventfiles.panels(acc, "tbviz/deconvnet/block1_conv1/topk")
    assert content["sources"] == "tbviz/stylized/probes" and content["source_size"] == [32, 32]
    step, header, tiles = steps[-1]
    assert step == 6
    # Independently: the saved (final) transform-net stylizes the probe photos again.
    photos, _ = data.load_probe_photos(
        [data.asset_path("photos", "coffee.jpg"), trained["argv"][trained["argv"].index(
            "--probe-images") + 2]], 32)
    net = load_transform_net(trained["log_dir"] / "transform_net.keras")
    stylized = np.clip(keras.ops.convert_to_numpy(net(photos, training=False)), 0, 255)
    # Another call than the run's (eager, not its tf.function): float32 rounding may move
    # a value across a rounding boundary, by one level.
    shown = eventfiles.panels(acc, "tbviz/stylized/probes")[1][-1][2]
    np.testing.assert_allclose(np.stack(shown).astype(int),
                               np.round(stylized).astype(int), atol=1)
    patches = [(t, im) for t, im in zip(header["tiles"], tiles) if t["role"] == "patch"]
    units = [deconvnet.Unit(t["image_index"], t["row"], t["col"], t["channel"], t["value"])
             for t, _ in patches]
    boxes = deconvnet.windows(vgg.build_vgg("random", layers=("block1_conv1",)), (32, 32, 3),
                              "block1_conv1", units)
    assert len(patches) == 9
    for (t, im), u, (top, bottom, left, right) in zip(patches, units, boxes):
        assert "source_step" not in t and t["crop"] == [top, bottom, left, right]
        want = np.round(stylized[u.image_index, top:bottom, left:right]).astype(int)
        np.testing.assert_allclose(im.astype(int), want, atol=1)  # (as above)


@BACKENDS
def test_resume_mid_epoch_continues_exactly(trained, tmp_path, content_dir):
    """Stop after step 4 (mid epoch 2), resume: same weights as the uninterrupted run
    (which also shows that the visualization callbacks left training untouched)."""
    log_dir = tmp_path / "resumed"
    shutil.copytree(trained["log_dir"] / "checkpoints", log_dir / "checkpoints")
    rewind_checkpoints(str(log_dir / "checkpoints"), "ckpt-4")
    argv = [a if a != str(trained["log_dir"]) else str(log_dir) for a in trained["argv"]]
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli.main(argv + ["--resume", "--no-viz"]) == 0
    out = buf.getvalue()
    assert "resumed from" in out and "global step 4, epoch 2 (step 1 done)" in out
    assert "global step 6" in out
    a = load_transform_net(trained["log_dir"] / "transform_net.keras").get_weights()
    b = load_transform_net(log_dir / "transform_net.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


@BACKENDS
def test_train_refuses_to_overwrite_a_run_without_resume(trained, capsys):
    assert cli.main(trained["argv"] + ["--no-viz"]) == 2
    assert "--resume" in capsys.readouterr().err


@BACKENDS
def test_train_bad_inputs_are_clear_errors(tmp_path, content_dir, capsys):
    argv = ["train", "--content-dir", str(content_dir), "--log-dir", str(tmp_path / "x"),
            "--style-image", str(tmp_path / "missing.jpg"), *TRAIN]
    assert cli.main(argv) == 2
    assert "missing.jpg" in capsys.readouterr().err
    argv[2] = str(tmp_path / "nothing_here")
    assert cli.main(argv) == 2
    assert "no such file or folder" in capsys.readouterr().err


@BACKENDS
def test_stylize_keeps_sizes_and_names(trained, tmp_path, rng, capsys):
    inputs = tmp_path / "in"
    (inputs / "more").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(inputs / "odd.png")
    Image.fromarray(rng.integers(0, 256, (9, 13), dtype=np.uint8)).save(inputs / "gray.jpg")
    Image.fromarray(rng.integers(0, 65536, (21, 22), dtype=np.uint16)).save(
        inputs / "more" / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(inputs / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (30, 90, 3), dtype=np.uint8)).save(inputs / "big.jpg")
    (inputs / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    status = cli.main(["stylize", "--model", str(trained["log_dir"] / "transform_net.keras"),
                       str(inputs / "odd.png"), str(inputs / "gray.jpg"), str(inputs / "more"),
                       str(inputs / "tiny.png"), str(inputs / "big.jpg"),
                       str(inputs / "broken.jpg"),
                       "--output-dir", str(out), "--max-size", "60"])
    captured = capsys.readouterr()
    assert status == 1  # one input could not be read, and that is said
    assert "broken.jpg" in captured.err and "1 failed" in captured.out
    assert "stylized at 60x20" in captured.out  # big.jpg: downscaled, and told so
    expected = {"odd.png": (37, 50), "gray.jpg": (9, 13), "deep16.png": (21, 22),
                "tiny.png": (5, 6), "big.jpg": (30, 90)}
    assert sorted(os.listdir(out)) == sorted(expected)
    for name, (h, w) in expected.items():
        with Image.open(out / name) as im:
            assert (im.height, im.width) == (h, w) and im.mode == "RGB", name
    # Same pixels as the network itself for an image that needs no resizing.
    net = load_transform_net(trained["log_dir"] / "transform_net.keras")
    x = np.asarray(Image.open(inputs / "odd.png"), np.float32)[None]
    expected_pixels = np.clip(np.round(keras.ops.convert_to_numpy(net(x))[0]), 0, 255)
    got = np.asarray(Image.open(out / "odd.png"), np.float32)
    assert np.abs(got - expected_pixels).max() <= 1.0


def test_demo_falls_back_to_random_weights_and_says_so(tmp_path, monkeypatch, capsys):
    from style_transfer import demo, vgg

    def unreachable(weights, *args, **kwargs):
        raise vgg.VGGWeightsUnavailable("no internet in this test")

    monkeypatch.setattr(demo, "build_vgg", unreachable)
    # One deconvnet layer per network keeps this test quick; the demo's own are four and three.
    monkeypatch.setattr(demo, "TRANSFORM_PROBE_LAYERS", ("conv1",))
    monkeypatch.setattr(demo, "RANDOM_VGG_PRESET",
                        {**demo.RANDOM_VGG_PRESET, "vgg_layers": ("block1_conv1",)})
    log_dir = tmp_path / "demo"
    argv = ["demo", "--log-dir", str(log_dir), "--image-size", "32", "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "2"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "falls back to --vgg-weights random" in captured.err
    assert "RANDOM weights" in captured.out + captured.err
    assert f"tensorboard --logdir {log_dir}" in captured.out
    stylized = sorted(os.listdir(log_dir / "stylized"))
    assert stylized == sorted(os.path.basename(p) for p in data.bundled_photos())
    acc = eventfiles.load(log_dir / "train")
    tags = acc.Tags()["tensors"]
    assert "tbviz/stylized/probes" in tags
    # Trained with the random-weight recipe's loss layers, not the paper's.
    style_terms = {t for t in tags if t.startswith("batch_style_loss_")}
    assert style_terms == {f"batch_style_loss_{n}" for n in demo.RANDOM_VGG_PRESET["style_layers"]}
    # the demo scans the bundled photos plus scikit-image's
    scanned = os.listdir(log_dir / "scan_photos")
    assert any(n.startswith("skimage_") for n in scanned) and len(scanned) > len(stylized)
    assert "tbviz/deconvnet/block1_conv1/featuremaps" in tags
    # a light run: the panels only, no Images-dashboard grid (opt-in, image_grids=True)
    # (beside what the part cost, tbviz/cost/...)
    on_photos = eventfiles.tags(log_dir / "vgg_on_photos")
    assert [t for t in on_photos if not t.startswith("tbviz/cost/")] == [
        "tbviz/deconvnet/block1_conv1/evolution", "tbviz/deconvnet/block1_conv1/featuremaps"]
    assert "tbviz/cost/deconvnet" in on_photos
    # It never deletes a folder that is not one of its own runs.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert cli.main(["demo", "--log-dir", str(other)]) == 2
    assert (other / "precious.txt").exists()
    assert "not a previous demo run" in capsys.readouterr().err


@BACKENDS
def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "style_transfer", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0
    for command in ("train", "stylize", "demo"):
        assert command in out.stdout


def test_train_with_mixed_precision_applies_its_steps(tmp_path, content_dir):
    log_dir = tmp_path / "mixed"
    # The bundled photos only: a flat image (content_dir's CMYK one) has zero variance at
    # every instance norm, and its float16 gradients overflow whatever the loss scale (such a
    # step is skipped, as it should be), which is not what this test is about.
    argv = ["train", "--content-dir", data.asset_path("photos"), "--log-dir", str(log_dir),
            "--style-image", data.asset_path("styles", "udnie.jpg"), *TRAIN,
            "--mixed-precision", "--no-viz", "--epochs", "1"]
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli.main(argv) == 0
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    # Losses of ~1e6 overflow float16 gradients unless the loss scale starts small:
    # every step must have been applied (the global step counts applied steps here).
    assert "global step 3" in buf.getvalue()
    net = load_transform_net(log_dir / "transform_net.keras")
    assert all(np.isfinite(w).all() for w in net.get_weights())


@BACKENDS
def test_scan_files_default_to_val2017_or_a_held_out_slice(tmp_path):
    from style_transfer.train import scan_files

    for split in ("train2017", "val2017"):
        (tmp_path / "coco" / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
                tmp_path / "coco" / split / f"{i}.png")
    train = sorted(str(p) for p in (tmp_path / "coco" / "train2017").iterdir())

    scan, files = scan_files(str(tmp_path / "coco" / "train2017"), train, scan_images=2)
    assert files == train
    assert [os.path.basename(os.path.dirname(p)) for p in scan] == ["val2017"] * 2
    other = tmp_path / "photos"
    shutil.copytree(tmp_path / "coco" / "train2017", other)
    mine = sorted(str(p) for p in other.iterdir())
    scan, files = scan_files(str(other), mine, scan_images=1)
    assert scan == mine[-1:] and files == mine[:-1]  # held out of training
    assert scan_files(str(other), mine) == (None, mine)  # no scan asked for
    with pytest.raises(ValueError, match="only 3 photos"):
        scan_files(str(other), mine, scan_images=3)


def test_train_scans_transform_net_and_vgg_on_stylized_outputs_and_on_the_photos(tmp_path,
                                                                                  content_dir):
    log_dir = tmp_path / "run"
    argv = ["train", "--content-dir", str(content_dir), "--log-dir", str(log_dir),
            "--style-image", data.asset_path("styles", "wave.jpg"),
            "--scan-dir", data.asset_path("photos"), "--scan-images", "3",
            *TRAIN[:3], "1", *TRAIN[4:]]  # one epoch
    assert cli.main(argv) == 0
    for run, layer in (("train", "conv1"), ("train", "block1_conv1"),
                       ("vgg_on_photos", "block1_conv1")):
        content, steps = eventfiles.panels(log_dir / run, f"tbviz/deconvnet/{layer}/featuremaps")
        _, header, _ = steps[-1]
        assert {t["image_index"] for t in header["tiles"]} <= {0, 1, 2}  # the 3 scanned photos

    # VGG19 on the stylized photos and on the photos themselves see different images
    def patches(run):
        _, steps = eventfiles.panels(log_dir / run, "tbviz/deconvnet/block1_conv1/featuremaps")
        _, header, pics = steps[-1]
        return [p for t, p in zip(header["tiles"], pics) if t["role"] == "patch"]

    stylized, plain = patches("train"), patches("vgg_on_photos")
    assert stylized and plain
    assert stylized[0].shape != plain[0].shape or not np.array_equal(stylized[0], plain[0])
