"""DeconvnetCallback: what it writes, read back with TensorBoard's EventAccumulator."""

import json
import logging
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbviz
from eventfiles import image_steps, load, panels
from tbviz import deconvnet
from tbviz.callbacks.deconvnet import UNIT_COLUMNS
from tbviz.core.layers import layer_paths
from tbviz.summary import images as tiles_lib
from tbviz.summary import events, metadata

L = keras.layers


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(6, 3, padding="same", activation="relu", name="conv1"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(5, 3, name="conv2"),
        L.BatchNormalization(name="bn"),
        L.ReLU(name="relu2"),
        L.Dropout(0.25),
        L.GlobalAveragePooling2D(),
        L.Dense(2, name="head"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    y = rng.normal(0, 1, (16, 2)).astype("float32")
    return x, y


def enlarge(tile, side):
    s = max(1, math.ceil(64 / side))
    return np.repeat(np.repeat(tile, s, 0), s, 1)


def fit_logged(tmp_path, data, **options):
    """Fit the small model 2 epochs (2 steps each) with a DeconvnetCallback on conv1 and relu2;
    returns the model, the probe images, the evolution channels computed independently
    (highest mean activation at train begin) and the run read back."""
    x, y = data
    model = small_model()
    probes = x[:3]
    before = keras.Model(model.inputs[0], model.get_layer("relu2").output)(probes).numpy()
    channels = list(np.argsort(-before.mean(axis=(0, 1, 2)), kind="stable")[:4])
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=probes, layers=["conv1", "relu2"],
                                 top_k=4, **options)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
    return model, probes, channels, load(tmp_path / "train")


class ShowsProbes(keras.callbacks.Callback):
    """Writes the probe images as a tbviz panel at every epoch end, as ``StylizedProbes``
    writes the photos that the style pipeline's VGG19 looks at."""

    tag = "tbviz/shown/probes"

    def __init__(self, run_dir, images):
        super().__init__()
        self.writer = events.EventWriter.open(str(run_dir))
        self.images = images

    def on_epoch_end(self, epoch, logs=None):
        shown = tiles_lib.for_display(self.images)
        with self.writer.as_default(step=int(self.model.optimizer.iterations.numpy())):
            metadata.write_panel(self.tag, metadata.STYLIZED,
                                 [metadata.encode_image(im) for im in shown],
                                 tiles=[{"label": f"photo {i}", "index": i}
                                        for i in range(len(shown))])
        self.writer.flush()


def test_patches_are_cut_from_a_probes_panel_another_callback_writes(tmp_path, data):
    x, y = data
    model, probes = small_model(), x[:3]
    shows = ShowsProbes(tmp_path / "train", probes)
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=probes, layers=["relu2"], top_k=4,
                                 probes_panel=shows.tag)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[shows, cb])
    acc = load(tmp_path / "train")
    assert f"tbviz/deconvnet/{model.name}/probes" not in acc.Tags()["tensors"]  # stored once
    content, steps = panels(acc, "tbviz/deconvnet/relu2/topk")
    assert content["sources"] == shows.tag and content["source_size"] == [12, 12]
    step, header, tiles = steps[-1]
    units = deconvnet.strongest(model, probes, "relu2", k=4, distinct=True)
    boxes = deconvnet.windows(model, probes.shape[1:], "relu2", units)
    patches = deconvnet.patches(model, probes, "relu2", units)
    assert step == 4 and [t["role"] for t in header["tiles"]] == ["projection"] * 4 + ["patch"] * 4
    for i, (box, patch) in enumerate(zip(boxes, patches)):
        t = header["tiles"][4 + i]
        assert t["crop"] == list(box) and "source_step" not in t  # this step's images
        np.testing.assert_array_equal(tiles[4 + i], np.round(patch).astype(np.uint8))


def test_probes_panel_is_a_tbviz_tag_beside_probe_images():
    with pytest.raises(ValueError, match="probes_panel must be None or the tag"):
        tbviz.DeconvnetCallback("/tmp/x", probe_images=np.zeros((1, 8, 8, 3)), layers=["c"],
                                probes_panel="stylized/probes")
    with pytest.raises(ValueError, match="give probe_images too"):
        tbviz.DeconvnetCallback("/tmp/x", scan_data=np.zeros((1, 8, 8, 3)), layers=["c"],
                                probes_panel="tbviz/stylized/probes")


