"""SynthesisCallback read back with EventAccumulator."""

import keras
import numpy as np
import pytest

from tbviz import synthesis as sy
from tbviz.callbacks.synthesis import SynthesisCallback
from tbviz.summary.images import to_uint8
from eventfiles import images

pytestmark = pytest.mark.backends


def classifier(flexible=False):
    size = (None, None) if flexible else (16, 16)
    model = keras.Sequential([
        keras.Input(size + (3,)),
        keras.layers.Rescaling(1 / 127.5, offset=-1),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax", name="dense"),
    ], name="classifier")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def data(n=12):
    rng = np.random.default_rng(3)
    return rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32"), np.arange(n) % 3


def test_synthesized_images_are_logged_and_track_training(tmp_path):
    x, y = data()
    model = classifier()
    probes = x[:2]
    cb = SynthesisCallback(tmp_path, probes, maximize={"conv2": [1, 4], "dense": 1},
                           invert=["conv1"], dream="conv2", steps=6,
                           options={"maximize": {"transforms": {"jitter": 30}, "lr": 0.5}})
    model.fit(x, y, epochs=2, batch_size=6, verbose=0, callbacks=[cb])
    run = tmp_path / "train"
    first = {}
    for tag in ("synthesis/conv2/1", "synthesis/conv2/4", "synthesis/dense/0"):
        logged = images(run, tag)
        assert [s for s, _ in logged] == [2, 4]
        (_, [a]), (_, [b]) = logged
        assert a.shape == (16, 16, 3)
        first[tag] = a
        assert np.any(a != b)  # the weights changed, so did the image
    # The last step shows what the pure function makes of the trained model.
    want, _ = sy.maximize_activation(model, "conv2", [1, 4], steps=6, lr=0.5,
                                     transforms={"jitter": 30})
    np.testing.assert_array_equal(images(run, "synthesis/conv2/4")[-1][1][0], to_uint8(want[1]))
    rec = images(run, "synthesis/inversion/conv1")
    assert [s for s, _ in rec] == [2, 4] and len(rec[-1][1]) == 2
    want, _ = sy.invert_features(model, probes, "conv1", steps=6)
    np.testing.assert_array_equal(np.stack(rec[-1][1]), to_uint8(want))
    dreams = images(run, "synthesis/deepdream")
    want = sy.deepdream(model, probes, ["conv2"], steps=6, octaves=1)  # fixed-size model: 1 octave
    np.testing.assert_array_equal(np.stack(dreams[-1][1]), to_uint8(want))


def test_deepdream_uses_octaves_on_a_model_of_any_size(tmp_path):
    x, y = data(6)
    model = classifier(flexible=True)
    cb = SynthesisCallback(tmp_path, x[:1], dream=["conv1", "conv2"], steps=2,
                           options={"dream": {"octave_scale": 1.2}})
    model.fit(x, y, epochs=1, batch_size=6, verbose=0, callbacks=[cb])
    want = sy.deepdream(model, x[:1], ["conv1", "conv2"], steps=2, octaves=3, octave_scale=1.2)
    np.testing.assert_array_equal(images(tmp_path / "train", "synthesis/deepdream")[-1][1][0],
                                  to_uint8(want[0]))


def test_errors_at_construction_or_train_begin(tmp_path):
    x, y = data(4)
    with pytest.raises(ValueError, match="nothing to synthesize"):
        SynthesisCallback(tmp_path)
    with pytest.raises(ValueError, match="probe_images"):
        SynthesisCallback(tmp_path, invert="conv1")
    with pytest.raises(ValueError, match=r"unknown option\(s\) sigma for maximize.*blur_sigma"):
        SynthesisCallback(tmp_path, maximize={"conv1": 2}, options={"maximize": {"sigma": 1}})
    with pytest.raises(ValueError, match="channel lists or counts"):
        SynthesisCallback(tmp_path, maximize={"conv1": "all"})
    with pytest.raises(ValueError, match=r"jitter belong\(s\) to param='pixel'"):
        SynthesisCallback(tmp_path, maximize={"conv1": 2}, options={"maximize": {"jitter": 4}})
    for kwargs, message in [
        ({"maximize": {"conv7": 1}}, r"unknown layer.*'conv7'.*conv1, conv2"),
        ({"maximize": {"conv1": [6]}}, r"channel 6 is out of range.*6 channels"),
        ({"probe_images": x, "dream": "conv1", "options": {"dream": {"octaves": 2}}},
         r"octaves=2.*keras.Input"),
    ]:
        cb = SynthesisCallback(tmp_path, **kwargs)
        with pytest.raises(ValueError, match=message):
            classifier().fit(x, y, epochs=1, verbose=0, callbacks=[cb])
