"""AttributionCallback(faithfulness=...) read back with TensorBoard's readers, on every backend:
the scalars per method and metric, their Custom Scalars charts, the curves panel and the
values on each heatmap tile, against the metrics recomputed on the trained model."""

import re

import keras
import numpy as np
import pytest
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util.tensor_util import make_ndarray

from tbviz import attribution as at
from tbviz import faithfulness as fa
from tbviz.callbacks.attribution import AttributionCallback
from eventfiles import load, panels, scalars, tags

pytestmark = pytest.mark.backends

METHODS = ("saliency", "grad_cam", "integrated_gradients")
OPTIONS = {"integrated_gradients": {"steps": 16}}
CHEAP = {"mu_fidelity": {"samples": 16}, "sensitivity_max": {"samples": 3}}


def classifier():
    model = keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def data(n=12):
    rng = np.random.default_rng(3)
    return rng.uniform(0, 255, (n, 12, 12, 3)).astype("float32"), np.arange(n) % 3


def read_layout(run):
    proto = load(run).Tensors("custom_scalars__config__")[-1].tensor_proto
    return layout_pb2.Layout.FromString(make_ndarray(proto).item())


def test_every_method_and_metric_is_logged_charted_and_drawn(tmp_path):
    x, y = data()
    model = classifier()
    probes = x[:3]
    options = {**CHEAP, **{m: {} for m in fa.METRICS if m not in CHEAP}}
    cb = AttributionCallback(tmp_path, probes, methods=METHODS, options=OPTIONS,
                             faithfulness=options, faithfulness_every=1, strict=True)
    model.fit(x, y, epochs=2, batch_size=6, verbose=0, shuffle=False, callbacks=[cb])
    run = tmp_path / "train"
    target = at.top_classes(model, probes)
    raws = {m: getattr(at, m)(model, probes, target, **OPTIONS.get(m, {})) for m in METHODS}
    dele = fa.deletion(model, probes, raws, target)
    ins = fa.insertion(model, probes, raws, target)
    mu = fa.mu_fidelity(model, probes, raws, target, **CHEAP["mu_fidelity"])
    want = {m: {"deletion": dele[m].auc, "insertion": ins[m].auc, "mu_fidelity": mu[m],
                "sparseness": fa.sparseness(raws[m]), "complexity": fa.complexity(raws[m]),
                "sensitivity_max": fa.sensitivity_max(model, probes, m, target,
                                                      options=OPTIONS.get(m),
                                                      **CHEAP["sensitivity_max"]),
                "random_logit": fa.random_logit(model, probes, m, target,
                                                options=OPTIONS.get(m))}
            for m in METHODS}
    for method in METHODS:
        for metric, values in want[method].items():
            logged = scalars(run, f"faithfulness/{method}/{metric}")
            assert [s for s, _ in logged] == [2, 4], (method, metric)
            np.testing.assert_allclose(logged[-1][1], fa.summary(values), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{method} {metric}")
        # each heatmap tile carries its image's values
        _, steps = panels(run, f"tbviz/attribution/{method}")
        for i, tile in enumerate(steps[-1][1]["tiles"]):
            for metric, values in want[method].items():
                got = tile["faithfulness"][metric]
                if np.isfinite(values[i]):
                    np.testing.assert_allclose(got, values[i], rtol=2e-3, atol=1e-4)
                else:
                    assert got is None
    # Integrated Gradients' completeness error, relative to f(x) - f(x'): small at 16 nodes
    completeness = scalars(run, "faithfulness/integrated_gradients/completeness")
    assert [s for s, _ in completeness] == [2, 4] and 0 <= completeness[-1][1] < 0.05

    # one Custom Scalars chart per metric, every method's tag in it and no other
    charts = {c.title.split(" (")[0]: c.multiline.tag[0]
              for cat in read_layout(run).category if cat.title == "faithfulness"
              for c in cat.chart}
    assert set(charts) == set(fa.METRICS) | {"completeness"}
    logged_tags = [t for t in tags(run) if t.startswith("faithfulness/")]
    for metric, regex in charts.items():
        matched = sorted(t for t in logged_tags if re.search(regex, t))
        expected = [f"faithfulness/{m}/{metric}" for m in METHODS
                    if metric != "completeness" or m == "integrated_gradients"]
        assert matched == sorted(expected), metric

    # the curves panel: each method's deletion and insertion curves, mean over the probes
    content, steps = panels(run, "tbviz/faithfulness/curves")
    assert content["kind"] == "faithfulness" and [s for s, _, _ in steps] == [2, 4]
    step, header, pictures = steps[-1]
    assert pictures == [] and header["tiles"] == []
    curves = {(g["method"], g["metric"]): g for g in header["groups"]}
    assert set(curves) == {(m, k) for m in METHODS for k in ("deletion", "insertion")}
    for method in METHODS:
        for metric, curve in (("deletion", dele[method]), ("insertion", ins[method])):
            g = curves[(method, metric)]
            np.testing.assert_allclose(g["fractions"], curve.fractions, atol=1e-4)
            np.testing.assert_allclose(g["scores"], curve.scores.mean(0), rtol=2e-3, atol=1e-4)
            np.testing.assert_allclose(g["auc"], curve.auc.mean(), rtol=2e-3, atol=1e-4)


def test_a_list_of_metrics_logs_only_those_and_a_callable_target_skips_the_random_logit(
        tmp_path):
    x, y = data()
    cb = AttributionCallback(tmp_path / "a", x[:2], methods=["saliency"],
                             faithfulness=["deletion", "sparseness"])
    cb2 = AttributionCallback(tmp_path / "b", x[:2], methods=["grad_cam"],
                              target=lambda out: out[:, 0], faithfulness=True,
                              every_n_epochs=None, every_n_steps=2)
    classifier().fit(x, y, epochs=1, batch_size=6, verbose=0, callbacks=[cb, cb2])
    got = sorted(t for t in tags(tmp_path / "a" / "train") if t.startswith("faithfulness/"))
    assert got == ["faithfulness/saliency/deletion", "faithfulness/saliency/sparseness"]
    got = {t.split("/")[-1] for t in tags(tmp_path / "b" / "train")
           if t.startswith("faithfulness/")}
    assert got == set(fa.METRICS) - {"random_logit"}


def test_faithfulness_is_measured_every_second_trigger_by_default(tmp_path):
    x, y = data()
    cb = AttributionCallback(tmp_path, x[:2], methods=["saliency"], faithfulness=["sparseness"])
    classifier().fit(x, y, epochs=3, batch_size=6, verbose=0, callbacks=[cb])
    run = tmp_path / "train"
    assert [s for s, _ in scalars(run, "faithfulness/saliency/sparseness")] == [2, 6]
    _, steps = panels(run, "tbviz/attribution/saliency")  # heatmaps every epoch, with the
    assert [(s, "faithfulness" in h["tiles"][0]) for s, h, _ in steps] == [  # values measured
        (2, True), (4, False), (6, True)]


def test_faithfulness_errors_name_the_choices(tmp_path):
    x, _ = data(2)
    with pytest.raises(ValueError, match=r"unknown faithfulness metric 'aopc'; choose from "
                                         r"deletion, insertion"):
        AttributionCallback(tmp_path, x, faithfulness=["aopc"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) size for the faithfulness "
                                         r"metric deletion; it takes steps, baseline"):
        AttributionCallback(tmp_path, x, faithfulness={"deletion": {"size": 3}})
    with pytest.raises(ValueError, match="random_logit test compares two classes"):
        AttributionCallback(tmp_path, x, target=lambda out: out[:, 0],
                            faithfulness=["random_logit"])
