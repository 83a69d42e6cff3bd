"""Integrated Gradients, Gradient x Input, SquareGrad, VarGrad, Grad-CAM++ and RISE against
closed forms and NumPy (float64) written from the papers' definitions, on every backend.

The models have weights set from NumPy, so the references compute with the same numbers:
a linear model and a quadratic one (closed forms), and a tanh MLP whose input gradient
NumPy writes by hand, ``W1 (W2[:, c] * (1 - tanh(z)^2))``.
"""

import keras
import numpy as np
import pytest

from tbviz import attribution as at
from tbviz.methods.attribution.rise import mask_grids

pytestmark = [pytest.mark.numerics, pytest.mark.backends]

SHAPE = (6, 6, 2)
D = int(np.prod(SHAPE))
EPS = np.finfo(np.float32).eps


class MLP:
    """Flatten -> Dense(5, tanh) -> Dense(3) [-> softmax], and the same in NumPy."""

    def __init__(self, softmax=False, seed=0):
        rng = np.random.default_rng(seed)
        self.w1, self.b1 = rng.normal(0, 0.3, (D, 5)), rng.normal(0, 0.1, 5)
        self.w2, self.b2 = rng.normal(0, 1, (5, 3)), rng.normal(0, 0.1, 3)
        self.model = keras.Sequential([
            keras.Input(SHAPE), keras.layers.Flatten(),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            keras.layers.Dense(3, activation="softmax" if softmax else None, name="head")])
        self.model.get_layer("hidden").set_weights([self.w1, self.b1])
        self.model.get_layer("head").set_weights([self.w2, self.b2])

    def logits(self, x):
        z = np.asarray(x, np.float64).reshape(len(x), -1) @ self.w1 + self.b1
        return np.tanh(z) @ self.w2 + self.b2

    def gradient(self, x, c):
        """d logit_c / dx, ``x``'s shape; ``c`` one class per row."""
        z = np.asarray(x, np.float64).reshape(len(x), -1) @ self.w1 + self.b1
        back = self.w2[:, c].T * (1 - np.tanh(z) ** 2)  # (N, 5)
        return (back @ self.w1.T).reshape(np.shape(x))


def linear(seed=0):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 1, (D, 3)), rng.normal(0, 1, 3)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.layers[-1].set_weights([w, b])
    return model, w, b


def images(n=3, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n,) + SHAPE).astype("float32")


