"""Mixed precision (``mixed_float16``): every part works and logs float32 values.

Layers compute in float16 there; tbviz reads scores, maps and gradients in
float32. The reference is the same network (same weights) under float32: float16
has an 11-bit mantissa (relative rounding 2**-11 ~ 5e-4 per operation), and a few
layers of convolutions and sums stay within 3e-2 of the largest value.
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbviz
from tbviz import attribution, feature_maps
from tests import eventfiles, models


@contextlib.contextmanager
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _twins():
    """The same functional network under mixed_float16 and under float32."""
    with mixed_float16():
        mixed = models.functional_bn_nested()
    plain = models.functional_bn_nested()
    plain.set_weights(mixed.get_weights())
    assert mixed.get_layer("conv1").compute_dtype == "float16"
    return mixed, plain


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "occlusion", "cam",
                                    "grad_cam"])
@pytest.mark.numerics
def test_attributions_of_a_mixed_precision_model_are_float32(method):
    mixed, plain = _twins()
    x, _ = models.data(2)
    options = {"occlusion": {"patch": 4}}.get(method, {})
    got = getattr(attribution, method)(mixed, x, 1, **options)
    want = getattr(attribution, method)(plain, x, 1, **options)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-2 * float(np.abs(want).max()))


@pytest.mark.numerics
def test_feature_maps_of_a_mixed_precision_model_are_float32():
    mixed, plain = _twins()
    x, _ = models.data(2)
    got = feature_maps.grid_outputs(mixed, x, "conv1", (12, 12, 0))
    want = feature_maps.grid_outputs(plain, x, "conv1", (12, 12, 0))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-2 * float(np.abs(want).max()))


def test_every_part_logs_a_mixed_precision_model_in_float32(tmp_path):
    x, y = models.data(16)
    with mixed_float16():
        model = models.compile(models.functional_bn_nested())
        viz = tbviz.TensorBoardViz(
            tmp_path, probe_images=x[:2], probe_labels=y[:2], top_k=2,
            attribution=["saliency", "smoothgrad", "guided_backprop", "occlusion", "grad_cam"],
            synthesis={"maximize": {"conv1": 2}, "invert": ["conv1"], "steps": 2},
            losses={"every_n_steps": 1}, convergence={"probe_images": x[:4]}, strict=True)
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[viz])
    acc = eventfiles.load(tmp_path / "train")
    tags = eventfiles.tags(acc)
    scalar_tags = [t for t in tags
                   if acc.SummaryMetadata(t).plugin_data.plugin_name == "scalars"]
    assert {"epoch_loss", "batch_loss", "gradient_norm/conv1", "tbviz/cost/deconvnet",
            "convergence/conv1/vs_previous"} <= set(scalar_tags)
    for tag in scalar_tags:
        for event in acc.Tensors(tag):
            assert event.tensor_proto.dtype == tf.float32.as_datatype_enum, tag
            assert np.isfinite(tf.make_ndarray(event.tensor_proto)), tag
    for tag in ("conv1/kernel", "gradients/conv1/kernel", "activations/conv1"):
        assert eventfiles.histogram_steps(acc, tag)[-1] == 4, tag
        histogram = tf.make_ndarray(acc.Tensors(tag)[-1].tensor_proto)
        assert np.all(np.isfinite(histogram)) and histogram[:, 2].sum() > 0, tag
    for tag in ("attribution/saliency", "attribution/grad_cam", "feature_maps/conv1",
                "synthesis/conv1/0", "synthesis/inversion/conv1"):
        step, images = eventfiles.images(acc, tag)[-1]
        assert step == 4 and images[0].dtype == np.uint8 and images[0].std() > 0, tag
    step, _, tiles = eventfiles.panels(acc, "tbviz/deconvnet/conv1/topk")[1][-1]
    assert step == 4 and tiles[0].dtype == np.uint8 and tiles[0].std() > 0
