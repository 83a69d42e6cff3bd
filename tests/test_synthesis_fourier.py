"""The Lucid-style synthesis pieces against NumPy and SciPy: the Fourier image, the colour
matrix, the random moves, the high-frequency share, and objectives that combine."""

import keras
import numpy as np
import pytest
from scipy import ndimage

from tbviz import synthesis as sy
from tbviz.methods import parameterization as pz
from tbviz.methods.objectives import as_objective, channel, direction, diversity, neuron

from test_synthesis import small_net

pytestmark = pytest.mark.backends
numpy = keras.ops.convert_to_numpy


@pytest.mark.parametrize("h,w", [(6, 8), (7, 5)])
def test_the_inverse_fft_by_matrix_products_equals_numpys(rng, h, w):
    real, imag = rng.normal(size=(2, 2, h, w // 2 + 1, 3)).astype("float32")
    got = numpy(pz.irfft2(real, imag, pz.fourier_basis(h, w)))
    want = np.fft.irfft2(np.moveaxis(real + 1j * imag, -1, 1), s=(h, w))  # (B, C, H, W)
    np.testing.assert_allclose(got, np.moveaxis(want, 1, -1), atol=1e-5)


def test_the_image_is_lucids_fft_image_through_the_colour_matrix_and_a_sigmoid(rng):
    h, w = 8, 10
    params = pz.spectrum(rng, 2, h, w, 3, sd=0.5)
    basis = pz.fourier_basis(h, w)
    got = numpy(pz.render(params, basis, True, 0.0, 255.0))
    # Lucid's fft_image: 1 / max(f, 1 / max(h, w)) * sqrt(h w), irfft2, / 4
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None] ** 2)
    scale = (1 / np.maximum(f, 1 / max(h, w)) * np.sqrt(h * w))[None, :, :, None]
    spec = np.moveaxis((params[:, 0] + 1j * params[:, 1]) * scale, -1, 1)
    t = np.moveaxis(np.fft.irfft2(spec, s=(h, w)), 1, -1) / 4
    want = 255 / (1 + np.exp(-(t @ pz.COLOR_MATRIX.T)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # The colour matrix is Lucid's square root of ImageNet's correlation, its largest
    # column of norm 1; without decorrelation the channels are their own.
    assert np.linalg.norm(pz.COLOR_MATRIX, axis=0).max() == pytest.approx(1.0, abs=1e-6)
    plain = numpy(pz.render(params, basis, False, 0.0, 1.0))
    np.testing.assert_allclose(plain, 1 / (1 + np.exp(-t)), atol=1e-5)


def test_a_move_is_the_affine_warp_scipy_makes(rng):
    h = w = 12
    x = rng.uniform(0, 1, (4, h, w, 3)).astype("float32")
    spec = pz.check_transforms({"jitter": [40, 20], "scales": [0.9, 1.2], "angles": [-10, 25]})
    warps = pz.transform_matrices(rng, spec, 4, h, w)
    got = numpy(pz.transformed(x, warps, 0.5))
    for i, (a0, a1, a2, b0, b1, b2, _, _) in enumerate(warps):
        # scipy maps output (row, col) to input (row, col) = matrix @ (row, col) + offset
        matrix, offset = np.array([[b1, b0], [a1, a0]]), np.array([b2, a2])
        want = np.stack([ndimage.affine_transform(x[i, ..., c], matrix, offset, order=1,
                                                  mode="constant", cval=0.5)
                         for c in range(3)], -1)
        # where the sampled point lies inside the image (the border rules differ)
        rows, cols = np.mgrid[:h, :w]
        src = np.einsum("ij,jhw->ihw", matrix, np.stack([rows, cols])) + offset[:, None, None]
        inside = np.all((src >= 0) & (src <= np.array([h - 1, w - 1])[:, None, None]), axis=0)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(got[i][inside], want[inside], atol=1e-4)
    # A quarter turn about the centre is numpy's clockwise rot90.
    turn = pz.transform_matrices(rng, {"jitter": (), "scales": (1.0,), "angles": (90,)}, 1, 5, 5)
    square = rng.uniform(size=(1, 5, 5, 1)).astype("float32")
    np.testing.assert_allclose(numpy(pz.transformed(square, turn, 0.0))[0],
                               np.rot90(square[0], -1), atol=1e-5)


def test_the_standard_moves_are_lucids_at_224_pixels(rng):
    warps = pz.transform_matrices(rng, pz.check_transforms("standard"), 2000, 224, 224)
    scale = 1 / np.hypot(warps[:, 0], warps[:, 1])
    angle = np.rad2deg(np.arctan2(warps[:, 1], warps[:, 0]))
    assert scale.min() == pytest.approx(0.9) and scale.max() == pytest.approx(1.1)
    assert angle.min() == pytest.approx(-10, abs=1e-4) and angle.max() == pytest.approx(10,
                                                                                   abs=1e-4)
    # the shift: the input point the centre samples, two jitters of 8 and 4 pixels
    centre = warps[:, [0, 1]] @ [111.5, 111.5] + warps[:, 2] - 111.5
    assert np.abs(centre).max() == pytest.approx(6.0, abs=1e-3)
    assert pz.check_transforms(None) is None
    with pytest.raises(ValueError, match="'standard', None or a dict"):
        pz.check_transforms("lucid")
    with pytest.raises(ValueError, match="scales > 0"):
        pz.check_transforms({"scales": [0]})


def test_the_high_frequency_share_of_noise_photos_and_a_checkerboard(rng):
    from skimage import data, transform

    noise = pz.high_frequency_share(rng.normal(size=(8, 64, 64, 3)))
    np.testing.assert_allclose(noise, 1 - np.pi / 16, atol=0.02)  # the disc of radius 1/4
    photo = transform.resize(data.astronaut(), (128, 128), anti_aliasing=True)[None]
    assert pz.high_frequency_share(photo)[0] < 0.1
    checker = (np.indices((16, 16)).sum(0) % 2)[None, ..., None]
    assert pz.high_frequency_share(checker)[0] == pytest.approx(1.0)


# -- objectives -------------------------------------------------------------------------------

def fake_acts(rng):
    return {"a": rng.normal(size=(3, 4, 5, 6)).astype("float32"),
            "d": rng.normal(size=(3, 6)).astype("float32")}


def test_objectives_score_as_their_definitions(rng):
    acts = fake_acts(rng)
    a, d = acts["a"], acts["d"]
    tensors = {k: keras.ops.convert_to_tensor(v) for k, v in acts.items()}

    def score(obj):
        return numpy(obj(tensors))

    np.testing.assert_allclose(score(channel("a", 2)), a[..., 2].mean((1, 2)), atol=1e-6)
    np.testing.assert_allclose(score(channel("a", [0, 3, 5])),
                               a.mean((1, 2))[np.arange(3), [0, 3, 5]], atol=1e-6)
    np.testing.assert_allclose(score(channel("d", 4)), d[:, 4], atol=1e-6)
    np.testing.assert_allclose(score(neuron("a", 1)), a[:, 2, 2, 1], atol=1e-6)  # the centre
    np.testing.assert_allclose(score(neuron("a", 1, x=4, y=0)), a[:, 0, 4, 1], atol=1e-6)
    v = rng.normal(size=6).astype("float32")
    np.testing.assert_allclose(score(direction("a", v)), a.mean((1, 2)) @ v, atol=1e-5)
    vs = rng.normal(size=(3, 6)).astype("float32")
    np.testing.assert_allclose(score(direction("a", vs)), np.sum(a.mean((1, 2)) * vs, -1),
                               atol=1e-5)
    flat = a.reshape(3, -1, 6)
    gram = np.einsum("bpc,bpd->bcd", flat, flat).reshape(3, -1)
    gram /= np.linalg.norm(gram, axis=1, keepdims=True)
    sims = gram @ gram.T
    np.testing.assert_allclose(score(diversity("a")), -(sims.sum(1) - np.diag(sims)) / 3,
                               atol=1e-5)
    # They combine as numbers do.
    c, n = a[..., 2].mean((1, 2)), a[:, 2, 2, 1]
    for obj, want in [(channel("a", 2) + 0.5 * neuron("a", 1), c + 0.5 * n),
                      (channel("a", 2) * neuron("a", 1), c * n),
                      (2 - channel("a", 2) / 4, 2 - c / 4),
                      (-channel("a", 2) + channel("d", 4), -c + d[:, 4]),
                      (channel("a", [0, 3, 5]) + diversity("a"),
                       a.mean((1, 2))[np.arange(3), [0, 3, 5]] + score(diversity("a")))]:
        np.testing.assert_allclose(score(obj), want, atol=1e-5, err_msg=str(obj))
    obj = (channel("a", 2) + channel("d", 1)) * neuron("a", 0)
    assert str(obj) == "(channel(a, 2) + channel(d, 1)) * neuron(a, 0)"
    assert obj.layers == ("a", "d") and obj.rows == 1


def test_objective_errors_name_the_problem():
    shapes = {"a": (None, 4, 5, 6), "d": (None, 6), "seq": (None, 7, 6)}
    with pytest.raises(ValueError, match=r"3 rows.*2 rows"):
        channel("a", [0, 1, 2]) + channel("a", [0, 1])
    with pytest.raises(ValueError, match="'zz' does not run"):
        channel("zz", 0).check(shapes)
    with pytest.raises(ValueError, match=r"'seq' has output shape.*Layers that fit: a, d"):
        channel("seq", 0).check(shapes)
    with pytest.raises(ValueError, match="channel 6 is out of range"):
        channel("a", [1, 6]).check(shapes)
    with pytest.raises(ValueError, match="4 entries but layer 'a' has 6 channels"):
        direction("a", np.ones(4)).check(shapes)
    with pytest.raises(ValueError, match=r"x=5 is outside layer 'a'"):
        neuron("a", 0, x=5, y=0).check(shapes)
    with pytest.raises(ValueError, match="finite vector"):
        direction("a", [np.nan, 1.0])
    with pytest.raises(ValueError, match="pass channel=None"):
        as_objective(channel("a", 0), 3, "mean")
    with pytest.raises(ValueError, match="unknown unit 'max'"):
        as_objective("a", 0, "max")


# -- the two paths on a model -----------------------------------------------------------------

def test_combined_objectives_and_directions_are_what_maximization_raises():
    model = small_net()
    feats = keras.Model(model.inputs[0], model.get_layer("conv2").output)  # before relu2
    obj = channel("conv2", 1) + 0.5 * channel("conv2", 3) * neuron("conv2", 0)
    image, trace = sy.maximize_activation(model, obj, steps=24)
    assert image.shape == (16, 16, 3) and trace.shape == (25,)
    a = numpy(feats(image[None]))[0]
    want = a[..., 1].mean() + 0.5 * a[..., 3].mean() * a[6, 6, 0]
    np.testing.assert_allclose(trace[-1], want, rtol=1e-4, atol=1e-5)
    assert trace[-1] > trace[0]
    vs = np.eye(8, dtype="float32")[[2, 5]] - 0.5 * np.eye(8, dtype="float32")[[5, 2]]
    images, trace = sy.maximize_activation(model, direction("conv2", vs), steps=24,
                                           param="pixel")
    assert images.shape == (2, 16, 16, 3) and trace.shape == (25, 2)
    np.testing.assert_allclose(trace[-1], np.sum(numpy(feats(images)).mean((1, 2)) * vs, -1),
                               rtol=1e-4, atol=1e-5)
    assert np.all(trace[-1] > trace[0])
    with pytest.raises(ValueError, match="batch=3 but the objective"):
        sy.maximize_activation(model, direction("conv2", vs), batch=3)


def test_diversity_makes_a_batch_of_images_differ():
    model = small_net()
    feats = keras.Model(model.inputs[0], model.get_layer("conv2").output)

    def gram_cosine(images):  # the mean cosine of the images' Gram matrices, by NumPy
        a = numpy(feats(images)).reshape(len(images), -1, 8)
        g = np.einsum("bpc,bpd->bcd", a, a).reshape(len(a), -1)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        s = g @ g.T
        return (s.sum() - np.trace(s)) / (len(a) * (len(a) - 1))

    alike, _ = sy.maximize_activation(model, channel("conv2", 1), batch=3, steps=48)
    varied, _ = sy.maximize_activation(model, channel("conv2", 1) + diversity("conv2"),
                                       batch=3, steps=48)
    assert alike.shape == varied.shape == (3, 16, 16, 3)
    assert gram_cosine(alike) > 0.95 and gram_cosine(varied) < 0.7


def test_the_priors_of_one_path_are_refused_on_the_other():
    model = small_net()
    with pytest.raises(ValueError, match=r"jitter belong\(s\) to param='pixel'"):
        sy.maximize_activation(model, "conv2", 0, jitter=4)
    with pytest.raises(ValueError, match=r"transforms belong\(s\) to param='fourier'"):
        sy.maximize_activation(model, "conv2", 0, param="pixel", transforms=None)
    with pytest.raises(ValueError, match="unknown param 'cppn'; choose one of fourier, pixel"):
        sy.maximize_activation(model, "conv2", 0, param="cppn")
    # Same seed, same image; the defaults are the Fourier path's.
    one, _ = sy.maximize_activation(model, "conv2", 0, steps=4)
    two, _ = sy.maximize_activation(model, "conv2", 0, steps=4, param="fourier",
                                    decorrelate=True, transforms="standard")
    np.testing.assert_array_equal(one, two)


def test_the_redirected_rule_opens_shut_units_only_where_nothing_passes():
    from tbviz.core.backward_rules import rule_backward

    dy = np.array([[1.0, -2.0, 3.0], [1.0, -2.0, 3.0]], "float32")
    slope = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "float32")  # row 0: all shut
    got = numpy(rule_backward("redirected")(keras.ops.convert_to_tensor(dy),
                                            lambda: keras.ops.convert_to_tensor(slope)))
    # row 0: nothing passes, so the pushes up (Lucid's redirect); row 1: the gradient
    np.testing.assert_array_equal(got, [[1.0, 0.0, 3.0], [0.0, -2.0, 0.0]])


def test_the_fourier_path_moves_off_a_start_on_which_the_layer_below_is_silent():
    model = small_net()
    rng = np.random.default_rng(5)  # the same weights on every backend
    for name in ("conv1", "conv2"):
        layer = model.get_layer(name)
        kernel, bias = (numpy(w) for w in layer.weights)
        he = rng.normal(0, np.sqrt(2 / np.prod(kernel.shape[:3])), kernel.shape)
        layer.set_weights([he.astype("float32"), np.full_like(bias, 0.05)])
    conv1 = model.get_layer("conv1")
    conv1.set_weights([conv1.get_weights()[0], np.full(8, -1.0, "float32")])  # shut when flat
    image, trace = sy.maximize_activation(model, "conv2", 1, steps=48)
    # At the start conv2 sees only its bias, 0.05; the plain gradient would stay 0 for ever.
    assert trace[0] == pytest.approx(0.05, abs=1e-6)
    feats = numpy(keras.Model(model.inputs[0], model.get_layer("conv2").output)(image[None]))
    np.testing.assert_allclose(trace[-1], feats[0, ..., 1].mean(), rtol=1e-4, atol=1e-6)
    assert trace[-1] > 0.05 + 0.02 and np.ptp(image) > 100
