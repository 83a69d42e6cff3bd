"""The package as a new user meets it: a saved transform-net loads after ``import
style_transfer`` alone, and the command prints none of TensorFlow's start-up lines."""

import os
import subprocess
import sys

import json

import keras
import numpy as np
import pytest

from style_transfer import data, quiet
from style_transfer.transform_net import build_transform_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_python(code, *args, env_changes=None, timeout=300):
    """Run ``code`` in a new interpreter (nothing of this test process imported)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the default a new user has
    env.update(env_changes or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


LOAD = """
import sys
import keras, numpy as np
import style_transfer
from style_transfer import load_transform_net

net = keras.saving.load_model(sys.argv[1])
checked = load_transform_net(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([keras.ops.convert_to_numpy(net(x)),
                               keras.ops.convert_to_numpy(checked(x))]))
"""


@pytest.mark.backends
def test_a_saved_transform_net_loads_with_keras_after_import_style_transfer(tmp_path, rng):
    net = build_transform_net()
    # Weights off their initial values, so a net rebuilt from scratch would not pass.
    net.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in net.get_weights()])
    net.save(tmp_path / "net.keras")
    x = rng.uniform(0, 255, (1, 20, 28, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = fresh_python(LOAD, str(tmp_path / "net.keras"), str(tmp_path / "x.npy"),
                       str(tmp_path / "y.npy"))
    assert out.returncode == 0, out.stderr
    loaded, checked = np.load(tmp_path / "y.npy")
    expected = keras.ops.convert_to_numpy(net(x))
    # The same float32 graph and weights on the same CPU; 1e-3 of 255 levels allows for
    # a different summation order of the convolutions in another process.
    np.testing.assert_allclose(loaded, expected, atol=1e-3)
    np.testing.assert_allclose(checked, expected, atol=1e-3)


@pytest.mark.backends
def test_the_command_prints_its_error_and_no_tensorflow_start_up_lines(tmp_path):
    out = fresh_python("import sys; from style_transfer.cli import main; sys.exit(main())",
                       "stylize", "--model", str(tmp_path / "missing.keras"), "photo.jpg",
                       "--output-dir", str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"style-transfer stylize: error: --model {str(tmp_path / 'missing.keras')!r}: no such "
        "file (the .keras file train saved)"]


def test_start_up_filter_drops_tensorflow_lines_below_the_level_and_keeps_the_rest(capfd):
    lines = ["I0000 00:00:1796118940.240009   11632 port.cc:153] oneDNN custom operations\n",
             "WARNING: All log messages before absl::InitializeLog() is called are written\n",
             "2024-05-01 10:00:00.123456: W tensorflow/core/x.cc:12] an older-format warning\n",
             "E0000 00:00:1796118962.676640   11819 cuda_platform.cc:52] failed call to cuInit\n",
             "a line of the user's own\n"]
    with quiet.filtered_stderr(min_level=2):  # drop info and warnings, keep errors
        for line in lines:
            os.write(2, line.encode())
    assert capfd.readouterr().err.splitlines(keepends=True) == [lines[3], lines[4]]
    with quiet.filtered_stderr(min_level=4):  # TF_CPP_MIN_LOG_LEVEL unset: none of them
        for line in lines:
            os.write(2, line.encode())
    assert capfd.readouterr().err.splitlines(keepends=True) == [lines[4]]


# A short run with every tbviz part of the recipe (losses chart layout, histograms,
# deconvnet of both networks, the scan, the stylized panel), then a stylize.
NO_TENSORFLOW = """
import json, sys
from style_transfer.cli import main
log, photos, style = sys.argv[1:4]
train = main(["train", "--content-dir", photos, "--style-image", style, "--log-dir", log,
              "--vgg-weights", "random", "--epochs", "1", "--steps-per-epoch", "2",
              "--batch-size", "1", "--image-size", "16", "--style-size", "16",
              "--content-layer", "block1_conv1", "--style-layers", "block1_conv1",
              "--transform-layers", "conv1", "--vgg-layers", "block1_conv1",
              "--log-every", "1", "--loss-every", "1", "--scan-images", "2", "--quiet"])
stylize = main(["stylize", "--model", log + "/transform_net.keras", photos + "/coffee.jpg",
                "--output-dir", log + "/out"])
print(json.dumps({"status": [train, stylize], "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
@pytest.mark.backends
def test_train_and_stylize_never_import_tensorflow_where_it_is_not_the_backend(tmp_path):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        pytest.skip("TensorFlow is the backend here")
    out = fresh_python(NO_TENSORFLOW, str(tmp_path / "run"), data.asset_path("photos"),
                       data.asset_path("styles", "wave.jpg"),
                       env_changes={"KERAS_BACKEND": backend}, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"status": [0, 0],
                                                              "tensorflow": False}
    assert os.path.isfile(tmp_path / "run" / "out" / "coffee.jpg")
