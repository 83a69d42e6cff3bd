"""tbviz.deconvnet.scan: the strongest units of each feature map over a whole dataset.

Backend-neutral but for the inputs only a backend has (a tf.data pipeline where TensorFlow
is installed, a torch DataLoader on PyTorch) and tf.distribute; the multi-process scans of
JAX and PyTorch are in tests/test_distributed_backends.py.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import models
from cluster import run_workers
from planted import PLANTED, detector, planted_images, response
from tbviz import backend, deconvnet
from tbviz.core.layers import forward_to
from tbviz.methods.deconvnet import scan

BACKENDS = pytest.mark.backends


def tensorflow():
    """TensorFlow, for a tf.data input: any backend reads one where TensorFlow is installed."""
    return pytest.importorskip("tensorflow")


class Batches(keras.utils.PyDataset):
    """``images`` in batches of ``size`` with zero labels, ``repeat``: forever."""

    def __init__(self, images, size, repeat=False, **kwargs):
        super().__init__(**kwargs)
        self.images, self.size, self.repeat = images, size, repeat

    @property
    def num_batches(self):
        return None if self.repeat else -(-len(self.images) // self.size)

    def __getitem__(self, i):
        i %= -(-len(self.images) // self.size)
        x = self.images[i * self.size:(i + 1) * self.size]
        return x, np.zeros(len(x), "int32")

# ---- a planted pattern among thousands of noise images (tests/planted.py) ---------------------

@pytest.fixture(scope="module")
def planted():
    keras.utils.set_random_seed(0)
    return detector(), planted_images()


def check_planted(found, images):
    for ch, plants in PLANTED.items():
        units = found["conv1"][ch]
        assert [(u.image_index, u.row, u.col) for u in units] == [p[:3] for p in plants]
        # float32 sums of 75 products of values below 11: relative error well under 1e-5
        np.testing.assert_allclose([u.value for u in units],
                                   [response(images, *p[:3], ch) for p in plants], rtol=1e-5)
        # after the 2x2 max-pool and an identity 1x1 conv, the same images, at half the position
        mix = found["mix"][ch]
        assert [(u.image_index, u.row, u.col) for u in mix] == [(i, r // 2, c // 2)
                                                               for i, r, c, _ in plants]


@BACKENDS
@pytest.mark.numerics
def test_scan_finds_the_planted_patterns_in_order_from_an_array(planted):
    model, images = planted
    found = scan(model, images, ["conv1", "mix"], k=4, max_batch=128)
    assert found.n_images == 3000
    check_planted({"conv1": {0: found["conv1"][0], 1: found["conv1"][1][:3]},
                   "mix": {0: found["mix"][0], 1: found["mix"][1][:3]}}, images)
    # map 1 has three plants: its fourth unit is weaker than all of them (the X detector
    # half-seeing the strongest cross), and its value is the NumPy one
    fourth = found["conv1"][1][3]
    assert fourth.value < 27 * 5 - 27
    assert fourth.value == pytest.approx(response(images, *fourth[:3], 1), rel=1e-5)


def assert_top3_planted(found):
    for layer in ("conv1", "mix"):
        for ch, plants in PLANTED.items():
            at = [(u.image_index, u.row, u.col) for u in found[layer][ch]]
            want = [(i, r, c) if layer == "conv1" else (i, r // 2, c // 2)
                    for i, r, c, _ in plants[:3]]
            assert at == want


@BACKENDS
def test_scan_finds_the_planted_patterns_from_a_tf_data_pipeline_of_labelled_batches(planted):
    tf = tensorflow()
    model, images = planted
    labels = np.zeros(len(images), "int32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(100)  # not max_batch
    assert_top3_planted(scan(model, ds, ["conv1", "mix"], k=3, max_batch=64))


@BACKENDS
@pytest.mark.parametrize("workers", [0, 2])
def test_scan_finds_the_planted_patterns_from_a_py_dataset(planted, workers):
    model, images = planted
    data = Batches(images, 100, workers=workers)  # workers: read by Keras' own enqueuer
    assert_top3_planted(scan(model, data, ["conv1", "mix"], k=3, max_batch=64))


@BACKENDS
@pytest.mark.skipif(backend.name != "torch", reason="a torch DataLoader on the PyTorch backend")
def test_scan_finds_the_planted_patterns_from_a_torch_data_loader(planted):
    import torch

    model, images = planted
    labelled = torch.utils.data.TensorDataset(torch.from_numpy(images),
                                              torch.zeros(len(images), dtype=torch.int64))
    loader = torch.utils.data.DataLoader(labelled, batch_size=100)
    assert_top3_planted(scan(model, loader, ["conv1", "mix"], k=3, max_batch=64))


@BACKENDS
@pytest.mark.numerics
def test_non_distinct_keeps_several_units_of_one_image(planted):
    model, images = planted
    # the strongest cross: its neighbours overlap it by 3 pixels and beat every other image
    # except the other plants; with distinct=False they may appear, with distinct=True not
    found = scan(model, images[2990:], ["conv1"], k=3, channels=[0], distinct=False)
    units = found["conv1"][0]
    assert units[0][:3] == (9, 10, 4)
    assert all(u.image_index == 9 for u in units)  # only image 2999 (9 here) holds a cross
    assert len({(u.row, u.col) for u in units}) == 3
    ref = np.stack([[response(images[2990:], 9, u.row, u.col, 0)] for u in units])[:, 0]
    np.testing.assert_allclose([u.value for u in units], ref, rtol=1e-5)


@BACKENDS
def test_limit_and_an_iterable_of_batches(planted):
    model, images = planted
    batches = (images[i:i + 50] for i in range(0, 3000, 50))
    found = scan(model, batches, ["conv1"], k=2, limit=1000, channels=[0])
    assert found.n_images == 1000
    assert [u.image_index for u in found["conv1"][0]] == [17, 640]


@BACKENDS
@pytest.mark.parametrize("distinct, want", [
    (True, [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)]),   # earlier images first
    (False, [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)]),  # then earlier positions
])
def test_ties_go_to_the_earlier_image_then_position_and_padding_is_never_chosen(distinct, want):
    # every unit of every image is -1; the zero images that fill the last batch up to the
    # first's size would give 0 and beat them all, were they not left out
    model = keras.Sequential([keras.Input((3, 4, 1)),
                              keras.layers.Conv2D(1, 1, use_bias=False, name="c")])
    model.get_layer("c").set_weights([-np.ones((1, 1, 1, 1), "float32")])
    found = scan(model, np.ones((5, 3, 4, 1), "float32"), ["c"], k=4, max_batch=3,
                 distinct=distinct)
    assert [u[:3] for u in found["c"][0]] == want
    assert [u.value for u in found["c"][0]] == [-1.0] * 4


# ---- the same numbers as project / patches on the whole images --------------------------------

@BACKENDS
@pytest.mark.numerics
@pytest.mark.parametrize("make, layers", [
    (models.sequential, ["conv1", "conv2"]),
    (models.functional_bn_nested, ["conv1", "block/inner_conv"]),
])
def test_projections_and_patches_from_the_crops_equal_the_whole_image_ones(make, layers):
    model = make((20, 20, 3))
    images = np.random.default_rng(1).uniform(0, 255, (37, 20, 20, 3)).astype("float32")
    found = scan(model, (images[i:i + 8] for i in range(0, len(images), 8)), layers, k=3,
                 max_batch=5)
    acts = deconvnet.projector(model, layers).activations(images)
    for layer in layers:
        a = acts[layer]
        for ch, units in found[layer].items():
            # the units: per image its strongest position of this map, the top 3 images
            per_image = a[..., ch].reshape(len(a), -1)
            best = np.argsort(-per_image.max(1), kind="stable")[:3]
            assert [u.image_index for u in units] == list(best)
            assert [divmod(int(per_image[u.image_index].argmax()), a.shape[2])
                    for u in units] == [(u.row, u.col) for u in units]
            for rule in ("deconvnet", "guided"):
                whole = deconvnet.project(model, images, layer, units, rule=rule)
                mine = found.project(layer, rule=rule)[ch]
                # the same float32 ops on a crop and on the whole image: only summation order
                # may differ, so a relative tolerance on the projection's scale
                np.testing.assert_allclose(mine, whole, rtol=1e-5,
                                           atol=1e-5 * np.abs(whole).max())
            for mine, whole in zip(found.patches(layer)[ch],
                                   deconvnet.patches(model, images, layer, units)):
                np.testing.assert_array_equal(mine, whole)  # the same pixels, copied


@BACKENDS
@pytest.mark.numerics
def test_a_vision_transformers_token_layers_are_scanned_on_their_patch_grid():
    shape = (32, 48, 3)  # 8-pixel patches: a 4 x 6 grid after the class token
    model = models.vit(shape)
    images = np.random.default_rng(1).uniform(0, 255, (21,) + shape).astype("float32")
    layers = ["block0_out", "final_norm"]
    found = scan(model, Batches(images, 8), layers, k=3, channels=[0, 5])
    assert found.grids == {"block0_out": (4, 6, 1), "final_norm": (4, 6, 1)}
    proj = deconvnet.projector(model, layers)
    acts = proj.activations(images)  # (N, 4, 6, D): the projector's own view of the tokens
    for layer in layers:
        a = acts[layer]
        assert a.shape == (21, 4, 6, 16)
        for ch, units in found[layer].items():
            per_image = a[..., ch].reshape(len(a), -1)
            best = np.argsort(-per_image.max(1), kind="stable")[:3]
            assert [u.image_index for u in units] == list(best)
            assert [divmod(int(per_image[u.image_index].argmax()), 6) for u in units] == [
                (u.row, u.col) for u in units]
            # the plain gradient whatever the rule asked (a token layer), from whole images
            whole = proj.project(images, {layer: units})[layer]
            for rule in ("deconvnet", "gradient"):
                np.testing.assert_allclose(found.project(layer, rule=rule)[ch], whole,
                                           rtol=1e-5, atol=1e-5 * np.abs(whole).max())
            # each patch: the 8 x 8 cell of its token, one row for the class token skipped
            for u, patch in zip(units, found.patches(layer)[ch]):
                np.testing.assert_array_equal(
                    patch, images[u.image_index, 8 * u.row:8 * u.row + 8, 8 * u.col:8 * u.col + 8])


@BACKENDS
def test_tokens_that_form_no_grid_are_said_and_the_grid_can_be_given():
    model = models.vit((32, 32, 3), patch=(8, 4))  # 4 x 8 patches on a square image
    images = np.random.default_rng(2).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    with pytest.raises(ValueError, match=r"'block0_out' outputs \(33, 16\).*token_grid=\(h, w\)"):
        scan(model, images, ["block0_out"], k=2)
    found = scan(model, images, ["block0_out"], k=2, channels=[3], token_grid=(4, 8),
                 class_token=True)
    assert found.grids["block0_out"] == (4, 8, 1) and len(found["block0_out"][3]) == 2
    assert found.patches("block0_out")[3][0].shape == (8, 4, 3)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    return models.sequential((12, 12, 3))


@BACKENDS
def test_wrong_shape_or_dtype_names_the_models_input(small):
    with pytest.raises(ValueError, match=r"expects image batches of shape \(N,\) \+ \(12, 12, 3\)"):
        scan(small, np.zeros((4, 10, 10, 3), "float32"), ["conv1"])
    with pytest.raises(ValueError, match=r"\(12, 12, 3\)"):
        scan(small, np.zeros((12, 12, 3), "float32"), ["conv1"])
    with pytest.raises(ValueError, match=r"dtype .*\(12, 12, 3\)"):
        scan(small, np.full((2, 12, 12, 3), "a"), ["conv1"])


@BACKENDS
def test_empty_and_infinite_data_are_refused(small):
    with pytest.raises(ValueError, match="empty"):
        scan(small, np.zeros((0, 12, 12, 3), "float32"), ["conv1"])
    with pytest.raises(ValueError, match="empty"):
        scan(small, iter([]), ["conv1"])
    with pytest.raises(ValueError, match="no images"):
        scan(small, [np.zeros((0, 12, 12, 3), "f4")], ["conv1"])
    endless = Batches(np.ones((4, 12, 12, 3), "f4"), 2, repeat=True)
    with pytest.raises(ValueError, match="infinite.*limit"):
        scan(small, endless, ["conv1"])
    assert scan(small, endless, ["conv1"], limit=10).n_images == 10


@BACKENDS
def test_empty_and_infinite_tf_datasets_are_refused(small):
    tf = tensorflow()
    with pytest.raises(ValueError, match="empty"):
        scan(small, tf.data.Dataset.from_tensor_slices(np.zeros((0, 12, 12, 3), "f4")).batch(4),
             ["conv1"])
    with pytest.raises(ValueError, match="no images"):  # cardinality unknown until read
        scan(small, tf.data.Dataset.from_tensor_slices(np.zeros((4, 12, 12, 3), "f4"))
             .batch(2).filter(lambda x: False), ["conv1"])
    endless = tf.data.Dataset.from_tensor_slices(np.ones((4, 12, 12, 3), "f4")).batch(2).repeat()
    with pytest.raises(ValueError, match="infinite.*limit"):
        scan(small, endless, ["conv1"])
    assert scan(small, endless, ["conv1"], limit=10).n_images == 10


@BACKENDS
def test_fewer_images_than_k_give_fewer_units(small):
    found = scan(small, np.ones((3, 12, 12, 3), "f4"), ["conv1", "head"], k=9)
    assert all(len(units) == 3 for units in found["conv1"].values())
    assert sorted(u.image_index for u in found["head"][0]) == [0, 1, 2]


@BACKENDS
def test_channels_out_of_range_lists_the_valid_range(small):
    with pytest.raises(ValueError, match=r"channel 4 .*'conv1'.*0\.\.3"):
        scan(small, np.ones((3, 12, 12, 3), "f4"), ["conv1"], channels=[0, 4])


@BACKENDS
@pytest.mark.numerics
def test_nan_activations_are_never_chosen_counted_and_warned_once(small):
    images = np.random.default_rng(2).uniform(0, 1, (6, 12, 12, 3)).astype("float32")
    images[2, 5, 5, 0] = np.nan
    images[4, 0, 0, 1] = np.inf
    # compiled, as the scan runs it: fused kernels may turn relu(NaN) into 0
    forward = forward_to(small, ["conv1"])
    acts = backend.numpy(backend.function(forward, models=[small])(images))["conv1"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        found = scan(small, images, ["conv1"], k=6, max_batch=2)
    assert len([w for w in seen if "NaN or Inf" in str(w.message)]) == 1
    assert found.nonfinite["conv1"] == int((~np.isfinite(acts)).sum()) > 0
    for units in found["conv1"].values():
        assert all(np.isfinite(u.value) for u in units)
        assert all(np.isfinite(acts[u.image_index, u.row, u.col, u.channel]) for u in units)


# ---- tf.distribute: each worker scans its share, the top-k merged by a collective -------------
# (a MirroredStrategy's replicas share one process: its scan is one device's, under the scope)

WORKER = os.path.join(os.path.dirname(__file__), "workers", "scan_shards.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def run_worker(mode):
    out = subprocess.run([sys.executable, WORKER, mode], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_same_scan(got, want):
    assert got["n_images"] == want["n_images"]
    assert got["units"].keys() == want["units"].keys()
    for key in want["units"]:
        assert [u[:4] for u in got["units"][key]] == [u[:4] for u in want["units"][key]], key
        # each unit's value comes from the same float32 ops on the same image, but another
        # batch split may run another kernel or summation order: up to n x float32 eps
        # (1.2e-7) of the layer's scale, n <= 294 terms (the head's), so 5e-5
        values = [u[4] for u in want["units"][key]]
        np.testing.assert_allclose([u[4] for u in got["units"][key]], values, rtol=5e-5,
                                   atol=5e-5 * max(np.abs(values).max(), 1e-30))
    # the crops are the images' pixels, copied: the same sums
    np.testing.assert_array_equal(got["crop_sums"], want["crop_sums"])


@pytest.mark.slow
@pytest.mark.numerics
def test_mirrored_scan_on_two_logical_cpus_equals_a_single_device_scan():
    single = run_worker("single")
    assert_same_scan(run_worker("mirrored"), single)


@pytest.mark.slow
@pytest.mark.numerics
def test_multiworker_scan_on_loopback_equals_a_single_device_scan():
    single = run_worker("single")
    outs = [json.loads(out.strip().splitlines()[-1])
            for _, out in run_workers([sys.executable, WORKER, "multiworker"], ENV)]
    # each worker scanned its share (every other image), and ends with the merged result
    assert sorted(tuple(out["processes"]) for out in outs) == [(2, 0), (2, 1)]
    for out in outs:
        assert_same_scan(out, single)
