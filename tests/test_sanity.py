"""tbviz.attribution.sanity_check: correlations recomputed independently, the model untouched.

The reference takes the randomized weights the check used (recorded by a subclass of
its copy), builds its own clone with them, computes saliency with a plain
``tf.GradientTape`` and correlates with ``scipy.stats.spearmanr``.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats as sps

import eventfiles
import models
from tbviz import attribution
from tbviz.callbacks.attribution import AttributionCallback
from tbviz.methods.attribution.sanity import RandomizedCopy, ranks, spearman, weighted_layers


class Recording(RandomizedCopy):
    """Keeps the copy's weights after each randomization."""

    def __init__(self, model, seed=0):
        super().__init__(model, seed)
        self.stages = []

    def randomize(self, path):
        super().randomize(path)
        self.stages.append((path, [w.copy() for w in self.copy.get_weights()]))


def tape_saliency_heat(model, x, classes):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
        score = tf.reduce_sum(tf.gather(out, classes, axis=1, batch_dims=1))
    return np.abs(tape.gradient(score, x).numpy()).max(axis=-1)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = models.compile(models.sequential(classes=3))
    x, y = models.data(48)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    return model, x[:4]


def test_ranks_and_spearman_agree_with_scipy_ties_included():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)  # many ties, as ReLU maps have
    b = a + rng.integers(0, 3, 200)
    assert np.array_equal(ranks(a), sps.rankdata(a))
    assert spearman(a, b) == pytest.approx(sps.spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5)))


@pytest.mark.parametrize("cascade", [True, False])
def test_correlations_recomputed_independently(trained, cascade):
    model, x = trained
    classes = np.argmax(model.predict(x, verbose=0), axis=1)
    rec = Recording(model)
    got = attribution.sanity_check(model, x, "saliency", cascade=cascade, randomized=rec)
    order = weighted_layers(model)
    assert order == ["head", "conv2", "conv1"]  # from the top
    assert [layer for layer, _ in got] == order
    trained_heat = tape_saliency_heat(model, x, classes)
    reference = keras.models.clone_model(model)
    original = model.get_weights()
    for k, ((layer, rho), (path, weights)) in enumerate(zip(got, rec.stages)):
        assert path == layer
        reference.set_weights(weights)
        heat = tape_saliency_heat(reference, x, classes)
        expected = np.mean([sps.spearmanr(a.ravel(), b.ravel()).statistic
                            for a, b in zip(trained_heat, heat)])
        # Two float32 gradient computations; a near-tie flipping moves rho by ~1e-4.
        assert rho == pytest.approx(expected, abs=1e-3)
        # Randomized: this layer, and in a cascade every one above it; the rest trained.
        random = set(order[:k + 1]) if cascade else {layer}
        for name in order:
            kernel = reference.get_layer(name).kernel.numpy()
            trained_kernel = model.get_layer(name).kernel.numpy()
            assert np.array_equal(kernel, trained_kernel) == (name not in random), name
            if name in random:  # re-drawn from its initializer: Glorot uniform, zero bias
                fan_in, fan_out = np.prod(kernel.shape[:-1]), kernel.shape[-1]
                receptive = np.prod(kernel.shape[:-2]) if kernel.ndim > 2 else 1
                limit = np.sqrt(6 / (fan_in + fan_out * receptive))
                assert np.abs(kernel).max() <= limit
                assert not reference.get_layer(name).bias.numpy().any()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), original))
    # The test can fail: randomizing the whole model changes a gradient map.
    assert got[-1][1] < 0.9


def test_the_users_model_is_never_touched(trained):
    model, x = trained
    before = [w.copy() for w in model.get_weights()]
    preds = model.predict(x, verbose=0)
    for method in ("guided_backprop", "grad_cam"):
        attribution.sanity_check(model, x, method)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    np.testing.assert_array_equal(model.predict(x, verbose=0), preds)


def test_nested_functional_model_and_fixed_seed():
    keras.utils.set_random_seed(1)
    model = models.functional_bn_nested()
    x, _ = models.data(3)
    a = attribution.sanity_check(model, x, "grad_cam", target=1, seed=3)
    b = attribution.sanity_check(model, x, "grad_cam", target=1, seed=3)
    assert [layer for layer, _ in a] == ["head", "block/inner_conv", "bn1", "conv1"]
    np.testing.assert_array_equal([rho for _, rho in a], [rho for _, rho in b])  # nan == nan


def test_bad_input_says_what_is_wrong(trained):
    model, x = trained
    with pytest.raises(ValueError, match="unknown attribution method 'lrp'; choose from"):
        attribution.sanity_check(model, x, "lrp")
    with pytest.raises(ValueError, match="unknown option.*patch for saliency"):
        attribution.sanity_check(model, x, "saliency", options={"patch": 4})
    with pytest.raises(ValueError, match="unknown layer"):
        attribution.sanity_check(model, x, "saliency", layers=["nope"])
    sub = models.Subclassed()
    sub(x)
    with pytest.raises(ValueError, match="sanity checks need a copy of model 'sub'"):
        attribution.sanity_check(sub, x, "saliency")


def test_attribution_callback_logs_sanity_per_trigger(tmp_path):
    keras.utils.set_random_seed(2)
    model = models.compile(models.sequential())
    x, y = models.data(16)
    cb = AttributionCallback(tmp_path, x[:4], methods=("saliency",), sanity=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    run = tmp_path / "train"
    full = eventfiles.scalars(run, "sanity/saliency")
    assert [s for s, _ in full] == [2, 4]
    # The last trigger saw the final weights: the same check now gives the same numbers.
    again = attribution.sanity_check(model, x[:4], "saliency")
    for layer, rho in again:
        assert eventfiles.scalars(run, f"sanity/saliency/{layer}")[-1][1] == pytest.approx(
            rho, abs=1e-6)
    assert full[-1][1] == pytest.approx(again[-1][1], abs=1e-6)