@pytest.mark.numerics
def test_defaults_write_each_tile_once_as_the_tabs_panels(tmp_path, data):
    model, probes, expected_channels, acc = fit_logged(tmp_path, data)
    # Only the tbviz tab's panels and the probe images their patches are cut from: no
    # Images-dashboard copy, no raw tensors (both opt-in); and what the part cost.
    assert sorted(acc.Tags()["tensors"]) == sorted(
        [f"tbviz/deconvnet/{layer}/{kind}" for layer in ("conv1", "relu2")
         for kind in ("topk", "evolution", "perimage")] + [f"tbviz/deconvnet/{model.name}/probes"]
        + ["tbviz/cost/deconvnet", "tbviz/cost/deconvnet_setup"])
    for tag in acc.Tags()["tensors"]:  # the fixed probe images once, at the first step
        if tag != "tbviz/cost/deconvnet_setup":  # once, at train begin (step 0)
            assert [e.step for e in acc.Tensors(tag)] == (
                [2] if tag.endswith("/probes") else [2, 4]), tag

    # The last step was written with the final weights: recompute it with the pure functions.
    layer = "relu2"
    units = deconvnet.strongest(model, probes, layer, k=4, distinct=True)
    proj = deconvnet.project(model, probes, layer, units)
    boxes = deconvnet.windows(model, probes.shape[1:], layer, units)
    patches = deconvnet.patches(model, probes, layer, units)
    final = deconvnet.strongest(model, probes, layer, channels=expected_channels)
    # Tiles of a layer share one enlargement, set by its largest field.
    side = max(max(b - t, r - lft) for t, b, lft, r in
               deconvnet.windows(model, probes.shape[1:], layer, units + final))

    step, header, tiles = panels(acc, f"tbviz/deconvnet/{layer}/topk")[1][-1]
    md = acc.SummaryMetadata(f"tbviz/deconvnet/{layer}/topk")
    assert md.plugin_data.plugin_name == "tbviz"
    content = metadata.parse_panel_metadata(md.plugin_data.content)
    probes_tag = f"tbviz/deconvnet/{model.name}/probes"
    assert content == {"version": metadata.VERSION, "kind": "topk", "layer": layer,
                       "rule": "deconvnet", "k": 4, "layer_index": layer_paths(model).index(layer),
                       "model": model.name, "sources": probes_tag, "source_size": [12, 12]}
    assert step == 4 and len(tiles) == 8
    assert [t["role"] for t in header["tiles"]] == ["projection"] * 4 + ["patch"] * 4
    for i, (u, t) in enumerate(zip(units + units, header["tiles"])):
        assert (t["unit"], t["image_index"], t["row"], t["col"], t["channel"]) == (
            i % 4, u.image_index, u.row, u.col, u.channel)
        assert t["value"] == pytest.approx(u.value, rel=1e-5)
    for i, (box, p) in enumerate(zip(boxes, proj)):
        t, b, lft, r = box
        want = tiles_lib.to_rgb(tiles_lib.normalize(p[None, t:b, lft:r]))[0]
        # The callback projects all its units in one batch, this in another: float32
        # rounding may differ, and move a pixel across a rounding boundary by one level.
        np.testing.assert_allclose(tiles[i].astype(int), enlarge(want, side).astype(int),
                                   atol=1)
        # The patch is cut by the dashboard from the probe image, stored once per run
        # (a fixed array does not change): at the first logged step, which the tile names.
        assert header["tiles"][4 + i]["crop"] == list(box)
        assert header["tiles"][4 + i]["source_step"] == 2
        np.testing.assert_array_equal(tiles[4 + i], np.round(patches[i]).astype(np.uint8))
    assert max(t.shape[0] for t in tiles[:4]) >= 64  # an 8x8 field is enlarged to be seen
    probe_steps = panels(acc, probes_tag)[1]
    assert [step for step, _, _ in probe_steps] == [2]
    np.testing.assert_array_equal(probe_steps[-1][2], np.round(probes).astype(np.uint8))

    # Evolution: the same fixed channels at every step, each its strongest unit.
    evo = panels(acc, f"tbviz/deconvnet/{layer}/evolution")[1]
    assert len(evo) == 2
    for _, header, tiles in evo:
        chans = [t["channel"] for t in header["tiles"] if t["role"] == "projection"]
        assert chans == expected_channels
        assert len(tiles) == 8
    assert [(t["image_index"], t["row"], t["col"]) for t in evo[-1][1]["tiles"][:4]] == [
        (u.image_index, u.row, u.col) for u in final]
    # Each shows its unit's projection; one also in the top-k is that panel's tile, not a copy.
    final_proj = deconvnet.project(model, probes, layer, final)
    final_boxes = deconvnet.windows(model, probes.shape[1:], layer, final)
    for i, ((t, b, lft, r), p) in enumerate(zip(final_boxes, final_proj)):
        want = tiles_lib.to_rgb(tiles_lib.normalize(p[None, t:b, lft:r]))[0]
        # Projected in another batch than the callback's: within one level (see above).
        np.testing.assert_allclose(evo[-1][2][i].astype(int), enlarge(want, side).astype(int),
                                   atol=1)
    shared = [t for t in evo[-1][1]["tiles"][:4] if "crop" in t]
    assert 0 < len(shared) == len(set(final) & set(units)) < 4  # both kinds of tile here
    assert all(t["sources"] == f"tbviz/deconvnet/{layer}/topk" for t in shared)

    # Through the layers: each probe image's strongest unit, its projection; one also in the
    # top-k is again that panel's tile.
    _, header, tiles = panels(acc, f"tbviz/deconvnet/{layer}/perimage")[1][-1]
    own = [deconvnet.strongest(model, probes[i:i + 1], layer, k=1)[0] for i in range(3)]
    assert [(t["image_index"], t["row"], t["col"], t["channel"]) for t in header["tiles"]] == [
        (i, u.row, u.col, u.channel) for i, u in enumerate(own)]
    own = [u._replace(image_index=i) for i, u in enumerate(own)]
    own_proj = deconvnet.project(model, probes, layer, own)
    own_boxes = deconvnet.windows(model, probes.shape[1:], layer, own)
    for i, ((t, b, lft, r), p) in enumerate(zip(own_boxes, own_proj)):
        want = tiles_lib.to_rgb(tiles_lib.normalize(p[None, t:b, lft:r]))[0]
        # Projected in another batch than the callback's: within one level (see above).
        np.testing.assert_allclose(tiles[i].astype(int), enlarge(want, side).astype(int), atol=1)
    shared = [t for t in header["tiles"] if "crop" in t]
    assert len(shared) == len({(u.image_index, u.row, u.col, u.channel) for u in own}
                              & {(u.image_index, u.row, u.col, u.channel) for u in units})
    assert all(t["sources"] == f"tbviz/deconvnet/{layer}/topk" for t in shared)


