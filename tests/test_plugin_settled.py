"""The step at which a layer settled, as the tbviz tab gets it with the layer's panels.

The run (plugin_logs.write_settle_run) trains nothing (learning rate 0) except two kicks
at known steps, so ConvergenceCallback must say conv1 settled at step 3 and conv2 never;
the scalars and text events are read back with TensorBoard's readers, the tab's view of
them through TensorBoard's WSGI app and data provider (test_plugin_routes.make_client).
"""

import keras
import numpy as np
import pytest

import eventfiles
import models
import plugin_logs
from test_plugin_routes import get_json, make_client
from tbviz.callbacks.convergence import ConvergenceCallback
from tbviz.summary import metadata

RULE = "linear CKA with the previous log; settled when vs_previous >= 0.99 for 3 logs in a row"


@pytest.fixture(scope="module")
def settle(tmp_path_factory):
    root, run_dir = plugin_logs.settle_logs(tmp_path_factory)
    return make_client(root), run_dir


def panels_of(client, run):
    [item] = [i for i in get_json(client, "/panels")["items"] if i["run"] == run]
    return {p["tag"]: p for p in item["panels"]}


def test_the_kicks_move_the_layers_where_planned(settle):
    _, run_dir = settle
    moved = {layer: [s for s, v in eventfiles.scalars(run_dir, f"convergence/{layer}/vs_previous")
                     if v < 0.99] for layer in ("conv1", "conv2")}
    assert moved == {"conv1": [2], "conv2": [2, 5]}  # conv2 sits on conv1: both move at 2
    # quiet at 3, 4, 5: settled at 3, said at 5; conv2 is never quiet three logs in a row
    assert eventfiles.texts(run_dir, "convergence/conv1/settled") == [
        (5, "layer conv1 settled at step 3")]
    assert "convergence/conv2/settled" not in eventfiles.tags(run_dir)


def test_each_layers_panels_carry_its_settled_step_and_rule(settle):
    client, _ = settle
    panels = panels_of(client, "settle/train")
    assert panels["tbviz/deconvnet/conv1/evolution"]["convergence"] == {
        "layer": "conv1", "rule": RULE, "settled": [{"step": 3, "said_at": 5}]}
    # watched, not settled: an entry with no settling (the tab says "not settled yet")
    assert panels["tbviz/deconvnet/conv2/evolution"]["convergence"] == {
        "layer": "conv2", "rule": RULE, "settled": []}
    assert "convergence" not in panels["tbviz/deconvnet/seq/probes"]  # no layer


def test_a_run_without_convergence_carries_no_marker(tmp_path_factory):
    root, _ = plugin_logs.dashboard_logs(tmp_path_factory)
    for p in panels_of(make_client(root), "long/train").values():
        assert "convergence" not in p


def test_settled_again_after_a_move_lists_both_in_order(tmp_path):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="d"),
                              keras.layers.Dense(2, name="out")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
    cb = ConvergenceCallback(tmp_path, x[:10], layers=["d"], every_n_epochs=None,
                             every_n_steps=1)
    model.fit(x, np.zeros((40, 2)), batch_size=4, epochs=1, verbose=0,
              callbacks=[plugin_logs.Kicks({5: "d"}), cb])
    write_topk_panel(tmp_path / "train", "d", model="sequential")
    panel = panels_of(make_client(tmp_path), "train")["tbviz/deconvnet/d/topk"]
    assert panel["convergence"]["settled"] == [{"step": 1, "said_at": 3},
                                               {"step": 6, "said_at": 8}]


def write_topk_panel(run_dir, layer, model):
    """A one-tile top-k panel of ``layer`` of network ``model``, by the contract."""
    png = metadata.encode_png(np.zeros((4, 4, 3), np.uint8))
    with plugin_logs.writing(run_dir, step=1):
        metadata.write_panel(f"tbviz/deconvnet/{layer}/topk", metadata.TOPK, [png],
                             tiles=[{"role": "projection"}], layer=layer, layer_index=0,
                             model=model)


def test_a_panel_of_a_nested_network_finds_its_layer_by_path(tmp_path):
    # ConvergenceCallback sees the nested block's layer from the outer model
    # ("block/inner_conv"); a deconvnet of the block itself names it "inner_conv" of "block".
    keras.utils.set_random_seed(0)
    model = models.compile(models.functional_bn_nested())
    x, y = models.data(8)
    cb = ConvergenceCallback(tmp_path, x[:4])
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert "block/inner_conv" in cb.layers
    write_topk_panel(tmp_path / "train", "inner_conv", model="block")
    write_topk_panel(tmp_path / "train", "block/inner_conv", model="func")
    write_topk_panel(tmp_path / "train", "gap", model="func")  # not watched
    panels = panels_of(make_client(tmp_path), "train")
    assert panels["tbviz/deconvnet/inner_conv/topk"]["convergence"]["layer"] == "block/inner_conv"
    assert panels["tbviz/deconvnet/block/inner_conv/topk"]["convergence"]["layer"] == \
        "block/inner_conv"
    assert "convergence" not in panels["tbviz/deconvnet/gap/topk"]


def test_match_layer_takes_only_an_unambiguous_path():
    watched = ["vgg19/block1_conv1", "transform/block1_conv1", "conv1"]
    assert metadata.match_layer("conv1", "vgg19", watched) == "conv1"
    assert metadata.match_layer("block1_conv1", "vgg19", watched) == "vgg19/block1_conv1"
    assert metadata.match_layer("block1_conv1", None, watched) is None  # two fit
    assert metadata.match_layer("net/conv1", None, watched) == "conv1"
    assert metadata.match_layer("onv1", None, watched) is None  # only whole path parts


def test_settled_message_is_what_the_callback_writes_and_the_tab_reads():
    assert metadata.parse_settled(b"layer a/b settled at step 12") == ("a/b", 12)
    assert metadata.parse_settled("layer a moved") is None
