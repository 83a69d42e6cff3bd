"""Attribution methods against known answers and independent reference implementations."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbviz import attribution as at

# Float results of different computations: ./scripts/test.sh --numerics runs these under
# other kernels and thread counts.
pytestmark = pytest.mark.numerics


# -- models -----------------------------------------------------------------------------------

def quadrant_model():
    """Looks only at the bottom-right 8x8 quadrant of a 16x16 image; class 0 grows with it."""
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Cropping2D(((8, 0), (8, 0)))(inp)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(2, name="head")(h)
    model = keras.Model(inp, out)
    conv, head = model.get_layer("conv"), model.get_layer("head")
    conv.set_weights([np.abs(conv.get_weights()[0]), np.zeros(4)])
    head.set_weights([np.abs(head.get_weights()[0]), np.zeros(2)])
    return model


def gap_model(softmax=True):
    """conv -> relu -> maxpool -> conv -> relu -> GAP -> dense (-> softmax)."""
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    logits = keras.layers.Dense(3, name="logits")(h)
    out = keras.layers.Softmax(name="softmax")(logits) if softmax else logits
    return keras.Model(inp, out, name="gapnet"), keras.Model(inp, logits)


def rounding_noise(logits, x, n):
    """How far float32 rounding moves a softmax output of ``logits`` on ``x`` when a kernel
    sums in another order (another row or batch of the probe): random-walk rounding over
    ``n`` roundings in a row, sqrt(n) * eps, of the sum of |terms| behind a logit. That sum
    is bounded by the same network on |weights| and |x| (ReLU and max-pool of magnitudes
    bound the magnitudes of ReLU and max-pool). A softmax output moves by at most half as
    much as its logits, plus its own few roundings (the + 1). A drop of occlusion is the
    difference of two outputs, and comparing two drops compares four: with random-walk
    rounding, twice one's."""
    twin = keras.models.clone_model(logits)
    twin.set_weights([np.abs(w) for w in logits.get_weights()])
    scale = twin(np.abs(x), training=False).numpy().max()
    return 2 * np.sqrt(n) * np.finfo(np.float32).eps * (scale / 2 + 1)


# A logit of gap_model on 12x12 images: 27 (conv1) + 36 (conv2) + 16 (average pool over
# 4x4) + 6 (dense) roundings in a row.
GAP_ROUNDINGS = 27 + 36 + 16 + 6


def nested_model():
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(5, 3, activation="relu", name="conv2")(h)
    base = keras.Model(inp, h, name="base")
    outer = keras.Sequential([keras.Input((10, 10, 3)), base,
                              keras.layers.GlobalAveragePooling2D(name="gap"),
                              keras.layers.Dense(3, activation="softmax", name="dense")],
                             name="outer")
    return outer, base


def tape_gradient(model, x, target):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(model(x, training=False)[:, target])
    return tape.gradient(score, x).numpy()


# -- saliency, guided backprop, smoothgrad --------------------------------------------------

def test_saliency_peaks_in_the_quadrant_the_model_looks_at(rng):
    model = quadrant_model()
    x = rng.uniform(0.1, 1, (2, 16, 16, 3)).astype("float32")
    heat = at.heatmap(at.saliency(model, x, target=0))
    assert heat.shape == (2, 16, 16)
    outside = heat.copy()
    outside[:, 8:, 8:] = 0
    assert np.all(outside == 0)  # the model cannot see those pixels
    assert np.all(heat[:, 8:, 8:].max(axis=(1, 2)) > 0)
    for h in heat:
        r, c = np.unravel_index(h.argmax(), h.shape)
        assert r >= 8 and c >= 8


def test_saliency_is_the_logit_gradient_of_an_eager_tape(rng):
    model, logits = gap_model(softmax=True)
    x = rng.uniform(0, 1, (3, 12, 12, 3)).astype("float32")
    got = at.saliency(model, x, target=[0, 2, 1], max_batch=2)
    want = np.stack([tape_gradient(logits, x[i:i + 1], t)[0] for i, t in enumerate([0, 2, 1])])
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_callable_target_scores_the_outputs_as_given(rng):
    model, _ = gap_model(softmax=True)
    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    got = at.saliency(model, x, target=lambda y: y[:, 1])
    np.testing.assert_allclose(got, tape_gradient(model, x, 1), rtol=1e-4, atol=1e-7)


