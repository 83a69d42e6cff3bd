"""No TensorFlow where it is not the backend: a whole ``fit`` with ``TensorBoardViz`` at its
defaults on JAX and on PyTorch never imports ``tensorflow``, and what it writes is read back
by TensorBoard's own reader in a process that cannot import TensorFlow either.

Each run is a fresh process (Keras picks its backend at import; a test process has
TensorFlow loaded already).
"""

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "workers", "fit_without_tensorflow.py")

# TensorBoard's reader, in a process where `import tensorflow` fails (as where it is not
# installed): TensorBoard then falls back to its own stub.
READER = """
import json, sys
sys.modules["tensorflow"] = None
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.TENSORS: 0, ea.GRAPH: 0})
acc.Reload()
print(json.dumps({"tags": sorted(acc.Tags()["tensors"]), "graph": acc.Tags()["graph"],
                  "tensorflow": type(sys.modules.get("tensorflow")).__name__}))
"""


@pytest.mark.slow
@pytest.mark.cross_backend
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_fit_with_tensorboard_viz_never_imports_tensorflow(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, WORKER, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"backend": backend, "tensorflow": False}
    read = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "train")],
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    tags = json.loads(read.stdout.strip().splitlines()[-1])
    assert tags["tensorflow"] == "NoneType"  # the reader ran without TensorFlow
    assert {"epoch_loss", "conv1/kernel", "gradients/conv1/kernel", "activations/conv1",
            "tbviz/deconvnet/conv2/topk", "tbviz/deconvnet/conv2/evolution",
            "feature_maps/conv2"} <= set(tags["tags"])
    assert tags["graph"]  # the op graph, traced by the backend's own tracer
