"""tbviz.faithfulness against closed forms and NumPy written from the papers' definitions
(SSIM and entropy against scikit-image and SciPy), on every backend.

On a linear model ``f = b + sum_p c_p`` with ``c_p`` pixel ``p``'s share (summed over its
channels), every metric that perturbs pixels has a closed form: deleting a set ``S`` of
pixels (baseline 0) leaves ``f - sum_S c``.
"""

import keras
import numpy as np
import pytest
from scipy import ndimage, stats
from skimage.metrics import structural_similarity

from tbviz import attribution as at
from tbviz import faithfulness as fa

pytestmark = [pytest.mark.numerics, pytest.mark.backends]

SHAPE = (6, 8, 2)
PIXELS = 6 * 8


def linear(seed=0):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 1, (int(np.prod(SHAPE)), 3)), rng.normal(0, 1, 3)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.layers[-1].set_weights([w, b])
    return model, w, b


def convnet(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(SHAPE), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])


def images(n=3, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n,) + SHAPE).astype("float32")


def shares(w, x, c):
    """``c_p``: each pixel's share of the linear logit of class ``c[i]``, ``(N, H, W)``."""
    return (w[:, c].T.reshape(x.shape) * x).sum(-1)


def forward(model, x):
    return keras.ops.convert_to_numpy(model(np.asarray(x, "float32"), training=False))


def order(m):
    """Pixels by importance, ties in raster order (the definition's stable sort)."""
    return np.argsort(-m.reshape(-1), kind="stable")


def trapezoid(y, x):
    return sum((x[k + 1] - x[k]) * (y[k] + y[k + 1]) / 2 for k in range(len(x) - 1))


# -- deletion and insertion -----------------------------------------------------------------

def test_deletion_and_insertion_of_a_linear_model_remove_and_add_the_shares():
    model, w, b = linear()
    x, c = images(), [0, 2, 1]
    m = shares(w, x, c)
    steps = 4
    counts = [round(k * PIXELS / steps) for k in range(steps + 1)]
    dele = fa.deletion(model, x, m, c, steps=steps)
    ins = fa.insertion(model, x, m, c, steps=steps, baseline=0.0)
    np.testing.assert_allclose(dele.fractions, np.array(counts) / PIXELS)
    for i in range(3):
        flat, top = m[i].reshape(-1), order(m[i])
        want_del = [b[c[i]] + flat.sum() - flat[top[:k]].sum() for k in counts]
        want_ins = [b[c[i]] + flat[top[:k]].sum() for k in counts]
        np.testing.assert_allclose(dele.scores[i], want_del, atol=1e-4)
        np.testing.assert_allclose(ins.scores[i], want_ins, atol=1e-4)
        np.testing.assert_allclose(dele.auc[i], trapezoid(want_del, dele.fractions), atol=1e-4)
        np.testing.assert_allclose(ins.auc[i], trapezoid(want_ins, ins.fractions), atol=1e-4)
    # the true shares are the most faithful map there is: deleting by them falls fastest
    shuffled = np.random.default_rng(2).permutation(m.reshape(3, -1), axis=1).reshape(m.shape)
    assert np.all(dele.auc < fa.deletion(model, x, shuffled, c, steps=steps).auc)


def test_insertion_starts_from_the_blurred_image_of_riseS_evaluation():
    model = convnet()
    x = images(2)
    maps = at.heatmap(at.saliency(model, x, [1, 0]))  # any map: the curve is what is checked
    got = fa.insertion(model, x, maps, [1, 0], steps=3)
    # RISE's evaluation blurs with an 11-tap Gaussian of sigma 5 (scipy: truncate 1 sigma)
    blur = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 5, 5, 0), truncate=1.0,
                                   mode="reflect")
    for i, c in enumerate([1, 0]):
        top = order(maps[i])
        rows = []
        for k in [round(j * PIXELS / 3) for j in range(4)]:
            mix = blur[i].reshape(PIXELS, -1).copy()
            mix[top[:k]] = x[i].reshape(PIXELS, -1)[top[:k]]
            rows.append(mix.reshape(SHAPE))
        np.testing.assert_allclose(got.scores[i], forward(model, rows)[:, c], atol=1e-5)


def test_four_d_maps_are_judged_as_shown_and_a_dict_measures_every_method_at_once():
    model = convnet()
    x = images(2)
    raw = {"saliency": at.saliency(model, x, 2), "grad_cam": at.grad_cam(model, x, 2)}
    both = fa.deletion(model, x, raw, 2, steps=5)
    for name, r in raw.items():
        alone = fa.deletion(model, x, at.heatmap(r), 2, steps=5)
        np.testing.assert_allclose(both[name].scores, alone.scores, atol=1e-6)
    # the heatmap of a gradient is its max |value| over channels
    m = np.abs(raw["saliency"]).max(-1)
    one = fa.deletion(model, x, m, 2, steps=5)
    np.testing.assert_allclose(one.auc, both["saliency"].auc, atol=1e-7)


# -- MuFidelity -----------------------------------------------------------------------------

def subsets(samples, grid, size, seed):
    """The definition's random subsets: ``size`` of the ``grid**2`` cells, drawn in order."""
    rng = np.random.default_rng(seed)
    return [rng.choice(grid * grid, size, replace=False) for _ in range(samples)]