@tf.custom_gradient
def _guided_relu(x):
    y = tf.nn.relu(x)
    return y, lambda dy: tf.nn.relu(dy) * tf.cast(x > 0, dy.dtype)


def test_guided_backprop_matches_an_eager_custom_gradient_reference(rng):
    model, _ = gap_model(softmax=False)
    (k1, b1), (k2, b2), (kd, bd) = (model.get_layer(n).get_weights()
                                    for n in ("conv1", "conv2", "logits"))

    def reference(x):  # the same network, written out with guided ReLUs
        h = _guided_relu(tf.nn.conv2d(x, k1, 1, "SAME") + b1)
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = _guided_relu(tf.nn.conv2d(h, k2, 1, "VALID") + b2)
        return tf.matmul(tf.reduce_mean(h, axis=[1, 2]), kd) + bd

    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(reference(xt)[:, 2])
    want = tape.gradient(score, xt).numpy()
    got = at.guided_backprop(model, x, target=2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.any(got != at.saliency(model, x, target=2))  # the rule did change the backward
    assert np.any(want != 0)


def test_smoothgrad_matches_the_gaussian_expectation():
    # score = sum(relu(x)), so the gradient at x + n is 1[x + n > 0] and its mean over
    # n ~ N(0, sigma^2) is Phi(x / sigma), sigma = noise * (max - min).
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.ReLU(), keras.layers.Flatten(),
                              keras.layers.Dense(1, kernel_initializer="ones")])
    x = np.linspace(-1, 1, 16, dtype="float32").reshape(1, 4, 4, 1)
    sigma = 0.25 * 2.0
    got = at.smoothgrad(model, x, target=0, samples=400, noise=0.25, max_batch=128)
    want = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / (sigma * math.sqrt(2)))))(x)
    np.testing.assert_allclose(got, want, atol=0.1)
    assert np.abs(got - want).mean() < 0.04


def test_smoothgrad_is_seeded_and_reduces_to_saliency_without_noise(rng):
    model, _ = gap_model()
    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(at.smoothgrad(model, x, 1, samples=3, noise=0.0),
                               at.saliency(model, x, 1), rtol=1e-5, atol=1e-7)
    a = at.smoothgrad(model, x, 1, samples=5, max_batch=4, seed=3)
    np.testing.assert_array_equal(a, at.smoothgrad(model, x, 1, samples=5, max_batch=4, seed=3))
    assert np.any(a != at.smoothgrad(model, x, 1, samples=5, max_batch=4, seed=4))


# -- occlusion --------------------------------------------------------------------------------

def test_occlusion_peaks_in_the_quadrant_the_model_looks_at(rng):
    model = quadrant_model()
    x = rng.uniform(0.1, 1, (3, 16, 16, 3)).astype("float32")
    heat = at.occlusion(model, x, target=0, patch=4, stride=2, max_batch=7)
    assert heat.shape == (3, 16, 16)
    # Patches that cannot reach the quadrant change nothing, up to float32 rounding: the
    # occluded and the plain image are scored in different rows and batches of the probe,
    # which a kernel may sum in another order. Every weight and input is positive, so the
    # score is a sum of positive terms and each of its float32 evaluations is within
    # n * eps/2 of exact, n = 27 (conv) + 36 (average pool) + 1 (its division) + 4 (dense)
    # roundings in a row; a drop is the difference of two of them, hence n * eps * score.
    score = model(x, training=False).numpy()[:, 0]
    noise = (27 + 36 + 1 + 4) * np.finfo(np.float32).eps * score[:, None, None]
    assert np.all(np.abs(heat[:, :4, :]) <= noise) and np.all(np.abs(heat[:, :, :4]) <= noise)
    assert np.all(heat[:, 8:, 8:] > noise)
    for h in heat:
        r, c = np.unravel_index(h.argmax(), h.shape)
        assert r >= 8 and c >= 8


