"""Benchmark: tbviz on TensorFlow, JAX and PyTorch, side by side in one run.

For each backend a child process (Keras picks its backend at import) measures, taking
turns within itself so that machine noise hits all alike:

(a) the deconvnet projection of ``bench_deconvnet.py``: VGG19 (``weights=None``, ``--size``
    pixels), 5 layers x the 9 strongest units over 4 probe images, one projection round
    after a warm-up one (tracing and compiling happen there). Reported as seconds and as a
    multiple of TensorFlow's. Target: at most 1.5x TensorFlow's on each backend.
(b) the dataset scan (``tbviz.deconvnet.scan``, 4 layers x 16 maps x top 9) against
    ``model.predict`` on the same images with the same batch size, on that backend:
    images per second, scan over predict. Target: at least 0.8.
(c) the callbacks' overhead: ``bench_callbacks.py``'s small CNN, 200 steps of 32 per
    epoch, plain ``fit`` against ``fit`` with ``tbviz.TensorBoardViz`` at its defaults
    (8 probe images), median epoch time without each fit's first epoch. Target: at most
    1.05. Beside it, the time spent inside tbviz's hooks in those epochs (``HookTimer`` of
    ``bench_callbacks.py``) over the plain epoch: the same cost measured directly, in the
    run it slows. Where epochs of one backend vary by more than the overhead (JAX's do on
    a 2-core CPU, by up to a third from one fit to the next), this is the figure to quote.

All figures are the median of ``--repeats`` turns; wall time and the process's CPU time
(all threads: on a shared machine the work done, far less noisy). Usage::

    python scripts/bench_backends.py [--size 224] [--repeats 3] [--markdown]
    python scripts/bench_backends.py --backends jax torch --size 128
    python scripts/bench_backends.py --parts c      # only the callbacks' overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _tables import add_markdown_flag, print_table  # scripts/, on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = ["block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"]
SCAN_LAYERS = ["block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4"]


def clocked(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def images(n, size, seed=0):
    """Smooth random colour fields with edges: structure enough for distinct strong units."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, max(size // 16, 2), max(size // 16, 2), 3)).astype("uint8")
    out = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC), "float32")
                    for a in low])
    return np.clip(out + rng.normal(0, 20, out.shape), 0, 255).astype("float32")


def child(args):
    """Measure (a), (b), (c) on this process's backend; print one JSON line."""
    sys.path[:0] = [os.path.join(HERE, ".."), HERE]
    import keras

    out = {"backend": keras.backend.backend()}
    for part, measure in (("a", projections), ("b", scan_and_predict), ("c", overhead)):
        if part in args.parts:
            measure(args, out)
    print(json.dumps(out))


def projections(args, out):
    """(a): ``out["project"]``, one (wall, CPU) pair per repeat."""
    import keras

    from tbviz import deconvnet

    vgg = keras.applications.VGG19(weights=None, include_top=False,
                                   input_shape=(args.size, args.size, 3))
    probes = images(4, args.size)
    proj = deconvnet.projector(vgg, LAYERS)
    proj.prepare(probes.shape[1:])
    acts = proj.activations(probes)
    units = {layer: deconvnet.top_units(acts[layer], k=9) for layer in LAYERS}
    proj.project(probes, units)  # warm-up: JAX compiles per shape here
    out["project"] = [clocked(lambda: proj.project(probes, units)) for _ in range(args.repeats)]


def scan_and_predict(args, out):
    """(b): ``out["scan"]`` and ``out["predict"]`` on the same images, taking turns."""
    import keras

    from tbviz import deconvnet

    small = keras.applications.VGG19(weights=None, include_top=False,
                                     input_shape=(args.scan_size, args.scan_size, 3))
    data = images(args.scan_images, args.scan_size, seed=1)
    kwargs = dict(k=9, channels={layer: list(range(16)) for layer in SCAN_LAYERS}, max_batch=64)
    deconvnet.scan(small, data[:128], SCAN_LAYERS, **kwargs)  # warm-up
    small.predict(data[:128], batch_size=64, verbose=0)
    scans, predicts = [], []
    for _ in range(args.repeats):
        scans.append(clocked(lambda: deconvnet.scan(small, data, SCAN_LAYERS, **kwargs)))
        predicts.append(clocked(lambda: small.predict(data, batch_size=64, verbose=0)))
    out["scan"], out["predict"], out["scan_images"] = scans, predicts, len(data)


