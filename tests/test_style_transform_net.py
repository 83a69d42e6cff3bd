"""The transform-net: architecture, any input size, save/load."""

import numpy as np
import pytest

import keras

from style_transfer.transform_net import (LAYER_NAMES, MIN_SIZE, build_transform_net,
                                          load_transform_net)

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts.
pytestmark = [pytest.mark.numerics, pytest.mark.backends]


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(7)
    return build_transform_net()


def conv_params(k, cin, cout):
    return k * k * cin * cout + cout


def test_layer_names_read_like_the_paper(net):
    names = [layer.name for layer in net.layers]
    assert names == ["photo", "pad"] + list(LAYER_NAMES) + ["crop"]
    assert LAYER_NAMES == ("conv1", "conv2", "conv3", "res1", "res2", "res3", "res4", "res5",
                           "up1", "up2", "output")


def test_parameter_count_matches_johnson_et_al(net):
    # Counted by hand from the paper's table: conv (+bias) and instance norm (scale + shift).
    norm = lambda c: 2 * c  # noqa: E731
    expected = (conv_params(9, 3, 32) + norm(32) + conv_params(3, 32, 64) + norm(64)
                + conv_params(3, 64, 128) + norm(128)
                + 5 * 2 * (conv_params(3, 128, 128) + norm(128))
                + conv_params(3, 128, 64) + norm(64) + conv_params(3, 64, 32) + norm(32)
                + conv_params(9, 32, 3))
    assert net.count_params() == expected
    assert abs(expected - 1.68e6) < 0.01e6


def test_blocks_are_what_the_paper_says(net):
    conv2, conv3 = net.get_layer("conv2"), net.get_layer("conv3")
    assert (conv2.filters, conv2.kernel_size, conv2.strides) == (64, 3, 2)
    assert (conv3.filters, conv3.kernel_size, conv3.strides) == (128, 3, 2)
    up1, up2 = net.get_layer("up1"), net.get_layer("up2")
    assert (up1.upsample, up1.filters, up2.upsample, up2.filters) == (2, 64, 2, 32)
    # No transposed convolution anywhere: upsampling is nearest + conv.
    kinds = {type(v).__name__ for v in net._flatten_layers(include_self=False)}
    assert "Conv2DTranspose" not in kinds
    gammas = [w.path for w in net.weights if w.path.endswith("norm/gamma")]
    assert len(gammas) == 2 + 1 + 10 + 2  # conv1..3, two per residual block, up1..2
    assert net.get_layer("output").norm is False


@pytest.mark.parametrize("size", [(MIN_SIZE, MIN_SIZE), (37, 50), (33, 9), (64, 64), (61, 127)])
def test_output_size_equals_input_size_and_range(net, size, rng):
    x = rng.uniform(0, 255, (2,) + size + (3,)).astype("float32")
    kept = x.copy()
    y = keras.ops.convert_to_numpy(net(x, training=False))
    assert y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 255.0
    np.testing.assert_array_equal(x, kept)  # the caller's array is untouched


def test_odd_sizes_are_reflect_padded_then_cropped_back(net, rng):
    # A 30x42 image is run as its 32x44 reflection (bottom/right, numpy's "reflect")
    # and cut back to the top-left 30x42: exactly what running the padded image gives.
    x = rng.uniform(0, 255, (1, 30, 42, 3)).astype("float32")
    padded = np.pad(x, [(0, 0), (0, 2), (0, 2), (0, 0)], mode="reflect")
    expected = keras.ops.convert_to_numpy(net(padded, training=False))[:, :30, :42]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(net(x, training=False)), expected,
                               rtol=1e-5, atol=1e-3)


def test_save_load_gives_identical_outputs(net, tmp_path, rng):
    x = rng.uniform(0, 255, (1, 29, 35, 3)).astype("float32")
    path = tmp_path / "net.keras"
    net.save(path)
    loaded = load_transform_net(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in net.layers]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)),
                                  keras.ops.convert_to_numpy(net(x)))


def test_mixed_precision_net_loads_back_as_float32(tmp_path, rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_transform_net()
        assert mixed.get_layer("conv1").compute_dtype == "float16"
        assert mixed.get_layer("output").compute_dtype == "float32"
        path = tmp_path / "mixed.keras"
        mixed.save(path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = load_transform_net(path)
    assert all(layer.compute_dtype == "float32" for layer in loaded.layers)
    for a, b in zip(loaded.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    assert keras.ops.convert_to_numpy(loaded(x)).dtype == np.float32


def test_upsampling_conv_equals_nearest_upsample_then_reflect_padded_conv(rng):
    # The same function of the kernel: equal outputs, and equal gradients (the backend's own).
    from keras import ops

    from style_transfer.transform_net import upsample_conv3x3
    from tbviz import backend

    x = rng.normal(size=(2, 5, 7, 4)).astype("float32")
    k = rng.normal(size=(3, 3, 4, 6)).astype("float32")
    b = ops.convert_to_tensor(rng.normal(size=6).astype("float32"))
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    padded = ops.convert_to_tensor(np.pad(up, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect"))
    weights = ops.convert_to_tensor(rng.normal(size=(2, 10, 14, 6)).astype("float32"))

    def direct(kernel):
        return ops.sum(weights * (ops.conv(padded, kernel, padding="valid") + b))

    def fast(kernel):
        return ops.sum(weights * upsample_conv3x3(x, kernel, b))

    want = ops.conv(padded, k, padding="valid") + b
    got = upsample_conv3x3(x, k, b)
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(want),
                               rtol=1e-5, atol=1e-4)
    (grad_want,) = backend.vjp(direct, k)[1](ops.ones(()))
    (grad_got,) = backend.vjp(fast, k)[1](ops.ones(()))
    np.testing.assert_allclose(ops.convert_to_numpy(grad_got), ops.convert_to_numpy(grad_want),
                               rtol=1e-4, atol=1e-3)


def test_a_flat_photo_is_stylized_to_finite_pixels(net):
    # Zero variance at every instance norm: PyTorch's own moments round it below zero.
    y = keras.ops.convert_to_numpy(net(np.full((1, 32, 32, 3), 200.0, "float32"), training=False))
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 255
