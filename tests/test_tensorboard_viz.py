"""TensorBoardViz end to end: one run, every dashboard, a real server and a real browser."""

import os

import keras
import numpy as np
import pytest

import tbviz
from eventfiles import load, panels
from tbviz import deconvnet
from models import compile, data, functional_bn_nested
from tbserver import browser, get, tensorboard, wait_for


def fit(model, log_dir, epochs=2, **kwargs):
    x, y = data(32)
    options = dict(probe_images=x[:4], probe_labels=y[:4], losses={"every_n_steps": 1})
    options.update(kwargs)
    viz = tbviz.TensorBoardViz(str(log_dir), **options)
    hist = model.fit(x, y, epochs=epochs, batch_size=8, validation_split=0.25, verbose=0,
                     shuffle=False, callbacks=[viz])
    return viz, hist


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    keras.utils.set_random_seed(1234)
    model = compile(functional_bn_nested())
    fit(model, logdir / "demo", attribution=["saliency", "grad_cam"])
    return logdir


def test_one_event_file_per_run_directory(run):
    for sub in ("train", "validation"):
        files = [f for f in os.listdir(run / "demo" / sub) if "tfevents" in f]
        assert len(files) == 1, files


def test_every_part_lands_in_the_train_run(run):
    tags = load(run / "demo" / "train").Tags()
    tensors = set(tags["tensors"])
    assert tags["graph"]
    assert {"keras", "custom_scalars__config__", "epoch_loss", "batch_loss", "conv1/kernel",
            "gradients/conv1/kernel", "activations/block/inner_conv",
            "dead_units/block/inner_conv"} <= tensors
    # Deconvnet on the default layers (every Conv2D here, nested one included), as the tbviz
    # tab's panels only (the Images-dashboard grids and raw tensors are opt-in).
    assert {"tbviz/deconvnet/conv1/topk", "tbviz/deconvnet/conv1/evolution",
            "tbviz/deconvnet/block/inner_conv/topk"} <= tensors
    assert not [t for t in tensors if t.startswith("deconvnet/")]
    # Feature maps of the first and last conv layer, kernels of the first; attribution.
    assert {"feature_maps/conv1", "feature_maps/block/inner_conv", "kernels/conv1",
            "attribution/saliency", "attribution/grad_cam", "tbviz/attribution/grad_cam"} <= tensors


def test_dashboards_over_http(run):
    with tensorboard(run) as url:
        runs = wait_for(lambda: get(url + "/data/runs"))
        assert {"demo/train", "demo/validation"} <= set(runs)
        scal = wait_for(lambda: get(url + "/data/plugin/scalars/tags").get("demo/validation"))
        assert "epoch_loss" in scal
        series = get(url + "/data/plugin/scalars/scalars?run=demo/train&tag=epoch_loss")
        assert [row[1] for row in series] == [0, 1]
        layout = get(url + "/data/plugin/custom_scalars/layout")
        charts = [c for cat in layout["category"] for c in cat["chart"]]
        assert any("epoch_" in t and "loss" in t for c in charts for t in c["multiline"]["tag"])
        hist_tags = get(url + "/data/plugin/histograms/tags")["demo/train"]
        assert {"conv1/kernel", "gradients/head/kernel", "activations/act1"} <= set(hist_tags)
        hist = get(url + "/data/plugin/histograms/histograms?run=demo/train&tag=conv1/kernel")
        assert len(hist) == 2 and hist[0][2]  # two steps, buckets present
        dist = get(url + "/data/plugin/distributions/distributions?run=demo/train&tag=conv1/kernel")
        assert len(dist) == 2 and len(dist[0][2]) == 9  # TensorBoard's 9 percentile bands
        info = get(url + "/data/plugin/graphs/info")
        assert info["demo/train"]["run_graph"]
        assert info["demo/train"]["tags"]["keras"]["conceptual_graph"]
        graph = get(url + "/data/plugin/graphs/graph?run=demo/train").decode()
        for layer in ("func/conv1", "func/bn1", "func/block/inner_conv", "func/head"):
            assert f'name: "{layer}/' in graph


@pytest.mark.browser
def test_graphs_dashboard_renders_and_expands_in_chromium(run, tmp_path):
    with tensorboard(run) as url, browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url + "/#graphs")
        model_node = page.locator("g.node", has_text="func").first
        model_node.wait_for(timeout=60_000)
        assert "Graph visualization failed" not in page.inner_text("body")
        model_node.dblclick()
        for layer in ("conv1", "bn1", "act1", "block", "head"):
            page.locator("g.node", has_text=layer).first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "graph.png"))


