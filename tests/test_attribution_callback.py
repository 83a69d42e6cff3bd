"""AttributionCallback read back with EventAccumulator; training unchanged by all tbviz probes."""

import keras
import numpy as np
import pytest

from tbviz import attribution as at
from tbviz.callbacks.attribution import AttributionCallback
from tbviz.callbacks.feature_maps import FeatureMapsCallback
from tbviz.callbacks.synthesis import SynthesisCallback
from tbviz.summary.images import overlay
from eventfiles import images, panels, tags


def classifier():
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.Dropout(0.3),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(3, activation="softmax", name="dense"),
    ], name="classifier")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def data(n=16):
    rng = np.random.default_rng(7)
    return rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32"), np.arange(n) % 3


ALL = ("saliency", "smoothgrad", "guided_backprop", "occlusion", "cam", "grad_cam")
OPTIONS = {"occlusion": {"patch": 4, "stride": 4}, "smoothgrad": {"samples": 3}}


def test_heatmaps_of_every_method_are_logged_per_epoch(tmp_path):
    x, y = data()
    model = classifier()
    probes = x[:3]
    cb = AttributionCallback(tmp_path, probes, methods=ALL, options=OPTIONS, layer="conv1")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False, callbacks=[cb])
    run = tmp_path / "train"
    names = tags(run)
    predicted = at.top_classes(model, probes)
    photos = np.round(probes).astype(np.uint8)  # RGB probes in [0, 255] are shown as they are
    for method in ALL:
        logged = images(run, f"attribution/{method}")
        assert [step for step, _ in logged] == [2, 4]  # global steps at the epoch ends
        pics = logged[-1][1]
        assert len(pics) == 3 and pics[0].shape == (16, 16, 3)
        # The last images are the heatmaps of the trained model, over the probe photos.
        fn = getattr(at, method)
        opts = dict(OPTIONS.get(method, {}), **({"layer": "conv1"} if method == "grad_cam" else {}))
        heat = at.heatmap(fn(model, probes, predicted, **opts))
        for i in range(3):
            np.testing.assert_array_equal(pics[i], overlay(photos[i], heat[i], 0.6))
        assert f"tbviz/attribution/{method}" in names
        content, steps = panels(run, f"tbviz/attribution/{method}")
        assert content["kind"] == "attribution" and content["method"] == method
        assert [s for s, _, _ in steps] == [2, 4]
        step, header, pngs = steps[-1]
        assert header["tiles"] == [{"method": method, "image_index": i, "target": int(predicted[i])}
                                   for i in range(3)]
        for i in range(3):
            np.testing.assert_array_equal(pngs[i], pics[i])
    # The heatmaps differ between methods (each logged its own).
    last = {m: images(run, f"attribution/{m}")[-1][1][0] for m in ALL}
    assert len({v.tobytes() for v in last.values()}) == len(ALL)


def test_every_n_steps_with_a_fixed_target_and_a_callable(tmp_path):
    x, y = data()
    model = classifier()
    cb = AttributionCallback(tmp_path / "a", x[:2], target=[2, 1], methods="saliency",
                             every_n_epochs=None, every_n_steps=3)
    cb2 = AttributionCallback(tmp_path / "b", x[:2], target=lambda out: out[:, 0],
                              methods=["grad_cam"])
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[cb, cb2])
    logged = images(tmp_path / "a" / "train", "attribution/saliency")
    assert [s for s, _ in logged] == [3, 6]
    _, steps = panels(tmp_path / "a" / "train", "tbviz/attribution/saliency")
    assert [t["target"] for t in steps[0][1]["tiles"]] == [2, 1]
    _, steps = panels(tmp_path / "b" / "train", "tbviz/attribution/grad_cam")
    assert [t["target"] for t in steps[0][1]["tiles"]] == ["<lambda>", "<lambda>"]


def test_errors_at_construction_or_train_begin(tmp_path):
    x, y = data(4)
    with pytest.raises(ValueError, match=r"unknown attribution method 'lime'.*saliency, smooth"):
        AttributionCallback(tmp_path, x, methods=["lime"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) size for occlusion.*patch, stride"):
        AttributionCallback(tmp_path, x, methods=["occlusion"], options={"occlusion": {"size": 3}})
    with pytest.raises(ValueError, match="not among methods"):
        AttributionCallback(tmp_path, x, methods=["saliency"], options={"cam": {}})
    with pytest.raises(ValueError, match="at least one image"):
        AttributionCallback(tmp_path, np.zeros((0, 16, 16, 3)))
    for kwargs, message in [
        ({"probe_images": x[:, :8]}, r"probe_images have shape \(4, 8, 16, 3\)"),
        ({"probe_images": x, "target": 5}, r"out of range.*3 outputs"),
        ({"probe_images": x, "layer": "conv9"}, r"unknown layer.*'conv9'.*conv1, bn, conv2"),
        ({"probe_images": x, "layer": "gap", "methods": ["grad_cam"]}, r"'gap' has output shape"),
    ]:
        cb = AttributionCallback(tmp_path, **kwargs)
        with pytest.raises(ValueError, match=message):
            classifier().fit(x, y, epochs=1, verbose=0, callbacks=[cb])


def test_training_is_bit_identical_with_and_without_the_callbacks(tmp_path):
    x, y = data()

    def train(callbacks):
        keras.utils.set_random_seed(99)
        model = classifier()
        model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=callbacks)
        return model.get_weights()

    plain = train([])
    probes = x[:2]
    viz = train([
        AttributionCallback(tmp_path, probes, methods=ALL, options=OPTIONS, every_n_steps=3),
        SynthesisCallback(tmp_path, probes, maximize={"conv2": 2}, invert="conv1", dream="conv2",
                          steps=3, every_n_steps=2),
        FeatureMapsCallback(tmp_path, probes, every_n_steps=2),
    ])
    assert len(tags(tmp_path / "train")) > 10  # they did run and write
    assert len(plain) == len(viz)
    for a, b in zip(plain, viz):
        np.testing.assert_array_equal(a, b)