def close(got, want, scale, n_ops):
    """float32 results of a sum of ``n_ops`` roundings, against float64: within
    ``n_ops * eps * scale`` (``scale`` the magnitude of the terms)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * n_ops * EPS * scale + 1e-12)


# -- Gradient x Input -----------------------------------------------------------------------

def test_gradient_x_input_is_each_inputs_share_of_a_linear_score():
    model, w, _ = linear()
    x = images()
    got = at.gradient_x_input(model, x, target=[0, 2, 1])
    want = w[:, [0, 2, 1]].T.reshape(x.shape) * x
    close(got, want, np.abs(want).max(), 2)


def test_gradient_x_input_is_the_logit_gradient_times_the_image():
    net = MLP(softmax=True)
    x = images()
    got = at.gradient_x_input(net.model, x, target=[1, 0, 2])
    want = net.gradient(x, [1, 0, 2]) * x
    close(got, want, np.abs(want).max(), D)


# -- Integrated Gradients -------------------------------------------------------------------

def quadrature(rule, m):
    """The three rules, written from their definitions."""
    if rule == "riemann":
        return np.arange(1, m + 1) / m, np.full(m, 1 / m)
    if rule == "trapezoid":
        a = np.linspace(0, 1, m)
        return a, np.r_[0.5, np.ones(m - 2), 0.5] / (m - 1)
    t, w = np.polynomial.legendre.leggauss(m)
    return (t + 1) / 2, w / 2


def ig_numpy(net, x, base, c, rule, m):
    alphas, weights = quadrature(rule, m)
    total = sum(wk * net.gradient(base + a * (x - base), c) for a, wk in zip(alphas, weights))
    return (x - base) * total


@pytest.mark.parametrize("rule", ["riemann", "trapezoid", "gausslegendre"])
def test_integrated_gradients_is_the_quadrature_of_the_logit_gradient(rule):
    net = MLP(softmax=True)
    x = images()
    base = np.random.default_rng(5).uniform(0, 1, SHAPE).astype("float32")
    got, delta = at.integrated_gradients(net.model, x, [0, 1, 2], baseline=base, steps=7,
                                         rule=rule, max_batch=5, return_convergence_delta=True)
    want = ig_numpy(net, x.astype(np.float64), base.astype(np.float64), [0, 1, 2], rule, 7)
    close(got, want, np.abs(want).max(), D)
    # the completeness error, from the logits
    gap = net.logits(x)[np.arange(3), [0, 1, 2]] - net.logits(base[None])[0, [0, 1, 2]]
    np.testing.assert_allclose(delta, want.reshape(3, -1).sum(1) - gap, atol=1e-5)


def test_integrated_gradients_of_a_quadratic_is_exact_for_gauss_legendre_and_trapezoid():
    # f(x) = |V x|^2: grad = 2 V^T V x, linear along the path, so both rules integrate it
    # exactly: phi = (x - x') * V^T V (x + x'); the right Riemann sum's mean node is
    # (m + 1) / (2m), so phi_R = (x - x') * 2 V^T V (x' + (m + 1) / (2m) (x - x')).
    rng = np.random.default_rng(3)
    v = rng.normal(0, 0.2, (D, 4))
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(4, use_bias=False, name="v"),
                              keras.layers.Lambda(lambda t: keras.ops.sum(t * t, axis=-1,
                                                                          keepdims=True))])
    model.get_layer("v").set_weights([v])
    x, base = images(2).astype(np.float64), np.full(SHAPE, 0.25)
    xf, bf = x.reshape(2, -1), base.reshape(-1)
    vtv = v @ v.T
    exact = ((xf - bf) * ((xf + bf) @ vtv)).reshape(x.shape)
    for rule in ("gausslegendre", "trapezoid"):
        got = at.integrated_gradients(model, x, 0, baseline=0.25, steps=3, rule=rule)
        close(got, exact, np.abs(exact).max(), D)
    m = 5
    riemann = ((xf - bf) * 2 * ((bf + (m + 1) / (2 * m) * (xf - bf)) @ vtv)).reshape(x.shape)
    got = at.integrated_gradients(model, x, 0, baseline=0.25, steps=m, rule="riemann")
    close(got, riemann, np.abs(riemann).max(), D)


def test_the_completeness_error_falls_as_steps_grow():
    net = MLP()
    x = images(4) * 3  # far from the baseline: a curved path
    errors = {}
    for rule in ("riemann", "trapezoid", "gausslegendre"):
        errors[rule] = [np.abs(at.integrated_gradients(net.model, x, 1, steps=m, rule=rule,
                                                       return_convergence_delta=True)[1]).mean()
                        for m in (2, 4, 8, 16)]
    print(errors)
    for rule in ("riemann", "trapezoid"):
        e = errors[rule]
        assert all(a > b for a, b in zip(e, e[1:])), (rule, e)
    # first order: the error halves with each doubling; second order: it quarters
    assert errors["riemann"][-1] < 0.6 * errors["riemann"][-2]
    assert errors["trapezoid"][-1] < 0.35 * errors["trapezoid"][-2]
    scale = np.abs(net.logits(x)).max()
    assert errors["gausslegendre"][0] > errors["gausslegendre"][2]
    assert errors["gausslegendre"][-1] < 1e-4 * scale  # spectral: float32 rounding by then


def test_integrated_gradients_from_zero_is_gradient_x_input_on_a_linear_model():
    model, _, _ = linear()
    x = images()
    np.testing.assert_allclose(at.integrated_gradients(model, x, 2, steps=4),
                               at.gradient_x_input(model, x, 2), rtol=1e-5, atol=1e-6)


# -- SmoothGrad, SquareGrad, VarGrad --------------------------------------------------------

def noisy_numpy(net, x, c, samples, noise, seed):
    """The noisy copies SmoothGrad's definition draws: N(0, (noise * (max - min))^2) per
    image, drawn in image order by NumPy's generator, and their logit gradients."""
    rng = np.random.default_rng(seed)
    sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    owner = np.repeat(np.arange(len(x)), samples)
    eps = rng.standard_normal((len(owner),) + x.shape[1:], dtype=np.float32)
    noisy = x[owner] + eps * sigma[owner].astype(np.float32)[:, None, None, None]
    g = net.gradient(noisy, np.asarray(c)[owner]).reshape((len(x), samples) + x.shape[1:])
    return g