@pytest.mark.numerics
def test_opt_in_grids_and_raw_tensors_hold_what_the_panels_show(tmp_path, data):
    model, probes, expected_channels, acc = fit_logged(tmp_path, data, image_grids=True,
                                                       raw=True)
    tags = acc.Tags()["tensors"]
    for layer in ("conv1", "relu2"):
        for name in ("projections", "patches", "evolution", "raw", "units"):
            assert [e.step for e in acc.Tensors(f"deconvnet/{layer}/{name}")] == [2, 4]
        for name in ("topk", "evolution"):
            assert f"tbviz/deconvnet/{layer}/{name}" in tags
    layer = "relu2"
    _, _, tiles = panels(acc, f"tbviz/deconvnet/{layer}/topk")[1][-1]
    _, _, evo_tiles = panels(acc, f"tbviz/deconvnet/{layer}/evolution")[1][-1]
    # Images-dashboard grids: the panels' tiles, one grid of k each (2x2 for k=4). That
    # dashboard shows images at their own size, so its patches are enlarged like the
    # projections (the tbviz tab scales its crops in the browser).
    scale = tiles[0].shape[0] // tiles[4].shape[0]  # unit 0's projection and its patch
    patches = [np.repeat(np.repeat(t, scale, 0), scale, 1) for t in tiles[4:]]
    for name, grid_tiles in (("projections", tiles[:4]), ("patches", patches),
                             ("evolution", evo_tiles[:4])):
        grid = image_steps(acc.Tensors(f"deconvnet/{layer}/{name}")[-1])[0]
        th, tw = max(t.shape[0] for t in grid_tiles), max(t.shape[1] for t in grid_tiles)
        assert grid.shape == (2 * th + 2, 2 * tw + 2, 3)
        for i, tile in enumerate(grid_tiles):  # row-major, centred in its cell
            y = (i // 2) * (th + 2) + (th - tile.shape[0]) // 2
            x = (i % 2) * (tw + 2) + (tw - tile.shape[1]) // 2
            np.testing.assert_array_equal(grid[y:y + tile.shape[0], x:x + tile.shape[1]], tile)

    # Raw tensors for re-rendering: float16 cut to the field, plus the unit table.
    units = deconvnet.strongest(model, probes, layer, k=4, distinct=True)
    proj = deconvnet.project(model, probes, layer, units)
    boxes = deconvnet.windows(model, probes.shape[1:], layer, units)
    raw = tf.make_ndarray(acc.Tensors(f"deconvnet/{layer}/raw")[-1].tensor_proto)
    table = tf.make_ndarray(acc.Tensors(f"deconvnet/{layer}/units")[-1].tensor_proto)
    assert raw.dtype == np.float16 and raw.shape[0] == table.shape[0] == 8
    col = {name: i for i, name in enumerate(UNIT_COLUMNS)}
    for i, (box, p) in enumerate(zip(boxes, proj)):
        t, b, lft, r = box
        assert tuple(table[i, col["top"]:]) == box and table[i, col["set"]] == 0
        # float16 keeps 11 significant bits: relative error <= 2**-11 ~ 5e-4 of each value
        # (2e-3 leaves room for the float32 rounding of two different projection passes).
        np.testing.assert_allclose(raw[i, :b - t, :r - lft].astype(np.float32),
                                   p[t:b, lft:r], rtol=2e-3, atol=1e-3 * np.abs(p).max())
    assert list(table[4:, col["channel"]]) == expected_channels
    md = acc.SummaryMetadata(f"deconvnet/{layer}/raw")
    assert md.plugin_data.plugin_name == metadata.RAW_PLUGIN_NAME
    about = metadata.parse_raw_metadata(md.plugin_data.content)
    assert about["columns"] == list(UNIT_COLUMNS) and about["layer"] == layer


def test_probe_model_and_images_as_callables(tmp_path):
    # Style-transfer shape: a trained image-to-image net, probed through a fixed loss network.
    keras.utils.set_random_seed(1)
    transform = keras.Sequential([keras.Input((12, 12, 3)),
                                  L.Conv2D(3, 3, padding="same", name="t1")], name="transform")
    transform.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    features = keras.Sequential([keras.Input((12, 12, 3)),
                                 L.Conv2D(4, 3, padding="same", activation="relu", name="b1"),
                                 L.MaxPooling2D(2, name="p1"),
                                 L.Conv2D(4, 3, activation="relu", name="b2")], name="vgg")
    inp = keras.Input((12, 12, 3))
    loss_net = keras.Model(inp, features(L.Rescaling(1 / 255.0, name="prep")(inp)))
    photos = np.random.default_rng(2).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    seen = []

    def stylize(model):
        out = np.clip(model(photos, training=False).numpy(), 0, 255)
        seen.append(out)
        return out

    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=stylize, layers="vgg/b2", top_k=3,
                                 probe_model=lambda model: loss_net, channels=[0, 2])
    transform.fit(photos, photos, epochs=2, verbose=0, callbacks=[cb])
    assert len(seen) == 3  # train begin, then each epoch
    acc = load(tmp_path / "train")
    step, header, tiles = panels(acc, "tbviz/deconvnet/vgg/b2/topk")[1][-1]
    units = deconvnet.strongest(loss_net, seen[-1], "vgg/b2", k=3)
    assert [(t["image_index"], t["row"], t["col"], t["channel"])
            for t in header["tiles"][:3]] == [tuple(u[:4]) for u in units]
    patches = deconvnet.patches(loss_net, seen[-1], "vgg/b2", units)
    for tile, p in zip(tiles[3:], patches):  # cut from the stylized photos of that step
        np.testing.assert_array_equal(tile, np.round(p).astype(np.uint8))
    evo = panels(acc, "tbviz/deconvnet/vgg/b2/evolution")[1][-1][1]
    assert [t["channel"] for t in evo["tiles"]] == [0, 2, 0, 2]


