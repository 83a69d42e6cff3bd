"""A rule that meets no activation computes the plain gradient, and the dashboards say so."""

import logging

import keras
import numpy as np
import pytest

import tbviz
from eventfiles import load, panels
from tbviz.callbacks.attribution import AttributionCallback

L = keras.layers


def model(activation):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv"),
                          L.Activation(activation, name="act"), L.GlobalAveragePooling2D(),
                          L.Dense(2, name="head")])
    m.compile("sgd", "mse")
    return m


def fit(m, callback, epochs=2):
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    m.fit(x, np.zeros((4, 2)), epochs=epochs, verbose=0, callbacks=[callback])


def said(caplog):
    return [r.getMessage() for r in caplog.records if "has no activation" in r.getMessage()]


@pytest.mark.parametrize("activation,plain", [("tanh", True), ("gelu", False)])
def test_deconvnet_panel_says_when_it_is_the_plain_gradient(tmp_path, caplog, activation, plain):
    cb = tbviz.DeconvnetCallback(tmp_path, probe_images=np.ones((1, 8, 8, 3), "float32"),
                                 layers=["act"], top_k=2)
    with caplog.at_level(logging.WARNING):
        fit(model(activation), cb)
    content, _ = panels(tmp_path / "train", "tbviz/deconvnet/act/topk")
    description = load(tmp_path / "train").SummaryMetadata(
        "tbviz/deconvnet/act/topk").summary_description
    if plain:
        assert content["rule"] == "gradient"
        assert description.startswith("gradient projections") and "has no activation" in description
        assert len(said(caplog)) == 1  # once for the run, not once per epoch
    else:
        assert content["rule"] == "deconvnet"
        assert description.startswith("deconvnet projections") and not said(caplog)


@pytest.mark.parametrize("activation,plain", [("sigmoid", True), ("relu", False)])
def test_guided_backprop_panel_says_when_it_is_saliency(tmp_path, caplog, activation, plain):
    cb = AttributionCallback(tmp_path, probe_images=np.ones((1, 8, 8, 3), "float32"),
                             methods=["guided_backprop"])
    with caplog.at_level(logging.WARNING):
        fit(model(activation), cb)
    description = load(tmp_path / "train").SummaryMetadata(
        "tbviz/attribution/guided_backprop").summary_description
    assert ("the same as saliency" in description) == plain
    assert len(said(caplog)) == int(plain)
