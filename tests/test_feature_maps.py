"""Feature-map grids and kernel tiles read back against the layer's own numbers."""

import keras
import numpy as np
import pytest

from tbviz.methods.feature_maps import conv_layers, feature_maps, kernel_grid, kernels
from tbviz.core.layers import get_layer


def net():
    inner = keras.Sequential([keras.Input((9, 9, 4)),
                              keras.layers.Conv2D(6, 3, activation="relu", name="conv2")],
                             name="block")
    return keras.Sequential([keras.Input((11, 11, 3)),
                             keras.layers.Conv2D(4, 3, name="conv1"), inner,
                             keras.layers.GlobalAveragePooling2D(name="gap"),
                             keras.layers.Dense(2, name="dense")], name="net")


def expected_uint8(values, lo, hi):
    return np.clip(np.round((values - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def test_feature_map_grid_shows_each_channel_on_one_scale_per_image(rng):
    model = net()
    x = rng.uniform(0, 255, (2, 11, 11, 3)).astype("float32")
    grids = feature_maps(model, x, "conv1", scale=2, pad=1)
    assert grids.dtype == np.uint8 and grids.shape == (2, 2 * 19 - 1, 2 * 19 - 1, 3)
    maps = keras.Model(model.inputs[0], model.get_layer("conv1").output)(x).numpy()  # (2, 9, 9, 4)
    for n in range(2):
        assert np.all(grids[n, ..., 0] == grids[n, ..., 1])  # gray
        lo, hi = maps[n].min(), maps[n].max()
        for k in range(4):
            r, c = divmod(k, 2)
            tile = grids[n, r * 19:r * 19 + 18, c * 19:c * 19 + 18, 0]
            want = expected_uint8(maps[n, :, :, k], lo, hi).repeat(2, 0).repeat(2, 1)
            np.testing.assert_allclose(tile.astype(int), want.astype(int), atol=1)
        assert np.all(grids[n, 18, :, :] == 255)  # white padding between rows


def test_feature_maps_of_a_nested_layer(rng):
    model = net()
    x = rng.uniform(0, 255, (1, 11, 11, 3)).astype("float32")
    grids = feature_maps(model, x, "block/conv2", cols=6, pad=0)
    assert grids.shape == (1, 7, 42, 3)
    inner_in = model.get_layer("conv1")(x)
    maps = model.get_layer("block")(inner_in).numpy()[0]
    side_by_side = np.concatenate([maps[..., k] for k in range(6)], axis=1)
    want = expected_uint8(side_by_side, maps.min(), maps.max())
    np.testing.assert_allclose(grids[0, ..., 0].astype(int), want.astype(int), atol=1)


def test_first_layer_kernels_are_rgb_tiles_of_the_weights():
    model = net()
    w = model.get_layer("conv1").get_weights()[0]  # (3, 3, 3, 4)
    tiles = kernels(model, "conv1")
    assert tiles.shape == (4, 3, 3, 3) and tiles.dtype == np.uint8
    for f in range(4):
        want = expected_uint8(w[..., f], w.min(), w.max())
        np.testing.assert_allclose(tiles[f].astype(int), want.astype(int), atol=1)
    # ...and the grid reads back as the same tiles, with the weights' order.
    g = kernel_grid(model, "conv1", scale=3, pad=1)
    assert g.shape == (2 * 10 - 1, 2 * 10 - 1, 3)
    np.testing.assert_array_equal(g[10:19, 0:9], tiles[2].repeat(3, 0).repeat(3, 1))


def test_deeper_kernels_are_gray_tiles_per_input_channel():
    model = net()
    w = get_layer(model, "block/conv2").get_weights()[0]  # (3, 3, 4, 6)
    tiles = kernels(model, "block/conv2")
    assert tiles.shape == (24, 3, 3, 3)
    for f in range(6):
        for c in range(4):
            want = expected_uint8(w[:, :, c, f], w.min(), w.max())
            got = tiles[f * 4 + c, ..., 0].astype(int)
            np.testing.assert_allclose(got, want.astype(int), atol=1)
    g = kernel_grid(model, "block/conv2", pad=1)
    assert g.shape == (6 * 4 - 1, 4 * 4 - 1, 3)  # one row per filter, one column per input
    np.testing.assert_array_equal(g[4 * 5:4 * 5 + 3, 4 * 2:4 * 2 + 3], tiles[5 * 4 + 2])


def test_errors_list_the_layers_that_fit(rng):
    model = net()
    assert conv_layers(model) == ["conv1", "block/conv2"]
    with pytest.raises(ValueError, match=r"'dense' has no 4-D convolution kernel.*conv1, block/"):
        kernels(model, "dense")
    with pytest.raises(ValueError, match=r"'gap' has output shape \(1, 6\).*conv1, block, block/"):
        feature_maps(model, np.zeros((1, 11, 11, 3)), "gap")
    with pytest.raises(ValueError, match=r"unknown layer.*'conv9'"):
        feature_maps(model, np.zeros((1, 11, 11, 3)), "conv9")
    with pytest.raises(ValueError, match="scale"):
        kernels(model, "conv1", scale=0)
