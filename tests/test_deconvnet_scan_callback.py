"""DeconvnetCallback(scan_data=...): Zeiler & Fergus' Figs. 2 and 3 over a whole dataset,
read back with TensorBoard's readers. On every backend: the scan data is a
keras.utils.PyDataset of labelled batches (a tf.data pipeline in one test, where
TensorFlow is installed)."""

import keras
import numpy as np
import pytest

import models
import tbviz
from eventfiles import images, load, panels, tags
from planted import PLANTED, detector, planted_images
from tbviz.callbacks.deconvnet import MIN_TILE, UNIT_COLUMNS
from tensorboard.util.tensor_util import make_ndarray

pytestmark = pytest.mark.backends

K = 3  # the top 3 of each map: every map has at least 3 plants


class Labelled(keras.utils.PyDataset):
    """``(images, labels)`` in batches of 100, as a training set would come."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def __len__(self):
        return -(-len(self.x) // 100)

    def __getitem__(self, i):
        x = self.x[i * 100:(i + 1) * 100]
        return x, np.zeros(len(x), "int32")


@pytest.fixture(scope="module")
def planted():
    x = planted_images()
    return x, Labelled(x)


def frozen_detector():
    """The detector, compiled so that training leaves its weights as they are (lr 0)."""
    model = detector()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


def units_rows(acc, layer, step=-1):
    table = make_ndarray(acc.Tensors(f"deconvnet/{layer}/units")[step].tensor_proto)
    return [dict(zip(UNIT_COLUMNS, row)) for row in table]


def fit(model, x, cb, epochs=2):
    model.fit(x[:8], np.zeros((8, 2)), epochs=epochs, verbose=0, callbacks=[cb])


def test_a_light_scan_run_writes_the_panels_only(tmp_path, planted):
    x, ds = planted
    model = frozen_detector()
    cb = tbviz.DeconvnetCallback(tmp_path, layers=["conv1"], scan_data=ds, top_k=K,
                                 channels=[0], scan_limit=200)
    fit(model, x, cb, epochs=1)
    # the Images-dashboard grid follows image_grids=, the units table raw= (both off); the
    # part's cost scalars are there too
    assert tags(tmp_path / "train") == ["tbviz/cost/deconvnet", "tbviz/cost/deconvnet_setup",
                                        "tbviz/deconvnet/conv1/evolution",
                                        "tbviz/deconvnet/conv1/featuremaps"]


def test_scan_only_writes_the_feature_map_view_evolution_and_units(tmp_path, planted):
    x, ds = planted
    model = frozen_detector()
    cb = tbviz.DeconvnetCallback(tmp_path, layers=["conv1", "mix"], scan_data=ds, top_k=K,
                                 channels=[0, 1], image_grids=True, raw=True)
    fit(model, x, cb, epochs=3)
    acc = load(tmp_path / "train")
    tags = acc.Tags()["tensors"]
    for layer in ("conv1", "mix"):
        for name in ("featuremaps", "evolution", "units", "raw"):
            assert f"deconvnet/{layer}/{name}" in tags
        assert f"tbviz/deconvnet/{layer}/featuremaps" in tags
        assert f"deconvnet/{layer}/projections" not in tags  # no probe images, no top-k
        assert not any(t.endswith("/probes") for t in tags)
        assert [e.step for e in acc.Tensors(f"deconvnet/{layer}/featuremaps")] == [1, 2, 3]

    # the units table: set 2 = each map's top 3 over all 3000 images, strongest first, at the
    # planted images and positions; set 1 = the strongest of each map
    rows = units_rows(acc, "conv1")
    for ch in (0, 1):
        got = [(r["image_index"], r["row"], r["col"]) for r in rows
               if r["set"] == 2 and r["channel"] == ch]
        assert got == [p[:3] for p in PLANTED[ch][:K]]
        assert [(r["image_index"], r["row"], r["col"]) for r in rows
                if r["set"] == 1 and r["channel"] == ch] == [PLANTED[ch][0][:3]]
    assert {r["set"] for r in rows} == {1, 2}

    # the panel: per map a group of K projections; patch tiles are the planted pixels
    content, steps = panels(tmp_path / "train", "tbviz/deconvnet/conv1/featuremaps")
    assert content["kind"] == "featuremaps" and content["layer"] == "conv1"
    _, header, pngs = steps[-1]
    assert [g["channel"] for g in header["groups"]] == [0, 1]
    patches = [(t, png) for t, png in zip(header["tiles"], pngs) if t["role"] == "patch"]
    assert len(patches) == 2 * K
    scale = -(-MIN_TILE // 5)  # the 5x5 field enlarged to at least MIN_TILE pixels
    # the evolution's patches too: the scanned images are not stored, so no tile is a crop
    _, evo_header, evo_pngs = panels(tmp_path / "train", "tbviz/deconvnet/conv1/evolution")[1][-1]
    evo_patches = [(t, png) for t, png in zip(evo_header["tiles"], evo_pngs)
                   if t["role"] == "patch"]
    assert [t["image_index"] for t, _ in evo_patches] == [PLANTED[0][0][0], PLANTED[1][0][0]]
    for tile, png in patches + evo_patches:
        assert "crop" not in tile
        i, r, c = tile["image_index"], tile["row"], tile["col"]
        # pixels within [0, 255] are shown as they are, rounded to uint8
        want = np.round(x[i, r:r + 5, c:c + 5]).astype(np.uint8)
        np.testing.assert_array_equal(png[::scale, ::scale], want)

    # one probe per kind of scan, compiled once (the last batch is padded to the first's
    # size), never again at later triggers: the first look at train begin, then the scans
    from tbviz import scan as scan_module
    scanners = list(scan_module._SCANNERS[model].values())
    assert len(scanners) == 2 and all(len(s.probes) == 1 for s in scanners)
    assert max(p.traces for s in scanners for p in s.probes.values()) <= 1

    # the Images-dashboard view is one picture holding both maps' blocks
    (_, (picture,)), = images(tmp_path / "train", "deconvnet/conv1/featuremaps")[-1:]
    assert picture.shape[0] >= scale * 5 and picture.shape[1] >= 2 * 2 * scale * 5


def test_probe_images_and_scan_data_together(tmp_path, planted):
    x, ds = planted
    model = frozen_detector()
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=x[:4], layers=["conv1"], scan_data=ds,
                                 top_k=K, channels=[1], scan_limit=1000, raw=True)
    fit(model, x, cb, epochs=1)
    acc = load(tmp_path / "train")
    rows = units_rows(acc, "conv1")
    assert {r["set"] for r in rows} == {0, 1, 2}
    assert all(r["image_index"] < 4 for r in rows if r["set"] == 0)  # probe images
    # the scan read the first 1000 images: map 1's plant in image 5 only
    assert [r["image_index"] for r in rows if r["set"] == 2][:1] == [5]
    assert [(r["image_index"], r["channel"]) for r in rows if r["set"] == 1] == [(5, 1)]
    # the top-k patches are crops of the probe images, stored once in the probes panel
    content, steps = panels(tmp_path / "train", "tbviz/deconvnet/conv1/topk")
    assert content["sources"] == "tbviz/deconvnet/detector/probes"
    _, header, pics = steps[-1]
    assert x[:4].max() <= 1  # no plant among the probe images: shown in [0, 1] scaled to 255
    for t, pic in zip(header["tiles"], pics):
        if t["role"] == "patch":
            top, bottom, left, right = t["crop"]
            want = np.round(x[t["image_index"], top:bottom, left:right] * 255)
            np.testing.assert_array_equal(pic, want.astype(np.uint8))


def test_int_channels_are_drawn_among_maps_that_fire_reproducibly(tmp_path, planted):
    x, ds = planted
    model = keras.Sequential([keras.Input((32, 32, 3)),
                              keras.layers.Conv2D(8, 3, activation="relu", name="conv")])
    kernel, bias = model.get_layer("conv").get_weights()
    bias[[0, 2, 3, 5, 6]] = -1e4  # these maps never fire on images in [0, 11]
    model.get_layer("conv").set_weights([np.abs(kernel), bias])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    chosen = []
    for run in ("a", "b"):
        cb = tbviz.DeconvnetCallback(tmp_path / run, layers=["conv"], scan_data=ds, top_k=2,
                                     channels=2, seed=3, scan_limit=200, raw=True)
        model.fit(x[:4], np.zeros((4, 30, 30, 8)), epochs=1, verbose=0, callbacks=[cb])
        rows = units_rows(load(tmp_path / run / "train"), "conv")
        chosen.append(sorted({int(r["channel"]) for r in rows if r["set"] == 2}))
    assert chosen[0] == chosen[1]
    assert len(chosen[0]) == 2 and set(chosen[0]) <= {1, 4, 7}


def test_scan_data_makes_probe_images_optional_but_one_is_needed(tmp_path):
    with pytest.raises(ValueError, match="probe_images, scan_data or both"):
        tbviz.DeconvnetCallback(tmp_path, layers=["conv1"])
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        tbviz.DeconvnetCallback(tmp_path, layers=["conv1"], scan_data=np.zeros((2, 4, 4, 3)),
                                channels=0)


def test_bad_scan_data_fails_at_train_begin(tmp_path, planted):
    x, _ = planted
    model = frozen_detector()
    cb = tbviz.DeconvnetCallback(tmp_path, layers=["conv1"], scan_data=np.zeros((4, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        fit(model, x, cb, epochs=1)


@pytest.mark.parametrize("short", [False, True])
def test_tensorboard_viz_passes_scan_data_on(tmp_path, planted, short):
    x, _ = planted
    tf = pytest.importorskip("tensorflow")  # a tf.data pipeline, read on any backend
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), "int32"))).batch(100)
    model = frozen_detector()
    # the deconvnet part takes DeconvnetCallback's options; scan_data= is short for one of them
    options = {"scan_limit": 600, "channels": [0], "raw": True}
    given = dict(scan_data=ds, deconvnet=options) if short else dict(
        deconvnet={"scan_data": ds, **options})
    viz = tbviz.TensorBoardViz(tmp_path, layers=["conv1"], top_k=K, histograms=False,
                               graph=False, **given)
    fit(model, x, viz, epochs=1)
    rows = units_rows(load(tmp_path / "train"), "conv1")
    assert [r["image_index"] for r in rows if r["set"] == 2][:1] == [17]  # 600 images: one plant


def test_tensorboard_viz_refuses_scan_data_twice(tmp_path, planted):
    _, ds = planted
    with pytest.raises(ValueError, match="scan_data is given twice"):
        tbviz.TensorBoardViz(tmp_path, scan_data=ds, deconvnet={"scan_data": ds})


def test_a_vision_transformer_is_scanned_on_its_token_grid(tmp_path):
    shape = (32, 48, 3)
    model = models.compile(models.vit(shape))
    x = np.random.default_rng(3).uniform(0, 1, (40,) + shape).astype("float32")
    y = np.zeros(len(x), "int32")
    cb = tbviz.DeconvnetCallback(tmp_path, layers=["block1_out"], scan_data=Labelled(x),
                                 top_k=2, channels=[0, 1], strict=True)
    model.fit(x[:8], y[:8], epochs=1, verbose=0, callbacks=[cb])
    content, steps = panels(tmp_path / "train", "tbviz/deconvnet/block1_out/featuremaps")
    assert content["rule"] == "gradient"  # a token layer: the plain gradient, and said
    _, header, pngs = steps[-1]
    assert [g["channel"] for g in header["groups"]] == [0, 1]
    patches = [(t, png) for t, png in zip(header["tiles"], pngs) if t["role"] == "patch"]
    assert len(patches) == 2 * 2
    for tile, png in patches:
        # each patch is its token's 8 x 8 cell of the scanned image, enlarged
        i, r, c = tile["image_index"], tile["row"], tile["col"]
        scale = png.shape[0] // 8
        want = np.round(x[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8] * 255).astype(np.uint8)
        np.testing.assert_array_equal(png[::scale, ::scale], want)