def test_mu_fidelity_is_the_pearson_correlation_of_subset_sums_and_score_drops():
    model = convnet()
    x, c = images(2), [0, 1]
    maps = at.heatmap(at.gradient_x_input(model, x, c))
    got = fa.mu_fidelity(model, x, maps, c, samples=20, grid=3, subset=0.3, seed=5)
    cell = (np.arange(6)[:, None] * 3 // 6) * 3 + np.arange(8)[None, :] * 3 // 8
    chosen = subsets(20, 3, 3, seed=5)  # round(0.3 * 9) = 3 cells
    for i in range(2):
        hidden = np.stack([np.isin(cell, s) for s in chosen])
        perturbed = x[i][None] * ~hidden[..., None]
        drop = forward(model, x[i][None])[0, c[i]] - forward(model, perturbed)[:, c[i]]
        sums = (maps[i][None] * hidden).sum(axis=(1, 2))
        np.testing.assert_allclose(got[i], np.corrcoef(sums, drop)[0, 1], atol=1e-5)


def test_mu_fidelity_of_the_true_shares_of_a_linear_model_is_one():
    model, w, _ = linear()
    x, c = images(3), [1, 1, 2]
    got = fa.mu_fidelity(model, x, shares(w, x, c), c, samples=32, grid=3)
    np.testing.assert_allclose(got, 1.0, atol=1e-5)


# -- max-sensitivity ------------------------------------------------------------------------

def test_sensitivity_max_is_the_largest_relative_change_of_the_explanation():
    model = convnet()
    x, c = images(2), [2, 0]
    got = fa.sensitivity_max(model, x, "saliency", c, samples=5, radius=0.05, seed=3)
    rng = np.random.default_rng(3)
    span = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    owner = np.repeat(np.arange(2), 5)
    noisy = x[owner] + (rng.uniform(-1, 1, (10,) + SHAPE) * 0.05
                        * span[owner, None, None, None]).astype(np.float32)
    assert np.abs(noisy - x[owner]).max() <= 0.05 * span.max() + 1e-6  # inside the L-inf ball
    e0 = at.saliency(model, x, c).astype(np.float64)
    e = at.saliency(model, noisy, np.asarray(c)[owner]).astype(np.float64)
    rel = np.linalg.norm((e - e0[owner]).reshape(10, -1), axis=1) / np.linalg.norm(
        e0.reshape(2, -1), axis=1)[owner]
    np.testing.assert_allclose(got, rel.reshape(2, 5).max(axis=1), rtol=1e-5)
    assert np.all(got > 0)


def test_the_gradient_of_a_linear_model_is_not_sensitive_at_all():
    model, _, _ = linear()
    assert fa.sensitivity_max(model, images(), "saliency", 0).max() < 1e-6


# -- the map alone --------------------------------------------------------------------------

def test_sparseness_is_the_gini_index_and_complexity_the_entropy():
    rng = np.random.default_rng(0)
    maps = rng.normal(0, 1, (4, 6, 8)) * (rng.random((4, 6, 8)) < 0.3)
    a = np.abs(maps).reshape(4, -1)
    # Gini from its textbook form: the mean absolute difference over twice the mean
    gini = np.abs(a[:, :, None] - a[:, None, :]).mean(axis=(1, 2)) / (2 * a.mean(axis=1))
    # maps are read as the tab shows them, in float32: its rounding is the tolerance
    np.testing.assert_allclose(fa.sparseness(maps), gini, rtol=1e-6)
    np.testing.assert_allclose(fa.complexity(maps), stats.entropy(a, axis=1), rtol=1e-6)
    assert np.isnan(fa.sparseness(np.zeros((1, 3, 3)))[0])


def test_ssim_is_scikit_images():
    rng = np.random.default_rng(1)
    a = rng.random((12, 10))
    b = a + 0.3 * rng.random((12, 10))
    for win in (7, 3):
        want = structural_similarity(a, b, data_range=1.3, win_size=win)
        np.testing.assert_allclose(fa.ssim(a, b, 1.3, win=win), want, rtol=1e-10)


def test_random_logit_compares_the_map_with_that_of_another_class():
    model, w, _ = linear()
    x, c = images(3), [0, 1, 2]
    got = fa.random_logit(model, x, "saliency", c, seed=4)
    other = (np.array(c) + np.random.default_rng(4).integers(1, 3, 3)) % 3
    assert np.all(other != c)
    for i in range(3):
        # a linear model's saliency is its weights: max |w| over channels, then / max
        a, b = (np.abs(w[:, k].reshape(SHAPE)).max(-1) for k in (c[i], other[i]))
        a, b = a / a.max(), b / b.max()
        # 6 x 8 maps: the 7x7 window shrinks to the largest odd one that fits, 5
        want = structural_similarity(a, b, data_range=max(np.ptp(a), np.ptp(b)), win_size=5)
        np.testing.assert_allclose(got[i], want, rtol=1e-5)
    # the map of the same class is the same map
    np.testing.assert_allclose(fa.ssim(a, a, 1.0), 1.0)


def test_summary_and_errors():
    assert fa.summary([np.nan, np.nan]) != fa.summary([np.nan, np.nan])  # nan when all are
    model = convnet()
    x = images(2)
    with pytest.raises(ValueError, match=r"explanations have shape \(2, 3, 3\)"):
        fa.deletion(model, x, np.zeros((2, 3, 3)), 0)
    with pytest.raises(ValueError, match="target must be class indices"):
        fa.random_logit(model, x, "saliency", lambda y: y[:, 0])
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        fa.sensitivity_max(model, x, "lime", 0)
    with pytest.raises(ValueError, match=r"baseline must be .* or 'blur', got 'gray'"):
        fa.insertion(model, x, np.zeros((2, 6, 8)), 0, baseline="gray")
