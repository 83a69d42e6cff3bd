"""``style-transfer train`` as real processes: killed with SIGKILL and resumed, on two
mirrored replicas, and as a two-worker MultiWorkerMirroredStrategy job on 127.0.0.1.

Every run trains the same tiny setup (12 steps) and is compared with one uninterrupted
single-device run of it, read back the way TensorBoard reads event files. A resumed run
repeats the very computation of the uninterrupted one, so it must give its values. A
distributed run sums in another order, and 12 Adam steps through instance norms amplify
that rounding by orders of magnitude: it is compared on its first step, from the same
weights, and otherwise by what its logs hold.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing import plugin_event_accumulator as pea

from style_transfer import data
from style_transfer.transform_net import load_transform_net
from cluster import run_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "killed_train.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
STEPS = 12  # 3 epochs of 4 steps; checkpoints after steps 3, 4, 6, 8, 9, 12
EPS = np.finfo(np.float32).eps
# The longest float32 sum of a training step: the content loss's mean over the global
# batch's block1_conv1 features (2 images x 16 x 16 x 64). Summed in another order (per
# replica, then across replicas) its rounding error changes; random-walk rounding makes
# that change about sqrt(n) * eps relative, for the loss and for the gradient through it.
REDUCTION_RTOL = np.sqrt(2 * 16 * 16 * 64) * EPS
OPTIONS = ["--vgg-weights", "random", "--epochs", "3", "--steps-per-epoch", "4",
           "--batch-size", "2", "--image-size", "16", "--style-size", "16", "--probe-size", "16",
           "--log-every", "3", "--loss-every", "1", "--checkpoint-every", "3",
           "--content-layer", "block1_conv1", "--style-layers", "block1_conv1",
           "--transform-layers", "conv1", "--vgg-layers", "", "--quiet"]


def argv(log_dir):
    return ["train", "--content-dir", data.asset_path("photos"), "--log-dir", str(log_dir),
            "--style-image", data.asset_path("styles", "wave.jpg"), *OPTIONS]


def worker(kill_at, args):
    return [sys.executable, WORKER, str(kill_at), *args]


def per_file(run_dir, tag="batch_loss"):
    """``[[(step, value), ...] per event file]``, in the order TensorBoard reads the files."""
    files = sorted(f for f in os.listdir(run_dir) if "tfevents" in f)
    out = []
    for name in files:
        values = []
        for event in event_file_loader.EventFileLoader(os.path.join(run_dir, name)).Load():
            for v in event.summary.value:
                if v.tag == tag:
                    values.append((event.step, float(tf.make_ndarray(v.tensor))))
        out.append(values)
    return out


def tensorboard_view(run_dir, tag):
    """``[(step, value)]`` as TensorBoard's server shows the tag (orphaned steps purged)."""
    acc = pea.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def image_steps(run_dir, tag):
    acc = pea.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Tensors(tag)]