def test_traced_once_over_five_epochs(tmp_path, data):
    x, y = data
    model = small_model()
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=x[:2], layers=["conv1", "relu2"],
                                 top_k=3, every_n_steps=3, every_n_epochs=1)
    traces = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            traces.append(cb._projector.trace_count)

    model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0, callbacks=[cb, Count()])
    assert traces == [traces[0]] * 5
    # Activations and one projection per layer: both fields (3x3, 8x8) are smaller than the
    # 12x12 images, so units go one crop each and no shared (vectorized) trace is needed.
    assert traces[0] == 1 + 2
    steps = [e.step for e in load(tmp_path / "train").Tensors("tbviz/deconvnet/conv1/topk")]
    assert steps == sorted(set(range(3, 11, 3)) | {2, 4, 6, 8, 10})
    # A second fit() continues the run: nothing traced again, the same feature maps followed.
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[cb, Count()])
    assert traces[-1] == traces[0]
    evo = panels(tmp_path / "train", "tbviz/deconvnet/relu2/evolution")[1]
    assert [e[0] for e in evo][-2:] == [10, 12]
    assert len({tuple(t["channel"] for t in header["tiles"]) for _, header, _ in evo}) == 1


def test_training_is_bit_identical_with_the_callback(tmp_path, data):
    x, y = data
    plain, probed = small_model(seed=5), small_model(seed=5)
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=x[:2], layers=["conv1", "relu2"],
                                 top_k=2, every_n_steps=1, rule="guided")
    keras.utils.set_random_seed(9)
    probed.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
    keras.utils.set_random_seed(9)
    plain.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(probed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_fail_early(tmp_path, data):
    x, y = data
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        tbviz.DeconvnetCallback(tmp_path, x[:2], ["conv1"], top_k=0)
    with pytest.raises(ValueError, match="unknown rule 'zeiler'"):
        tbviz.DeconvnetCallback(tmp_path, x[:2], ["conv1"], rule="zeiler")
    with pytest.raises(ValueError, match="layers must be a layer path"):
        tbviz.DeconvnetCallback(tmp_path, x[:2], [])
    with pytest.raises(ValueError, match="probe_model must be None, a keras.Model or a callable"):
        tbviz.DeconvnetCallback(tmp_path, x[:2], ["conv1"], probe_model="vgg19")
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer"):
        tbviz.DeconvnetCallback(tmp_path, x[:2], ["conv1"], every_n_epochs=0)

    def fit_with(**kwargs):
        model = small_model()
        start = [w.copy() for w in model.get_weights()]
        cb = tbviz.DeconvnetCallback(tmp_path, **kwargs)
        with pytest.raises(ValueError) as err:
            model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
        for a, b in zip(start, model.get_weights()):  # raised before any training step
            np.testing.assert_array_equal(a, b)
        return str(err.value)

    msg = fit_with(probe_images=x[:2], layers=["conv1", "conv9"])
    assert "'conv9'" in msg and "conv1, pool1, conv2, bn, relu2" in msg
    msg = fit_with(probe_images=x[:2, :10], layers=["conv1"])
    assert "(N,) + (12, 12, 3)" in msg
    msg = fit_with(probe_images=x[:2], layers=["conv1"], channels=[2, 6])
    assert "6 channels, choose from 0..5" in msg
    msg = fit_with(probe_images=x[:2], layers=["conv1"], channels={"conv2": [0]})
    assert "'conv2'" in msg and "not among layers" in msg


@pytest.mark.numerics
def test_non_finite_weights_are_skipped_and_said_once(tmp_path, caplog):
    # A fixed probe network with one NaN feature map; the trained model is unaffected.
    keras.utils.set_random_seed(4)
    features = keras.Sequential([keras.Input((12, 12, 3)),
                                 L.Conv2D(4, 3, activation="relu", name="b1"),
                                 L.Conv2D(4, 3, name="b2")], name="features")
    kernel, bias = features.get_layer("b2").get_weights()
    kernel[..., 1] = np.nan
    features.get_layer("b2").set_weights([kernel, bias])
    trained = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(3, 1, name="t")])
    trained.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype("float32")
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=x[:2], layers=["b1", "b2"], top_k=3,
                                 probe_model=features, raw=True)
    with caplog.at_level(logging.WARNING):
        trained.fit(x, x / 255, epochs=3, verbose=0, callbacks=[cb])
    said = [r.getMessage() for r in caplog.records if "'b2'" in r.getMessage()]
    # Said once each, not once per epoch: no message repeats. The NaN activations are
    # always said; how far NaN spreads into the projections depends on the kernels.
    assert said and len(said) == len(set(said)) and all("NaN or Inf" in m for m in said)
    assert any("NaN or Inf activations" in m for m in said), said
    acc = load(tmp_path / "train")
    steps = panels(acc, "tbviz/deconvnet/b2/topk")[1]
    assert len(steps) == 3
    header, tiles = steps[-1][1], steps[-1][2]
    assert len(tiles) == 6 and all(t.size for t in tiles)  # every tile decodes
    assert len(header["tiles"]) == 6
    assert all(t["channel"] != 1 and math.isfinite(t["value"]) for t in header["tiles"])
    json.dumps(header, allow_nan=False)  # strict JSON: no NaN anywhere
    evo = panels(acc, "tbviz/deconvnet/b2/evolution")[1][-1][1]
    assert 1 not in [t["channel"] for t in evo["tiles"]]
    raw = tf.make_ndarray(acc.Tensors("deconvnet/b2/raw")[-1].tensor_proto)
    assert np.isfinite(raw).all()
    assert len(panels(acc, "tbviz/deconvnet/b1/topk")[1]) == 3
    assert not [r for r in caplog.records if "'b1'" in r.getMessage()]