def reference_occlusion(model, x, target, ph, pw, sh, sw, baseline):
    """The per-image, per-patch loop of the peers, written independently."""
    n, h, w, _ = x.shape
    ys = sorted(set(list(range(0, h - ph + 1, sh)) + [h - ph]))
    xs = sorted(set(list(range(0, w - pw + 1, sw)) + [w - pw]))
    out = np.zeros((n, h, w))
    for i in range(n):
        base = float(model(x[i:i + 1], training=False)[0, target])
        total, count = np.zeros((h, w)), np.zeros((h, w))
        for y0 in ys:
            for x0 in xs:
                occ = x[i].copy()
                occ[y0:y0 + ph, x0:x0 + pw] = baseline
                drop = base - float(model(occ[None], training=False)[0, target])
                total[y0:y0 + ph, x0:x0 + pw] += drop
                count[y0:y0 + ph, x0:x0 + pw] += 1
        out[i] = np.where(count > 0, total / np.maximum(count, 1), 0)
    return out


def test_occlusion_matches_a_per_patch_loop(rng):
    model, logits = gap_model(softmax=True)
    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    got = at.occlusion(model, x, target=1, patch=(5, 3), stride=(3, 4), baseline=0.5, max_batch=10)
    want = reference_occlusion(model, x, 1, 5, 3, 3, 4, 0.5)
    noise = rounding_noise(logits, x, GAP_ROUNDINGS)
    np.testing.assert_allclose(got, want, rtol=0, atol=noise)  # one by one vs batched
    assert np.all(got[:, :, [3, 7]] == 0)  # stride 4 > patch 3: columns no patch hid
    assert np.count_nonzero(np.abs(got) > 10 * noise) > 0.5 * got.size  # not all noise
    got = at.occlusion(model, x, target=2, patch=4, max_batch=64)  # default stride 2, one batch
    np.testing.assert_allclose(got, reference_occlusion(model, x, 2, 4, 4, 2, 2, 0.0),
                               rtol=0, atol=noise)


def test_occlusion_with_the_image_itself_as_baseline_changes_nothing(rng):
    model, logits = gap_model()
    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    noise = rounding_noise(logits, x, GAP_ROUNDINGS)  # occluded == plain image, other rows
    np.testing.assert_allclose(at.occlusion(model, x, 0, patch=4, baseline=x), 0, atol=noise)


# -- CAM and Grad-CAM -------------------------------------------------------------------------

def test_cam_is_the_weighted_sum_of_the_last_feature_maps(rng):
    model, _ = gap_model(softmax=True)
    x = rng.uniform(0, 1, (3, 12, 12, 3)).astype("float32")
    features = keras.Model(model.input, model.get_layer("conv2").output)(x).numpy()
    w = model.get_layer("logits").get_weights()[0]
    targets = [2, 0, 1]
    want = np.zeros(features.shape[:3])
    for i, t in enumerate(targets):
        for k in range(features.shape[-1]):
            want[i] += w[k, t] * features[i, :, :, k]
    got = at.cam(model, x, target=targets, upsample=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    up = at.cam(model, x, target=targets)
    assert up.shape == (3, 12, 12)
    assert np.all(np.abs(up).max(axis=(1, 2)) <= np.abs(want).max(axis=(1, 2)) + 1e-5)


def test_grad_cam_equals_cam_on_a_gap_model(rng):
    model, _ = gap_model(softmax=True)  # the softmax must not change Grad-CAM's class score
    x = rng.uniform(0, 1, (3, 12, 12, 3)).astype("float32")
    c = at.cam(model, x, target=1, upsample=False)
    g = at.grad_cam(model, x, target=1, upsample=False)  # picks conv2 by itself
    h, w = c.shape[1:]
    np.testing.assert_allclose(g, np.maximum(c, 0) / (h * w), rtol=1e-4, atol=1e-7)
    assert g.max() > 0
    np.testing.assert_allclose(at.grad_cam(model, x, 1), at.grad_cam(model, x, 1, layer="conv2"))


def test_nested_models_work_with_outer_inner_paths(rng):
    model, base = nested_model()
    x = rng.uniform(0, 1, (2, 10, 10, 3)).astype("float32")
    features = base(x).numpy()
    w = model.get_layer("dense").get_weights()[0]
    c = at.cam(model, x, target=[0, 2], upsample=False)
    np.testing.assert_allclose(c, np.einsum("nhwk,kn->nhw", features, w[:, [0, 2]]),
                               rtol=1e-4, atol=1e-6)
    g = at.grad_cam(model, x, target=[0, 2], layer="base/conv2", upsample=False)
    np.testing.assert_allclose(g, np.maximum(c, 0) / 36, rtol=1e-4, atol=1e-7)
    assert at.last_conv_layer(model, (10, 10, 3)) == "base/conv2"
    g1 = at.grad_cam(model, x, target=1, layer="base/conv1")
    assert g1.shape == (2, 10, 10) and np.isfinite(g1).all()
    guided = at.guided_backprop(model, x, target=1)
    assert guided.shape == x.shape and np.any(guided != 0)


# -- validation and tracing -------------------------------------------------------------------

def test_clear_errors_name_the_problem_and_the_choices(rng):
    model, _ = gap_model()
    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"out of range.*3 outputs"):
        at.saliency(model, x, target=3)
    with pytest.raises(ValueError, match="3 entries for 2 images"):
        at.saliency(model, x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="class index"):
        at.saliency(model, x, target=1.5)
    with pytest.raises(ValueError, match=r"shape"):
        at.saliency(model, x[:, :8], target=0)
    with pytest.raises(ValueError, match="one score per image"):
        at.saliency(model, x, target=lambda y: y[:, :2])
    with pytest.raises(ValueError, match=r"unknown layer.*'nope'.*conv1, pool, conv2"):
        at.grad_cam(model, x, target=0, layer="nope")
    with pytest.raises(ValueError, match=r"'logits' has output shape \(1, 3\).*4-D.*conv2"):
        at.grad_cam(model, x, target=0, layer="logits")
    with pytest.raises(ValueError, match="larger than the images"):
        at.occlusion(model, x, target=0, patch=13)
    with pytest.raises(ValueError, match="max_batch"):
        at.occlusion(model, x, target=0, max_batch=0)
    flat = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(2, 3, name="c"),
                             keras.layers.Flatten(name="flat"), keras.layers.Dense(3, name="d")])
    head = r"GlobalAveragePooling2D.*flat \[Flatten\] -> d \[Dense\]"
    with pytest.raises(ValueError, match=head):
        at.cam(flat, x, target=0)
    with pytest.raises(ValueError, match="class indices"):
        at.cam(model, x, target=lambda y: y[:, 0])