def resumed_from(stdout):
    found = re.search(r"resumed from \S*ckpt-(\d+): global step (\d+)", stdout)
    if found:
        assert found.group(1) == found.group(2)
        return int(found.group(1))
    assert "no checkpoint" in stdout, stdout
    return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run left alone on one device: its run folder, TensorBoard's batch_loss curve and
    what its first step did (see workers/killed_train.py)."""
    root = tmp_path_factory.mktemp("reference")
    log_dir, first = root / "run", root / "first_step.npz"
    out = subprocess.run(worker(0, argv(log_dir)), capture_output=True, text=True,
                         env={**ENV, "FIRST_STEP_NPZ": str(first)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    curve = tensorboard_view(log_dir / "train", "batch_loss")
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    return log_dir, curve, dict(np.load(first))


def assert_same_first_step(got, expected):
    """The first step of a distributed run is the single-device one: from the same weights,
    the same loss and the same gradient to float32 reduction-order precision, and the
    weights moved by one Adam step for that gradient.

    The gradient is read from Adam's first moment, ``m = (1 - beta_1) * g`` after one step,
    and compared over all weights at once (the 2-norm): the bias of a convolution right
    before an instance norm has no effect, its exact gradient is 0 and the computed one is
    rounding noise, many orders of magnitude below the rest. For the same reason the
    weights after the step are not compared across runs: Adam's first step is about
    ``lr * sign(g)``, and a rounding-level difference flips that sign where g is noise.
    """
    n = len([k for k in expected if k.startswith("w0/")])
    assert n == len([k for k in got if k.startswith("w0/")]) > 0
    for i in range(n):  # initialised from the same seed: the same computation, bit for bit
        np.testing.assert_array_equal(got[f"w0/{i}"], expected[f"w0/{i}"])
    assert got["loss"] == pytest.approx(expected["loss"], rel=REDUCTION_RTOL)
    m_got, m_expected = (np.concatenate([d[f"m/{i}"].ravel() for i in range(n)])
                         for d in (got, expected))
    err = np.linalg.norm(m_got - m_expected) / np.linalg.norm(m_expected)
    assert err <= REDUCTION_RTOL, (err, REDUCTION_RTOL)
    lr, b1, b2, eps_adam = (np.float64(np.float32(got[k]))
                            for k in ("learning_rate", "beta_1", "beta_2", "epsilon"))
    alpha = lr * np.sqrt(1 - b2) / (1 - b1)  # Keras' Adam at step 1
    for i in range(n):
        w0, w1, m, v = (got[f"{k}/{i}"].astype(np.float64) for k in ("w0", "w1", "m", "v"))
        update = alpha * m / (np.sqrt(v) + eps_adam)
        # float32 rounding: w1 once (eps/2); the update 8 times (4 ops on m, v and 4 in
        # alpha), eps/2 each; and 1 - beta_2 ** 1 cancels, so one rounding of the power
        # (eps/2) is eps/2 / (1 - beta_2) relative in alpha, half that after the sqrt.
        tol = EPS / 2 * np.abs(w1) + (4 * EPS + EPS / 4 / (1 - b2)) * np.abs(update)
        assert np.all(np.abs(w1 - (w0 - update)) <= tol), i


def assert_reads_like(run, reference_run):
    """``run``'s logs read back as ``reference_run``'s: the same tags, each at the same
    steps, and every scalar finite."""
    got, expected = (pea.EventAccumulator(str(r), size_guidance={"tensors": 0})
                     for r in (run, reference_run))
    got.Reload()
    expected.Reload()
    assert sorted(got.Tags()["tensors"]) == sorted(expected.Tags()["tensors"])
    for tag in expected.Tags()["tensors"]:
        events = got.Tensors(tag)
        assert [e.step for e in events] == [e.step for e in expected.Tensors(tag)], tag
        values = [tf.make_ndarray(e.tensor_proto) for e in events]
        if all(v.dtype.kind == "f" for v in values):
            assert all(np.all(np.isfinite(v)) for v in values), tag


def assert_same_curve(got, expected, rtol):
    assert [s for s, _ in got] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=rtol)


def assert_same_net(run_a, run_b, atol):
    """The two runs' transform-nets stylize photos alike, to ``atol`` of 255 levels."""
    photos, _ = data.load_probe_photos(data.bundled_photos()[:3], 32)
    a = load_transform_net(run_a / "transform_net.keras")(photos)
    b = load_transform_net(run_b / "transform_net.keras")(photos)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=atol)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume(tmp_path, reference):
    """Killed during the first epoch before any checkpoint, in the middle of an epoch
    between two checkpoints, and from outside at whatever moment the process is in once
    a checkpoint file appears. Each resume continues at the right step, repeating at
    most the steps after the last checkpoint; nothing flushed before a kill is lost;
    TensorBoard shows every step once, with the values of the run left uninterrupted,
    and the run ends with the same network."""
    log_dir = tmp_path / "run"
    run = log_dir / "train"
    kills = []  # (steps on disk right after the kill, the step the next process resumed from)

    # 1. During the first epoch, before any checkpoint.
    out = subprocess.run(worker(2, argv(log_dir)), capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert not os.path.exists(log_dir / "checkpoints" / "checkpoint")
    on_disk = per_file(run)

    # 2. Resumed (from scratch: there is no checkpoint), killed after step 7: after the
    #    checkpoint of step 6, in the middle of the second epoch.
    out = subprocess.run(worker(7, argv(log_dir) + ["--resume"]), capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    kills.append((on_disk, resumed_from(out.stdout)))
    on_disk = per_file(run)

    # 3. Resumed, killed from outside as soon as the checkpoint of step 9 is on disk,
    #    wherever the process then is (still saving it, or already some steps further).
    proc = subprocess.Popen(worker(0, argv(log_dir) + ["--resume"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(log_dir / "checkpoints" / "ckpt-9.index"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "finished before the kill: " + stderr[-2000:]
    kills.append((on_disk, resumed_from(stdout)))
    on_disk = per_file(run)

    # 4. Resumed to the end.
    out = subprocess.run(worker(0, argv(log_dir) + ["--resume"]), capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    kills.append((on_disk, resumed_from(out.stdout)))
    assert f"global step {STEPS}" in out.stdout

    final = per_file(run)
    assert len(final) == 4  # one event file per process
    resumes = [r for _, r in kills]
    # 8: killed after ckpt-9's files were written but before the index named it.
    assert resumes[0] == 0 and resumes[1] == 6 and resumes[2] in (8, 9), resumes
    for k, (before, resumed) in enumerate(kills):
        steps_before = {s for f in before for s, _ in f}
        # A checkpoint never runs ahead of the logs: what it covers was on disk already.
        assert set(range(1, resumed + 1)) <= steps_before, (k, resumed, sorted(steps_before))
        # Nothing flushed before the kill is lost: every event file is intact.
        for old, new in zip(before, final):
            assert new[:len(old)] == old
        # The next process continues right after the checkpoint: it repeats only the
        # steps the killed one did after it.
        nxt = final[k + 1]
        assert nxt[0][0] == resumed + 1, (k, nxt)
        assert [s for s, _ in nxt] == list(range(resumed + 1, nxt[-1][0] + 1))

    # TensorBoard shows each step once, and the same curve as the uninterrupted run.
    ref_dir, expected, _ = reference
    # The same computation as the uninterrupted run: the same values, up to the last bit
    # in principle; the tolerance only keeps a failure's report readable.
    assert_same_curve(tensorboard_view(run, "batch_loss"), expected, rtol=1e-5)
    assert [s for s, _ in tensorboard_view(run, "epoch_loss")] == [0, 1, 2]
    for tag in ("tbviz/stylized/probes", "tbviz/deconvnet/conv1/topk"):  # every 3, epoch ends
        assert image_steps(run, tag) == image_steps(ref_dir / "train", tag) == [3, 4, 6, 8, 9, 12]
    assert_same_net(ref_dir, log_dir, atol=1e-3)


@pytest.mark.slow
@pytest.mark.numerics
def test_mirrored_on_two_cpu_replicas_matches_one_device(tmp_path, reference):
    """--batch-size is the global batch: two replicas of one image each make the same first
    step as one device with both images, and the run's logs read back like its logs."""
    log_dir, first = tmp_path / "mirrored", tmp_path / "first_step.npz"
    out = subprocess.run(worker(0, argv(log_dir) + ["--strategy", "mirrored",
                                                    "--cpu-replicas", "2"]),
                         capture_output=True, text=True, timeout=300,
                         env={**ENV, "FIRST_STEP_NPZ": str(first)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 replicas" in out.stdout, out.stdout
    ref_dir, _, ref_first = reference
    assert_same_first_step(np.load(first), ref_first)
    assert_reads_like(log_dir / "train", ref_dir / "train")
    assert image_steps(log_dir / "train", "tbviz/stylized/probes") == [3, 4, 6, 8, 9, 12]


@pytest.mark.slow
@pytest.mark.numerics
def test_multiworker_on_loopback_only_the_chief_writes(tmp_path, reference):
    """Two processes, one CPU each, one TF_CONFIG cluster on 127.0.0.1, the same --log-dir
    (as on a shared file system): one set of logs, checkpoints and model, all the
    chief's; the other worker's temporary checkpoints are gone; both workers make the
    first step of one device, and the logs read back like one device's."""
    log_dir = tmp_path / "run"
    temps = [tmp_path / f"tmp{index}" for index in range(2)]
    firsts = [tmp_path / f"first_step{index}.npz" for index in range(2)]
    for t in temps:
        t.mkdir()
    (chief_pid, chief_out), (_, worker_out) = run_workers(
        worker(0, argv(log_dir) + ["--strategy", "multiworker"]), ENV,
        env=lambda index: {"TMPDIR": str(temps[index]), "FIRST_STEP_NPZ": str(firsts[index])})
    outs = [chief_out, worker_out]
    assert "saved the transform-net" in outs[0] and "worker done" in outs[1]
    files = sorted(os.path.relpath(os.path.join(d, f), log_dir)
                   for d, _, names in os.walk(log_dir) for f in names)
    events = [f for f in files if "tfevents" in f]
    assert len(events) == 1 and events[0].startswith("train"), files
    assert f".{chief_pid}." in events[0]  # written by the chief
    assert "transform_net.keras" in files and "checkpoints/ckpt-12.index" in files
    assert [os.listdir(t) for t in temps] == [[], []]  # the worker's checkpoints deleted
    ref_dir, _, ref_first = reference
    for first in firsts:
        assert_same_first_step(np.load(first), ref_first)
    assert_reads_like(log_dir / "train", ref_dir / "train")