def test_smoothgrad_squaregrad_and_vargrad_are_the_moments_of_the_noisy_gradients():
    net = MLP(softmax=True)
    x = images(2)
    c = [2, 0]
    g = noisy_numpy(net, x, c, samples=6, noise=0.2, seed=4)
    kwargs = dict(samples=6, noise=0.2, seed=4, max_batch=64)  # one chunk, one draw
    scale = np.abs(g).max()
    close(at.smoothgrad(net.model, x, c, **kwargs), g.mean(1), scale, D)
    close(at.squaregrad(net.model, x, c, **kwargs), (g * g).mean(1), scale * scale, D)
    close(at.vargrad(net.model, x, c, **kwargs), g.var(1), scale * scale, D)


def test_squaregrad_is_the_squared_weights_and_vargrad_zero_on_a_linear_model():
    model, w, _ = linear()
    x = images(2)
    want = (w[:, 1] ** 2).reshape(SHAPE)
    np.testing.assert_allclose(at.squaregrad(model, x, 1, samples=5), np.stack([want] * 2),
                               rtol=1e-5)
    assert np.abs(at.vargrad(model, x, 1, samples=5)).max() < 1e-6 * want.max()


# -- Grad-CAM++ -----------------------------------------------------------------------------

def test_grad_cam_plus_plus_matches_the_papers_weights():
    # A = relu(1x1 conv of x), score = V . flatten(A) + b: dS/dA = V, spatially varying.
    rng = np.random.default_rng(6)
    k, b = rng.normal(0, 1, (1, 1, 2, 4)), rng.normal(0, 0.3, 4)
    v = rng.normal(0, 1, (6 * 6 * 4, 3))
    model = keras.Sequential([keras.Input(SHAPE),
                              keras.layers.Conv2D(4, 1, activation="relu", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="head"),
                              keras.layers.Softmax()])
    model.get_layer("conv").set_weights([k, b])
    model.get_layer("head").set_weights([v, np.zeros(3)])
    x = images(3).astype(np.float64) - 0.5
    got = at.grad_cam_plus_plus(model, x, [0, 1, 2], upsample=False)
    a = np.maximum(np.einsum("nhwc,ck->nhwk", x, k[0, 0]) + b, 0)
    want = []
    for i, c in enumerate([0, 1, 2]):
        g = v[:, c].reshape(6, 6, 4)
        den = 2 * g ** 2 + a[i].sum(axis=(0, 1)) * g ** 3
        alpha = np.where(den != 0, g ** 2 / np.where(den != 0, den, 1), 0)
        w = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
        want.append(np.maximum((w * a[i]).sum(-1), 0))
    want = np.stack(want)
    close(got, want, np.abs(want).max() + 1, 4 * 36)
    # Grad-CAM's weights (mean gradient) differ from these: the method is not Grad-CAM.
    assert np.abs(at.grad_cam(model, x, [0, 1, 2], upsample=False) - got).max() > 0.01


