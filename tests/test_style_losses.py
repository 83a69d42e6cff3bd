"""Losses against NumPy written by hand; the VGG19 loss network; the model's training contract."""

import keras
import numpy as np
import pytest

from style_transfer import losses
from style_transfer.model import SkipNonFinite, StyleTransferModel
from style_transfer.vgg import CAFFE_MEAN_BGR, VGGWeightsUnavailable, build_vgg

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts.
pytestmark = [pytest.mark.numerics, pytest.mark.backends]


def numpy(x):
    return keras.ops.convert_to_numpy(x)

LAYERS = ["block1_conv1", "block2_conv1"]


# -- NumPy references -------------------------------------------------------------------------
def np_gram(f):
    n, h, w, c = f.shape
    out = np.zeros((n, c, c))
    for b in range(n):
        for i in range(c):
            for j in range(c):
                out[b, i, j] = np.sum(f[b, :, :, i] * f[b, :, :, j]) / (c * h * w)
    return out


def np_tv(x):
    n, h, w, c = x.shape
    vert = sum((x[b, i + 1, j, k] - x[b, i, j, k]) ** 2
               for b in range(n) for i in range(h - 1) for j in range(w) for k in range(c))
    horiz = sum((x[b, i, j + 1, k] - x[b, i, j, k]) ** 2
                for b in range(n) for i in range(h) for j in range(w - 1) for k in range(c))
    return vert / (n * (h - 1) * w * c) + horiz / (n * h * (w - 1) * c)


