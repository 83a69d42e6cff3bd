"""Shared pytest setup: quiet TensorFlow, deterministic seeds, small helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    """Which kernels and threads TensorFlow runs with: numerical results depend on them."""
    names = ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS")
    return "tensorflow settings: " + ", ".join(f"{n}={os.environ.get(n, 'default')}"
                                               for n in names)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seeds, so failures reproduce."""
    import keras

    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
