"""tbviz.stats.cka against the papers' definitions, written out independently here.

Reference implementations (float64 NumPy, built differently from tbviz.stats.cka):
* biased HSIC with an explicit centering matrix, tr(K H L H) / (n - 1)^2 (Gretton 2005),
  and CKA in feature space, ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) (Kornblith 2019, eq. 5);
* unbiased HSIC written with the all-ones vector as in Song et al. 2012, eq. 5.
Everything is float64 on small matrices, so two computations of one quantity agree to
about 1e-12; 1e-9 leaves room for the sums over up to 2000 rows.
"""

import numpy as np
import pytest

from tbviz import stats
from tbviz.stats.cka import cka, cka_from_grams, features, gram

TOL = 1e-9


def hsic_biased(k, l):
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_unbiased(k, l):
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def reference_cka(x, y, hsic):
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def correlated(rng, n=40, p=12, q=7, noise=0.5):
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=(p, q)) + noise * rng.normal(size=(n, q)) + 3.0
    return x, y


def test_tbviz_stats_cka_is_the_similarity_function():
    assert stats.cka is cka


@pytest.mark.parametrize("debiased", [False, True])
def test_identical_inputs_give_one(debiased):
    x = np.random.default_rng(0).normal(size=(10, 3, 3, 4)) + 1.0
    for reduce in ("flatten", "pool"):
        assert cka(x, x, debiased=debiased, reduce=reduce) == pytest.approx(1.0, abs=TOL)


def test_matches_explicit_centering_matrix_and_feature_space_form():
    x, y = correlated(np.random.default_rng(1))
    expected = reference_cka(x, y, hsic_biased)
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature_space = (np.linalg.norm(yc.T @ xc) ** 2
                     / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
    assert 0.3 < expected < 0.99  # a case that is neither trivial end
    assert cka(x, y) == pytest.approx(expected, abs=TOL)
    assert feature_space == pytest.approx(expected, abs=TOL)


def test_debiased_matches_song_et_al_unbiased_hsic():
    x, y = correlated(np.random.default_rng(2), n=15)
    expected = reference_cka(x, y, hsic_unbiased)
    assert cka(x, y, debiased=True) == pytest.approx(expected, abs=TOL)
    # Uncentered Gram matrices give the same: U-centering removes the shift itself.
    assert cka_from_grams(x @ x.T, y @ y.T, debiased=True) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts(debiased):
    rng = np.random.default_rng(3)
    x, y = correlated(rng)
    base = cka(x, y, debiased=debiased)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    for moved in (x @ q, 7.5 * x, x + rng.normal(size=x.shape[1]) * 10, 0.1 * x @ q - 4):
        assert cka(moved, y, debiased=debiased) == pytest.approx(base, abs=TOL)
    # Not invariant to a non-isotropic scaling (one feature 30x): the test can fail.
    stretch = x * np.r_[30.0, np.ones(x.shape[1] - 1)]
    assert abs(cka(stretch, y, debiased=debiased) - base) > 0.1


def test_independent_inputs_near_zero_and_the_biased_estimators_known_bias():
    # Independent isotropic Gaussians, n inputs, p = q features. Biased CKA concentrates
    # near p / (n + p) (E||Y^T X||^2 = npq, E||X^T X||^2 = np(n + p)); debiased near 0.
    rng = np.random.default_rng(4)
    many_inputs = [cka(rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10)))
                   for _ in range(5)]
    assert max(many_inputs) < 0.02  # p / (n + p) = 0.005
    n, p = 100, 100
    biased, unbiased = [], []
    for _ in range(20):
        x, y = rng.normal(size=(n, p)), rng.normal(size=(n, p))
        biased.append(cka(x, y))
        unbiased.append(cka(x, y, debiased=True))
    # 20 draws: their mean is within ~3 standard errors of the expectation.
    se = np.std(biased) / np.sqrt(20)
    assert np.mean(biased) == pytest.approx(p / (n + p), abs=0.02 + 3 * se)  # ~0.5: biased
    assert abs(np.mean(unbiased)) < 3 * np.std(unbiased) / np.sqrt(20) + 0.005
    assert max(abs(u) for u in unbiased) < 0.05


def test_conv_reductions():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 4, 4, 3)), rng.normal(size=(6, 2, 2, 5))
    assert cka(a, b) == pytest.approx(
        reference_cka(*(v.reshape(6, -1) - v.reshape(6, -1).mean(0) for v in (a, b)),
                      hsic_biased), abs=TOL)
    assert cka(a, b, reduce="pool") == pytest.approx(
        reference_cka(*(v.mean((1, 2)) - v.mean((1, 2, 0)) for v in (a, b)),
                      hsic_biased), abs=TOL)
    # Pooling forgets where: moving each image's positions around (its own way, so this
    # is no one permutation of the features, to which both are blind) is invisible to it.
    shuffled = np.stack([np.roll(im, i, axis=(0, 1)) for i, im in enumerate(a)])
    assert cka(a, shuffled, reduce="pool") == pytest.approx(1.0, abs=TOL)
    assert cka(a, shuffled, debiased=True) < 0.5  # flattened, it sees the moves


def test_gram_is_all_a_layer_needs():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(8, 300)) + 5, rng.normal(size=(8, 40))
    assert gram(a).shape == (8, 8)
    assert cka_from_grams(gram(a), gram(b), True) == pytest.approx(cka(a, b, True), abs=TOL)


def test_bad_input_says_what_is_wrong():
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match="at least 4 inputs"):
        cka(x, x, debiased=True)
    with pytest.raises(ValueError, match="same inputs"):
        cka(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="reduce must be one of flatten, pool"):
        features(x, "mean")
    assert np.isnan(cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2))))
