"""tbviz under tf.distribute: MirroredStrategy on two logical CPUs, and a two-process
MultiWorkerMirroredStrategy job on 127.0.0.1 where only the chief writes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from eventfiles import load
from cluster import run_workers

WORKER = os.path.join(os.path.dirname(__file__), "workers", "distributed_fit.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The workers import tbviz from this checkout, installed or not.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def run(log_dir, mode, env=None, timeout=300):
    out = subprocess.run([sys.executable, WORKER, str(log_dir), mode], capture_output=True,
                         text=True, timeout=timeout, env={**ENV, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def event_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files if "tfevents" in f)


EPS = np.finfo(np.float32).eps


@pytest.mark.slow
@pytest.mark.numerics
def test_mirrored_two_replicas_matches_single_device_and_logs_everything(tmp_path):
    single = run(tmp_path / "single", "single")
    mirrored = run(tmp_path / "mirrored", "mirrored")
    assert single["xent"][1] < single["xent"][0]  # it trains
    # The first step from the same weights: the same loss and the same SGD update, to
    # float32 reduction-order precision. Later steps are not compared: each carries the
    # rounding of the ones before it on. The longest sum of the step is conv1's kernel
    # gradient over the global batch, 16 images x 10 x 10 positions, summed per replica
    # and then across replicas; in another order its rounding changes by about
    # sqrt(n) * eps relative (random-walk rounding).
    rtol = np.sqrt(16 * 10 * 10) * EPS
    one, two = single["first_step"], mirrored["first_step"]
    assert two["w0"] == one["w0"]  # initialised from the same seed, bit for bit
    assert two["xent"] == pytest.approx(one["xent"], rel=rtol)
    w0, w1, w1_mirrored = (np.array(w, np.float64) for w in (one["w0"], one["w1"], two["w1"]))
    # Applying the update rounds each weight to float32 in each run (eps/2 twice).
    assert (np.linalg.norm(w1_mirrored - w1)
            <= EPS * np.linalg.norm(w1) + rtol * np.linalg.norm(w1 - w0))
    tags = set(load(tmp_path / "mirrored" / "train").Tags()["tensors"])
    assert {"epoch_xent", "seq/conv1/kernel", "gradients/seq/conv1/kernel",
            "tbviz/deconvnet/seq/conv1/topk", "attribution/grad_cam",
            "tbviz/deconvnet/seq/conv1/featuremaps"} <= tags


@pytest.mark.slow
def test_multiworker_on_loopback_only_chief_writes(tmp_path):
    log_dir = tmp_path / "logs"
    outs = [json.loads(out.strip().splitlines()[-1]) for _, out in
            run_workers([sys.executable, WORKER, str(log_dir), "multiworker"], ENV)]
    assert outs[0]["xent"] == pytest.approx(outs[1]["xent"])  # one job, one model
    files = event_files(log_dir)
    assert len([f for f in files if f.startswith("train")]) == 1, files  # the chief's only
    assert all(f.startswith("train") for f in files), files
    tags = set(load(log_dir / "train").Tags()["tensors"])
    assert {"epoch_xent", "batch_xent", "seq/conv1/kernel", "tbviz/deconvnet/seq/conv1/topk",
            "tbviz/deconvnet/seq/conv1/featuremaps"} <= tags