def test_probes_are_traced_once_across_calls_and_batch_sizes(rng):
    calls = []

    class Counting(keras.layers.Layer):
        def call(self, x):
            calls.append(1)  # Python runs only while tracing (or eagerly)
            return x

    model = keras.Sequential([keras.Input((8, 8, 3)), Counting(), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    x = rng.uniform(0, 1, (5, 8, 8, 3)).astype("float32")
    for method in (at.saliency, at.occlusion, at.grad_cam):
        method(model, x[:1], 0)
        before = len(calls)
        method(model, x, 1, max_batch=2)
        method(model, x[:3], [0, 1, 0], max_batch=2)
        assert len(calls) == before, method.__name__


def test_saliency_and_grad_cam_by_one_probe_give_both_methods_maps(rng):
    model, logits = gap_model(softmax=True)
    x = rng.uniform(0, 1, (3, 12, 12, 3)).astype("float32")
    calls = []
    conv1 = model.get_layer("conv1")
    original = conv1.call
    object.__setattr__(conv1, "call", lambda *a, **k: calls.append(1) or original(*a, **k))
    at.grad_cam_layer(model, x.shape[1:])  # the shape look-ups: one eager pass each, cached
    at.check_target(model, x, 0)
    before = len(calls)
    both = at.saliency_and_grad_cam(model, x, max_batch=2)  # the predicted classes
    assert len(calls) == before + 1  # one trace for both maps and the class
    predicted = np.argmax(logits(x, training=False).numpy(), axis=-1)
    np.testing.assert_array_equal(both["target"], predicted)
    # Against the gradient of an eager tape, to the tolerance the saliency test uses, and
    # Grad-CAM against CAM (relu(cam) / (h * w) on a GAP model), as that test does.
    want = np.stack([tape_gradient(logits, x[i:i + 1], t)[0] for i, t in enumerate(predicted)])
    np.testing.assert_allclose(both["saliency"], want, rtol=1e-4, atol=1e-6)
    c = at.cam(model, x, target=predicted, upsample=False)
    g = at.saliency_and_grad_cam(model, x, predicted, upsample=False)["grad_cam"]
    np.testing.assert_allclose(g, np.maximum(c, 0) / c[0].size, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(both["grad_cam"], at.grad_cam(model, x, predicted),
                               rtol=1e-4, atol=1e-7)
    assert g.max() > 0