def test_training_is_identical_with_and_without_tbviz(tmp_path):
    x, y = data(32)
    keras.utils.set_random_seed(5)
    plain = compile(functional_bn_nested())
    h_plain = plain.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    keras.utils.set_random_seed(5)
    viz_model = compile(functional_bn_nested())
    viz = tbviz.TensorBoardViz(str(tmp_path), probe_images=x[:4], probe_labels=y[:4],
                               every_n_steps=2, losses={"every_n_steps": 1}, attribution=True,
                               synthesis={"maximize": {"conv1": 2}, "steps": 4})
    h_viz = viz_model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False, callbacks=[viz])
    assert h_plain.history == h_viz.history
    for a, b in zip(plain.get_weights(), viz_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrong_probe_shape_fails_at_train_begin_and_leaves_no_writer_open(tmp_path):
    model = compile(functional_bn_nested())
    x, y = data(8)
    viz = tbviz.TensorBoardViz(str(tmp_path), probe_images=np.zeros((2, 5, 5, 3)), deconvnet=False)
    with pytest.raises(ValueError, match=r"\(12, 12, 3\)"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[viz])
    from tbviz.summary import writers

    assert not any(str(tmp_path) in p for p in writers._open)


def test_unknown_deconvnet_layer_lists_the_layers(tmp_path):
    model = compile(functional_bn_nested())
    x, y = data(8)
    viz = tbviz.TensorBoardViz(str(tmp_path), probe_images=x[:2], layers=["conv9"])
    with pytest.raises(ValueError, match=r"conv9.*conv1.*block/inner_conv"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[viz])


def test_parts_can_be_switched_off(tmp_path):
    model = compile(functional_bn_nested())
    fit(model, tmp_path, epochs=1, graph=False, histograms=False, deconvnet=False)
    tags = load(tmp_path / "train").Tags()
    assert not tags["graph"] and "conv1/kernel" not in tags["tensors"]
    assert "epoch_loss" in tags["tensors"]


def test_empty_layer_list_turns_the_deconvnet_off(tmp_path):
    model = compile(functional_bn_nested())
    fit(model, tmp_path, epochs=1, layers=[])
    assert not any(t.startswith("deconvnet/") for t in load(tmp_path / "train").Tags()["tensors"])


def test_every_option_of_every_part_is_reachable(tmp_path):
    # Options that only the parts' own callbacks had (distinct, channels, the attribution
    # target and layer) reach them through the dicts; the short forms (layers=, top_k=,
    # a list of methods) still work beside them.
    keras.utils.set_random_seed(3)
    model = compile(functional_bn_nested())
    x, _ = data(32)
    fit(model, tmp_path, epochs=1, graph=False, layers=["conv1"], top_k=8,
        deconvnet={"distinct": False, "channels": [0, 2], "probe_images": x[:1]},
        attribution={"methods": ["saliency", "grad_cam"], "target": 2, "layer": "conv1"},
        feature_maps={"layers": ["conv1"], "kernel_layers": []})
    run = load(tmp_path / "train")
    tensors = set(run.Tags()["tensors"])
    assert not run.Tags()["graph"]
    assert "feature_maps/conv1" in tensors and not any(t.startswith("kernels/") for t in tensors)
    # The one epoch-end trigger saw the final weights: the same units from the pure functions.
    _, steps = panels(run, "tbviz/deconvnet/conv1/topk")
    top = deconvnet.strongest(model, x[:1], "conv1", k=8, distinct=False)
    assert top != deconvnet.strongest(model, x[:1], "conv1", k=8, distinct=True)  # the default
    assert [(t["image_index"], t["row"], t["col"], t["channel"])
            for t in steps[-1][1]["tiles"] if t["role"] == "projection"] == [u[:4] for u in top]
    _, steps = panels(run, "tbviz/deconvnet/conv1/evolution")
    assert [t["channel"] for t in steps[-1][1]["tiles"] if t["role"] == "projection"] == [0, 2]
    assert (model.predict(x[:4], verbose=0).argmax(-1) != 2).any()  # the default differs
    for method in ("saliency", "grad_cam"):
        _, steps = panels(run, f"tbviz/attribution/{method}")
        assert [t["target"] for t in steps[-1][1]["tiles"]] == [2] * 4


@pytest.mark.parametrize("kwargs, message", [
    ({"deconvnet": {"distinc": False}},
     r"unknown deconvnet option\(s\) 'distinc'; DeconvnetCallback takes probe_images, layers, "
     r"top_k, .*distinct"),
    ({"attribution": {"method": ["saliency"]}}, r"AttributionCallback takes .*methods"),
    ({"histograms": "yes"}, r"histograms must be True, False or a dict of HistogramCallback"),
    ({"layers": ["conv1"], "deconvnet": {"layers": ["conv1"]}}, r"layers is given twice"),
    ({"feature_maps": "sometimes"}, r"feature_maps must be 'auto', True, False or a dict"),
    ({"every_n_steps": 0}, r"every_n_steps must be a positive integer or None"),
    ({"probe_images": lambda m: m, "attribution": True}, r"attribution needs probe_images as an "
                                                         r"array"),
    ({"convergence": {"threshold": 0.5}}, r"convergence needs probe_images as an array"),
])
def test_bad_part_options_fail_at_construction_naming_the_choices(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tbviz.TensorBoardViz(str(tmp_path), **kwargs)
    assert not os.listdir(tmp_path)


def test_strict_reaches_every_part_and_a_parts_own_dict_wins(tmp_path, monkeypatch):
    model = compile(functional_bn_nested())
    x, y = data(8)
    viz = tbviz.TensorBoardViz(str(tmp_path), probe_images=x[:4], probe_labels=y[:4],
                               strict=True, attribution=True,
                               synthesis={"maximize": {"conv1": 1}, "steps": 1},
                               histograms={"strict": False})
    viz.set_model(model)
    viz._add_model_dependent_parts()  # deconvnet and feature maps, as at train begin
    strict = {type(cb).__name__: cb.strict for cb in viz.callbacks}
    assert strict == {name: name != "HistogramCallback" for name in (
        "GraphCallback", "LossCallback", "HistogramCallback", "AttributionCallback",
        "SynthesisCallback", "ConvergenceCallback", "DeconvnetCallback", "FeatureMapsCallback")}

    # And it acts: a convergence failure ends fit under strict=True (off: switched off).
    import tbviz.callbacks.convergence as convergence

    def broken(*args, **kwargs):
        raise RuntimeError("injected CKA failure")

    monkeypatch.setattr(convergence, "cka_from_grams", broken)
    with pytest.raises(RuntimeError, match="injected CKA failure"):
        fit(compile(functional_bn_nested()), tmp_path / "strict", epochs=1, strict=True,
            graph=False, histograms=False, deconvnet=False, feature_maps=False)
