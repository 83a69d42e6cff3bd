"""Grouped convolutions (ConvNeXt's depthwise-as-grouped Conv2D) in every gradient probe.

The reference is the same network with each grouped convolution written as a dense
Conv2D whose kernel is block-diagonal (zero between groups): the same function, whose
gradient TensorFlow computes with its ordinary dense kernels.
"""

import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tbviz import attribution, deconvnet

# Compared with another computation (a block-diagonal dense kernel): ./scripts/test.sh
# --numerics runs these under other kernels and thread counts.
pytestmark = pytest.mark.numerics

L = keras.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def network(groups, channels, multiplier):
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(channels, 3, padding="same", name="c0"),
        L.Conv2D(channels * multiplier, 3, groups=groups, padding="same", name="g"),
        L.Activation("gelu", name="act"),
        L.MaxPooling2D(name="pool"),
        L.Conv2D(4, 1, name="c1"),
        L.GlobalAveragePooling2D(),
        L.Dense(3, name="head"),
    ])


def grouped_and_dense(groups, channels=6, multiplier=2):
    """A network with a grouped convolution ``g`` and its block-diagonal dense twin."""
    keras.utils.set_random_seed(0)
    grouped = network(groups, channels, multiplier)
    dense = network(1, channels, multiplier)
    for a, b in zip(grouped.layers, dense.layers):
        if a.name != "g":
            b.set_weights(a.get_weights())
    kernel, bias = grouped.get_layer("g").get_weights()  # (3, 3, channels / groups, out)
    full = np.zeros(kernel.shape[:2] + (channels, kernel.shape[-1]), np.float32)
    c_in, c_out = channels // groups, kernel.shape[-1] // groups
    for i in range(groups):
        full[:, :, i * c_in:(i + 1) * c_in, i * c_out:(i + 1) * c_out] = \
            kernel[..., i * c_out:(i + 1) * c_out]
    dense.get_layer("g").set_weights([full, bias])
    return grouped, dense


def images():
    return np.random.default_rng(1).uniform(0, 1, (2, 10, 10, 3)).astype("float32")


def close(a, b):
    # Same sums in a different order (the dense twin adds exact zeros): float32 rounding,
    # relative to the largest value.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1e-30))


def projections_match(groups, rule, crop, layer="c1"):
    grouped, dense = grouped_and_dense(groups)
    x = images()
    # Several units of each image: they share a forward pass and their backward passes are
    # vectorized, the path TensorFlow cannot take for a grouped conv on a CPU without oneDNN.
    units = deconvnet.strongest(grouped, x, layer, k=6)
    assert len({u.image_index for u in units}) < len(units)
    got = deconvnet.project(grouped, x, layer, units, rule=rule, crop=crop)
    want = deconvnet.project(dense, x, layer, units, rule=rule, crop=crop)
    assert np.abs(want).max() > 0
    close(got, want)


@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("groups", [6, 2], ids=["depthwise", "two_groups"])
def test_projections_through_a_grouped_conv_equal_its_dense_twin(groups, rule, crop):
    projections_match(groups, rule, crop)


@pytest.mark.parametrize("groups", [6, 2], ids=["depthwise", "two_groups"])
def test_attributions_through_a_grouped_conv_equal_its_dense_twin(groups):
    grouped, dense = grouped_and_dense(groups)
    x = images()
    for method in ("saliency", "guided_backprop", "grad_cam"):
        got = getattr(attribution, method)(grouped, x, target=1)
        want = getattr(attribution, method)(dense, x, target=1)
        close(got, want)


@pytest.mark.slow  # a fresh TensorFlow process: about 25 s on 2 cores
def test_grouped_projection_without_onednn_does_not_fail():
    # Without oneDNN, TensorFlow's vectorized gradient of a grouped convolution raises
    # "Gradients for grouped convolutions are not supported on CPU". oneDNN is read when
    # TensorFlow starts, hence a fresh process.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    code = ("from test_grouped_conv import projections_match\n"
            "projections_match(6, 'deconvnet', crop=False)\n"
            "projections_match(2, 'guided', crop=False, layer='g')\n"
            "print('matched')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "matched" in out.stdout, out.stderr[-3000:]


def test_the_per_group_backward_is_said_once_per_model(caplog):
    grouped, _ = grouped_and_dense(2)
    x = images()
    with caplog.at_level(logging.INFO, logger="tbviz"):
        for rule in ("deconvnet", "guided"):
            deconvnet.project(grouped, x, "c1", [(0, 1, 1, 0)], rule=rule)
        attribution.saliency(grouped, x, target=0)
    said = [r.getMessage() for r in caplog.records if "grouped convolution" in r.getMessage()]
    assert len(said) == 1 and "(g)" in said[0]
