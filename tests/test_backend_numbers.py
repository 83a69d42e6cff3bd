"""The same weights give the same numbers on every backend.

A model's weights are saved once (``.weights.h5``) and loaded on TensorFlow, JAX and
PyTorch, each in a process of its own (Keras picks its backend at import). The deconvnet's
projections under the three rules at ReLU, SiLU and GELU layers, saliency, Grad-CAM,
occlusion, the dataset scan's top units and CKA must agree with TensorFlow's to float32
rounding: the backends run the same math in other kernels and summation orders.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "workers", "backend_numbers.py")
BACKENDS = ("tensorflow", "jax", "torch")


def run(backend, weights, out):
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, WORKER, str(weights), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def numbers(tmp_path_factory):
    d = tmp_path_factory.mktemp("numbers")
    weights = d / "model.weights.h5"
    return {b: run(b, weights, d / f"{b}.npz") for b in BACKENDS}  # TF writes the weights


def close(got, want, what):
    # float32 through a few convolutions: relative errors of a few 1e-6 of the largest value
    # (another backend's kernels sum in another order); 1e-4 leaves room for oneDNN.
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=what)


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.cross_backend
@pytest.mark.parametrize("other", ["jax", "torch"])
def test_every_method_agrees_with_tensorflow(numbers, other):
    want, got = numbers["tensorflow"], numbers[other]
    assert str(got["backend"]) == other
    for key in want:
        if key == "backend":
            continue
        if key.endswith("units"):  # the same units, in the same order
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        else:
            close(got[key], want[key], key)
    # Not vacuous: every map has signal, and the three rules differ where an activation lies
    # below the unit's own (at the first layer only its own ReLU is passed, at a positive
    # unit: the three rules are one there, by definition).
    for layer in ("relu_conv", "silu_conv", "gelu_conv"):
        rules = [want[f"{layer}/{r}"] for r in ("deconvnet", "guided", "gradient")]
        assert all(np.abs(r).max() > 0 for r in rules)
        if layer != "relu_conv":
            assert not np.allclose(rules[0], rules[2]) and not np.allclose(rules[1], rules[2])
    # the scan saw 4 images 8 times: each map's top 3 are one image's first three copies, at
    # one position (equal values: the earlier image first), and several images win a map
    units = want["scan/units"].reshape(8, 3, 5)  # (channel, k, [channel, image, row, col, ch])
    first = units[:, 0, 1]
    assert (first < 4).all() and len(set(first)) > 1
    np.testing.assert_array_equal(units[:, :, 1], first[:, None] + [0, 4, 8])
    assert (units[:, :, 2:4] == units[:, :1, 2:4]).all()