def test_gram_matrix_matches_numpy(rng):
    f = rng.normal(size=(2, 5, 3, 4)).astype("float32")
    np.testing.assert_allclose(numpy(losses.gram_matrix(f)), np_gram(f.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)


def test_content_loss_matches_numpy(rng):
    a, b = rng.normal(size=(2, 3, 4, 5, 6)).astype("float32")
    per_image = [np.sum((a[i] - b[i]) ** 2) / (4 * 5 * 6) for i in range(3)]
    assert numpy(losses.content_loss(a, b)) == pytest.approx(np.mean(per_image), rel=1e-5)


def test_style_loss_is_squared_frobenius_distance_of_grams(rng):
    f = rng.normal(size=(3, 4, 4, 5)).astype("float32")
    target = np_gram(rng.normal(size=(1, 6, 6, 5)))[0]
    grams = np_gram(f.astype(np.float64))
    expected = np.mean([np.linalg.norm(grams[i] - target, "fro") ** 2 for i in range(3)])
    got = numpy(losses.style_loss(losses.gram_matrix(f), target.astype("float32")))
    assert got == pytest.approx(expected, rel=1e-4)


def test_tv_loss_matches_numpy(rng):
    x = rng.uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    assert numpy(losses.tv_loss(x)) == pytest.approx(np_tv(x.astype(np.float64)), rel=1e-5)
    assert numpy(losses.tv_loss(np.full((1, 4, 4, 3), 9.0, "float32"))) == 0.0
    assert np.isfinite(numpy(losses.tv_loss(np.ones((1, 1, 4, 3), "float32"))))


def test_losses_are_float32_for_float16_features(rng):
    f = keras.ops.cast(rng.normal(size=(1, 4, 4, 3)), "float16")
    for out in (losses.gram_matrix(f), losses.content_loss(f, f), losses.tv_loss(f),
                losses.style_loss(losses.gram_matrix(f), np.eye(3, dtype="float32"))):
        assert keras.backend.standardize_dtype(out.dtype) == "float32"


# -- the loss network -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vgg():
    return build_vgg("random", LAYERS, quiet=True)


def test_vgg_caffe_preprocessing_is_in_the_graph(vgg, rng):
    x = rng.uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    kept = x.copy()
    feats = vgg(x)
    assert sorted(feats) == sorted(LAYERS)
    assert feats["block1_conv1"].shape == (1, 8, 8, 64)
    assert feats["block2_conv1"].shape == (1, 4, 4, 128)
    # By hand: BGR minus the mean, then block1_conv1 (conv + ReLU).
    layer = vgg.get_layer("block1_conv1")
    bgr = x[..., ::-1] - np.array(CAFFE_MEAN_BGR, "float32")
    kernel, bias = numpy(layer.kernel).astype(np.float64), numpy(layer.bias)
    padded = np.pad(bgr.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(np.einsum("nhwc,cd->nhwd", padded[:, i:i + 8, j:j + 8], kernel[i, j])
               for i in range(3) for j in range(3))
    expected = np.maximum(conv + bias, 0)
    np.testing.assert_allclose(numpy(feats["block1_conv1"]), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(x, kept)
    assert not vgg.trainable and not vgg.trainable_weights


def test_deconvnet_sees_vgg_receptive_fields_through_the_preprocessing(vgg):
    from tbviz import deconvnet
    from tbviz.core.receptive_field import receptive_field

    rows, cols = receptive_field(vgg, "block1_conv1", (16, 16))
    assert rows.size == cols.size == 3  # the field, not the whole image
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    units = deconvnet.strongest(vgg, x, "block1_conv1", k=2)
    assert all(p.shape[:2] == (3, 3) or min(p.shape[:2]) == 2
               for p in deconvnet.patches(vgg, x, "block1_conv1", units))


def test_vgg_random_weights_warn_loudly(capsys):
    build_vgg("random", ["block1_conv1"])
    assert "RANDOM weights" in capsys.readouterr().err


def test_vgg_loads_a_weights_file(tmp_path):
    # The ImageNet file Keras downloads is a legacy .h5 weights file; write one of
    # the same layout from a VGG19 with known weights and load it by path.
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    source = keras.applications.VGG19(include_top=False, weights=None)
    for layer in source.layers:
        for v in layer.weights:
            v.assign(np.full(v.shape, 0.01 * (1 + len(layer.name)), "float32"))
    path = str(tmp_path / "vgg19_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    loaded = build_vgg(path, ["block1_conv2"], quiet=True)
    np.testing.assert_array_equal(numpy(loaded.get_layer("block1_conv2").kernel),
                                  numpy(source.get_layer("block1_conv2").kernel))


def test_vgg_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="block4_conv2"):  # the valid names are listed
        build_vgg("random", ["block9_conv1"])
    with pytest.raises(ValueError, match="no such file"):
        build_vgg(str(tmp_path / "missing.h5"), ["block1_conv1"])
    assert issubclass(VGGWeightsUnavailable, ValueError)


# -- the model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(1)
    style = rng.uniform(0, 255, (24, 24, 3)).astype("float32")
    m = StyleTransferModel(style, vgg_weights="random", content_layer="block2_conv1",
                           style_layers=LAYERS, content_weight=2.0, style_weight=3.0,
                           tv_weight=0.5, vgg=build_vgg("random", LAYERS, quiet=True))
    m.compile(optimizer=SkipNonFinite(keras.optimizers.Adam(1e-3)))
    return m, style


def test_compute_losses_combine_the_pure_losses(model, rng):
    m, style = model
    x = rng.uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    got = {k: float(v) for k, v in m.compute_losses(x).items()}
    assert sorted(got) == sorted(["loss", "content_loss", "style_loss", "tv_loss",
                                  "style_loss_block1_conv1", "style_loss_block2_conv1"])
    y = np.asarray(m.stylize(x), np.float64)
    fy, fx, fs = m.vgg(y.astype("float32")), m.vgg(x), m.vgg(style[None])
    fy, fx, fs = ({k: numpy(v) for k, v in f.items()} for f in (fy, fx, fs))
    content = 2.0 * np.mean((fy["block2_conv1"] - fx["block2_conv1"]) ** 2)
    assert got["content_loss"] == pytest.approx(content, rel=1e-3)
    for name in LAYERS:
        g, gs = np_gram(fy[name].astype(np.float64)), np_gram(fs[name])[0]
        expected = 3.0 * np.mean([np.sum((g[i] - gs) ** 2) for i in range(2)])
        assert got[f"style_loss_{name}"] == pytest.approx(expected, rel=1e-3)
    assert got["style_loss"] == pytest.approx(sum(got[f"style_loss_{n}"] for n in LAYERS), rel=1e-6)
    assert got["tv_loss"] == pytest.approx(0.5 * np_tv(y), rel=1e-3)
    assert got["loss"] == pytest.approx(got["content_loss"] + got["style_loss"] + got["tv_loss"],
                                        rel=1e-6)
    # Keras' generic hook gives the same total, for gradient probes.
    assert float(m.compute_loss(x=x, training=False)) == pytest.approx(got["loss"], rel=1e-6)


def test_stylize_equals_call_clipped_and_is_traced_once(model, rng):
    m, _ = model
    for size in [(12, 20), (9, 9), (16, 16)]:
        x = rng.uniform(0, 255, (1,) + size + (3,)).astype("float32")
        # A compiled function against an eager call (XLA fuses on JAX): float32 rounding.
        np.testing.assert_allclose(m.stylize(x), np.clip(numpy(m(x)), 0, 255),
                                   rtol=1e-5, atol=1e-3)
    if keras.backend.backend() == "tensorflow":  # one tf.function for every size
        assert m._stylize_fn.traces == 1


@pytest.fixture(scope="module")
def overfit():
    """A model trained 20 steps on 4 photos (one trace, shared by the tests below)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    style = rng.uniform(0, 255, (32, 32, 3)).astype("float32")
    photos = rng.uniform(0, 255, (4, 24, 24, 3)).astype("float32")
    m = StyleTransferModel(style, vgg_weights="random", content_layer="block2_conv1",
                           style_layers=LAYERS, vgg=build_vgg("random", LAYERS, quiet=True))
    m.compile(optimizer=SkipNonFinite(keras.optimizers.Adam(2e-3)))
    history = m.fit(photos, batch_size=4, epochs=20, verbose=0).history
    return m, history, photos


def test_training_overfits_four_images(overfit):
    m, history, _ = overfit
    assert set(history) >= {"loss", "content_loss", "style_loss", "tv_loss",
                            "style_loss_block1_conv1", "style_loss_block2_conv1"}
    first, last = history["loss"][0], history["loss"][-1]
    assert np.isfinite(last) and last <= 0.5 * first, (first, last)
    # Only the transform-net learns; VGG19 stays frozen.
    assert len(m.trainable_weights) == len(m.transform_net.trainable_weights)


def test_a_step_with_non_finite_gradients_is_skipped_and_counted(overfit):
    # A blank image (zero variance at every instance norm) can overflow the
    # gradient; a NaN pixel makes that happen for sure. The step must be skipped
    # and counted, the weights must stay as they were, and training goes on.
    m, _, photos = overfit
    before = [w.copy() for w in m.transform_net.get_weights()]
    skipped, step = int(numpy(m.skipped_steps)), int(numpy(m.optimizer.iterations))
    bad = photos.copy()
    bad[1, 3, 4, 0] = np.nan
    m.fit(bad, batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert int(numpy(m.skipped_steps)) == skipped + 1
    assert int(numpy(m.optimizer.iterations)) == step + 1
    for a, b in zip(before, m.transform_net.get_weights()):
        np.testing.assert_array_equal(a, b)
    m.fit(photos, batch_size=4, epochs=1, verbose=0)  # a good batch is applied again
    assert int(numpy(m.skipped_steps)) == skipped + 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.transform_net.get_weights()))


def test_bad_model_arguments():
    style = np.zeros((8, 8, 3), "float32")
    vgg = build_vgg("random", LAYERS, quiet=True)
    with pytest.raises(ValueError, match="style_weight"):
        StyleTransferModel(style, style_weight=-1, style_layers=LAYERS,
                           content_layer="block1_conv1", vgg=vgg)
    with pytest.raises(ValueError, match="RGB"):
        StyleTransferModel(np.zeros((8, 8)), style_layers=LAYERS, content_layer="block1_conv1",
                           vgg=vgg)
    with pytest.raises(ValueError, match="block5_conv1"):
        StyleTransferModel(style, style_layers=["nope"], vgg=vgg)
