"""FeatureMapsCallback read back with EventAccumulator."""

import keras
import numpy as np
import pytest

from tbviz.callbacks.feature_maps import FeatureMapsCallback
from tbviz.methods.feature_maps import feature_maps, kernel_grid
from eventfiles import images, tags


def _image_tags(run):
    return [t for t in tags(run) if not t.startswith("tbviz/cost/")]  # what it cost: scalars


def classifier():
    inner = keras.Sequential([keras.Input((14, 14, 6)),
                              keras.layers.Conv2D(4, 3, activation="relu", name="conv2")],
                             name="block")
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(6, 3, activation="relu", name="conv1"), inner,
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax", name="dense")],
                             name="net")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def data(n=12):
    rng = np.random.default_rng(5)
    return rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32"), np.arange(n) % 3


def test_default_logs_first_and_last_conv_maps_and_first_kernels(tmp_path):
    x, y = data()
    model = classifier()
    cb = FeatureMapsCallback(tmp_path, x[:2])
    model.fit(x, y, epochs=2, batch_size=6, verbose=0, callbacks=[cb])
    run = tmp_path / "train"
    assert _image_tags(run) == ["feature_maps/block/conv2", "feature_maps/conv1", "kernels/conv1"]
    maps = images(run, "feature_maps/conv1")
    assert [s for s, _ in maps] == [2, 4] and len(maps[-1][1]) == 2
    # 14x14 maps are enlarged to >= 32 px tiles (scale 3), 6 channels in a 3x2 grid.
    np.testing.assert_array_equal(np.stack(maps[-1][1]),
                                  feature_maps(model, x[:2], "conv1", scale=3))
    assert maps[-1][1][0].shape == (2 * 42 + 1, 3 * 42 + 2, 3)
    nested = images(run, "feature_maps/block/conv2")[-1][1]
    np.testing.assert_array_equal(np.stack(nested),
                                  feature_maps(model, x[:2], "block/conv2", scale=3))
    kern = images(run, "kernels/conv1")
    (_, [k0]), (_, [k1]) = kern
    np.testing.assert_array_equal(k1, kernel_grid(model, "conv1", scale=11))
    assert np.any(k0 != k1)  # the kernels trained


def test_explicit_layers_and_kernels_only(tmp_path):
    x, y = data()
    model = classifier()
    cb = FeatureMapsCallback(tmp_path, layers=[], kernel_layers=["conv1", "block/conv2"], scale=2,
                             every_n_epochs=None, every_n_steps=1)
    model.fit(x, y, epochs=1, batch_size=6, verbose=0, callbacks=[cb])
    run = tmp_path / "train"
    assert _image_tags(run) == ["kernels/block/conv2", "kernels/conv1"]
    deep = images(run, "kernels/block/conv2")
    assert [s for s, _ in deep] == [1, 2]
    np.testing.assert_array_equal(deep[-1][1][0], kernel_grid(model, "block/conv2", scale=2))


def test_errors(tmp_path):
    x, y = data(4)
    with pytest.raises(ValueError, match="probe_images"):
        FeatureMapsCallback(tmp_path, layers=["conv1"])
    with pytest.raises(ValueError, match="scale"):
        FeatureMapsCallback(tmp_path, x, scale=0)
    for kwargs, message in [
        ({"probe_images": x, "layers": ["dense"]}, r"'dense' has output shape.*4-D"),
        ({"probe_images": x, "layers": ["nope"]}, r"unknown layer.*'nope'"),
        ({"kernel_layers": ["dense"], "layers": []},
         r"no 4-D convolution kernel.*conv1, block/conv2"),
    ]:
        cb = FeatureMapsCallback(tmp_path, **kwargs)
        with pytest.raises(ValueError, match=message):
            classifier().fit(x, y, epochs=1, verbose=0, callbacks=[cb])


def test_wide_layers_show_at_most_max_channels(tmp_path):
    x, y = data()
    model = classifier()
    cb = FeatureMapsCallback(tmp_path, x[:1], layers=["conv1"], kernel_layers=[], max_channels=4,
                             scale=1)
    model.fit(x, y, epochs=1, batch_size=6, verbose=0, callbacks=[cb])
    (_, [grid]), = images(tmp_path / "train", "feature_maps/conv1")
    # conv1 has 6 channels of 14x14; 4 of them tile 2x2 with 1-pixel padding.
    assert grid.shape[:2] == (2 * 14 + 1, 2 * 14 + 1)
    with pytest.raises(ValueError, match="max_channels"):
        FeatureMapsCallback(tmp_path, x[:1], max_channels=0)