# -- RISE -----------------------------------------------------------------------------------

def bilinear_rows(size, cell, grid, offset):
    """Bilinear weights from ``grid`` cells to pixels ``offset .. offset + size`` of a mask
    upsampled to ``(grid + 1) * cell`` pixels with half-pixel centres and clamped edges."""
    out = np.zeros((size, grid))
    for r in range(size):
        u = (r + offset + 0.5) * grid / ((grid + 1) * cell) - 0.5
        u = min(max(u, 0.0), grid - 1.0)
        lo = int(np.floor(u))
        hi, f = min(lo + 1, grid - 1), u - np.floor(u)
        out[r, lo] += 1 - f
        out[r, hi] += f
    return out


def test_rise_is_the_papers_mean_of_scores_times_masks():
    net = MLP(softmax=True)
    x = images(2)
    samples, grid, keep = 40, 3, 0.5
    got = at.rise(net.model, x, [1, 2], samples=samples, grid=grid, keep=keep, seed=7,
                  max_batch=16)
    grids, fractions = mask_grids(samples, grid, keep, seed=7)
    cell = 2  # ceil(6 / 3)
    masks = np.stack([bilinear_rows(6, cell, grid, int(np.floor(fy * cell))) @ g
                      @ bilinear_rows(6, cell, grid, int(np.floor(fx * cell))).T
                      for g, (fy, fx) in zip(grids, fractions)])
    want = np.zeros((2, 6, 6))
    for i, c in enumerate([1, 2]):
        masked = x[i][None].astype(np.float64) * masks[..., None]
        probs = keras.ops.convert_to_numpy(net.model(masked.astype("float32"), training=False))
        want[i] = np.einsum("s,shw->hw", probs[:, c], masks) / (keep * samples)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The masks are the upsampling of the coarse grid the paper describes: resized with
    # keras' bilinear resize to (grid + 1) cells, then cut at the offset.
    up = keras.ops.convert_to_numpy(keras.ops.image.resize(
        grids[:4, :, :, None], ((grid + 1) * cell,) * 2, interpolation="bilinear"))[..., 0]
    for s in range(4):
        dy, dx = (int(np.floor(f * cell)) for f in fractions[s])
        np.testing.assert_allclose(masks[s], up[s, dy:dy + 6, dx:dx + 6], atol=1e-6)


def test_rise_with_every_cell_kept_is_the_score():
    net = MLP(softmax=True)
    x = images(2)
    got = at.rise(net.model, x, 0, samples=3, keep=1.0, grid=2)
    probs = keras.ops.convert_to_numpy(net.model(x, training=False))[:, 0]
    np.testing.assert_allclose(got, np.broadcast_to(probs[:, None, None], got.shape), rtol=1e-5)


# -- names, errors --------------------------------------------------------------------------

def test_the_new_methods_are_named_like_the_others():
    for name in ("integrated_gradients", "gradient_x_input", "grad_cam_plus_plus", "rise",
                 "vargrad", "squaregrad"):
        assert name in at.METHODS
        assert "max_batch" in at.method_options(name)
    assert at.method_options("integrated_gradients")[:3] == ["baseline", "steps", "rule"]


def test_errors_say_what_was_received():
    net = MLP()
    x = images(1)
    with pytest.raises(ValueError, match="unknown rule 'simpson'; choose one of riemann"):
        at.integrated_gradients(net.model, x, 0, rule="simpson")
    with pytest.raises(ValueError, match=r"baseline must be .* got shape \(2, 2\)"):
        at.integrated_gradients(net.model, x, 0, baseline=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"keep is the probability .* got 1.5"):
        at.rise(net.model, x, 0, keep=1.5)
    with pytest.raises(ValueError, match="grid 9 has more cells"):
        at.rise(net.model, x, 0, grid=9)