def overhead(args, out):
    """(c): ``out["epochs"]`` per kind of fit, and ``out["inside"]``, the time in tbviz's
    hooks in each timed epoch."""
    import keras
    import numpy as np
    from bench_callbacks import EpochClock, HookTimer, small_cnn

    import tbviz

    rng = np.random.default_rng(0)
    n = args.steps * 32
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, n)
    times, inside = {"plain": [], "tbviz": []}, []
    root = tempfile.mkdtemp(prefix="bench_backends_")
    for _ in range(args.repeats):
        for kind in times:
            keras.utils.set_random_seed(0)
            model = small_cnn()
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            cbs = [] if kind == "plain" else [HookTimer(tbviz.TensorBoardViz(
                os.path.join(root, f"run{len(times[kind])}"), probe_images=x[:8],
                probe_labels=y[:8]))]
            clocks = [EpochClock(times[kind], True)] + cbs + [EpochClock(times[kind], False)]
            model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, shuffle=False,
                      callbacks=clocks)
            del times[kind][-args.epochs]  # each fit's first epoch: tracing, setup
            if cbs:
                inside.extend(cbs[0].spent[1:])
    out["epochs"], out["inside"] = times, inside


def median(pairs, i):
    return statistics.median(p[i] for p in pairs)


def parent(args):
    results = {}
    for backend in args.backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, os.path.abspath(__file__), "--child"] + sys.argv[1:]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    header = ["backend"]
    header += (["(a) projection s, wall / CPU", "(a) x TensorFlow, wall / CPU"]
               if "a" in args.parts else [])
    header += ["(b) scan / predict, wall / CPU"] if "b" in args.parts else []
    header += (["(c) plain epoch s, wall / CPU", "(c) epoch with tbviz / plain, wall / CPU",
                "(c) inside tbviz / plain epoch, wall / CPU"] if "c" in args.parts else [])
    rows = []
    tf = results.get("tensorflow")
    for backend, r in results.items():
        row = [backend]
        if "a" in args.parts:
            proj = [median(r["project"], i) for i in (0, 1)]
            rel = ([proj[i] / median(tf["project"], i) for i in (0, 1)] if tf else None)
            row += [f"{proj[0]:.2f} / {proj[1]:.2f}",
                    f"{rel[0]:.2f} / {rel[1]:.2f}" if rel else "-"]
        if "b" in args.parts:
            # throughput ratio = predict time / scan time on the same images
            scan = [median(r["predict"], i) / median(r["scan"], i) for i in (0, 1)]
            row.append(f"{scan[0]:.2f} / {scan[1]:.2f}")
        if "c" in args.parts:
            plain = [median(r["epochs"]["plain"], i) for i in (0, 1)]
            over = [median(r["epochs"]["tbviz"], i) / plain[i] for i in (0, 1)]
            inside = [median(r["inside"], i) / plain[i] for i in (0, 1)]
            row += [f"{plain[0]:.2f} / {plain[1]:.2f}", f"{over[0]:.3f} / {over[1]:.3f}",
                    f"{1 + inside[0]:.3f} / {1 + inside[1]:.3f}"]
        rows.append(row)
    print(f"VGG19 {args.size} px, 5 layers x 9 units; scan of {args.scan_images} images at "
          f"{args.scan_size} px; small CNN {args.steps} steps; median of {args.repeats}. "
          "Targets: (a) <= 1.5x TensorFlow, (b) >= 0.8, (c) <= 1.05.")
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    p.add_argument("--size", type=int, default=224, help="VGG19 input size for (a)")
    p.add_argument("--scan-size", type=int, default=64, help="image size for (b)")
    p.add_argument("--scan-images", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200, help="steps per epoch for (c)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="abc", help="which of (a), (b), (c) to measure")
    add_markdown_flag(p)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    child(a) if a.child else parent(a)
