"""tbviz under distribution on JAX and PyTorch: only process 0 (rank 0) writes, and what it
writes equals a single-device run's.

* JAX, ``keras.distribution.DataParallel`` over two host devices of one process
  (``XLA_FLAGS=--xla_force_host_platform_device_count=2``): the weights replicated on both,
  each batch split between them.
* JAX, two processes of one job (``jax.distributed`` on loopback, one device each, each
  feeding its half of every global batch): process 1 writes nothing; the scan, split
  between the processes, merges to the single-device result on both.
* PyTorch, two ``torch.distributed`` gloo ranks on CPU: rank 1 writes nothing, the scan
  merges through ``all_gather_object``. Keras has no PyTorch distribution, so each rank
  trains its own copy of the model (here on the same data).

Each run is a fresh process (``tests/workers/backend_fit.py``): Keras picks its backend at
import. The weights do not move (SGD at learning rate 0), so every panel can be compared
with the single-device run's; only the losses go through another reduction order.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cluster import run_workers
from eventfiles import assert_same_run
from tbserver import free_port

WORKER = os.path.join(os.path.dirname(__file__), "workers", "backend_fit.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
# The loss of a global batch of 16 is a mean of 16 float32 terms, summed per device and
# then across devices: at most 16 roundings of eps (1.2e-7) each apart.
RTOL = 16 * float(np.finfo(np.float32).eps)

pytestmark = [pytest.mark.slow, pytest.mark.cross_backend]


def run(backend, log_dir, mode, env=None):
    done = subprocess.run([sys.executable, WORKER, str(log_dir), mode], capture_output=True,
                          text=True, timeout=600,
                          env={**ENV, "KERAS_BACKEND": backend, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_two(backend, log_dir, mode, env):
    """Two processes of one job; ``[(pid, result)]`` in process order."""
    outs = run_workers([sys.executable, WORKER, str(log_dir), mode],
                       {**ENV, "KERAS_BACKEND": backend}, env=env, timeout=600)
    return [(pid, json.loads(out.strip().splitlines()[-1])) for pid, out in outs]


def event_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files if "tfevents" in f)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """``{backend: (log dir, result)}`` of one-device runs, made when first asked for."""
    runs = {}

    def get(backend):
        if backend not in runs:
            log_dir = tmp_path_factory.mktemp(f"single_{backend}")
            runs[backend] = log_dir, run(backend, log_dir, "single")
            # not vacuous: the scan's units come from both halves of the split
            images = {u[0] for us in runs[backend][1]["units"].values() for u in us}
            assert {i % 2 for i in images} == {0, 1}
        return runs[backend]
    return get


def test_jax_data_parallel_over_two_host_devices_writes_the_panels_of_one_device(
        tmp_path, single):
    want_dir, want = single("jax")
    got = run("jax", tmp_path, "data_parallel",
              {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert got["devices"] == ["cpu:0", "cpu:1"] and got["weight_devices"] == got["devices"]
    assert got["processes"] == [1, 0] and got["chief"]
    assert got["units"] == want["units"]
    assert event_files(tmp_path) == [f for f in event_files(tmp_path) if f.startswith("train")]
    assert_same_run(tmp_path / "train", want_dir / "train", RTOL)


def test_jax_two_processes_only_process_0_writes_and_the_scan_merges(tmp_path, single):
    want_dir, want = single("jax")
    coordinator = f"127.0.0.1:{free_port()}"
    outs = run_two("jax", tmp_path, "jax_processes",
                   lambda i: {"TBVIZ_COORDINATOR": coordinator, "TBVIZ_PROCESS": str(i)})
    assert [(o["processes"], o["chief"]) for _, o in outs] == [([2, 0], True), ([2, 1], False)]
    for _, out in outs:  # each scanned every other image, and holds the merged result
        assert out["units"] == want["units"]
    files = event_files(tmp_path)
    assert len(files) == 1 and files[0].startswith("train") and f".{outs[0][0]}." in files[0]
    assert_same_run(tmp_path / "train", want_dir / "train", RTOL)


def test_torch_two_gloo_ranks_only_rank_0_writes_and_the_scan_merges(tmp_path, single):
    want_dir, want = single("torch")
    port = str(free_port())
    outs = run_two("torch", tmp_path, "torch_ranks",
                   lambda i: {"RANK": str(i), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": port})
    assert [(o["processes"], o["chief"]) for _, o in outs] == [([2, 0], True), ([2, 1], False)]
    for _, out in outs:
        assert out["units"] == want["units"]
    files = event_files(tmp_path)
    assert len(files) == 1 and files[0].startswith("train") and f".{outs[0][0]}." in files[0]
    assert_same_run(tmp_path / "train", want_dir / "train", RTOL)
