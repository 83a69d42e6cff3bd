"""Benchmark: tbviz.deconvnet.scan against the forward pass it cannot avoid, on each backend.

On VGG19 and ResNet50V2 (``weights=None``), 4 layers x 16 feature maps x top 9, each
backend in a child process of its own (Keras picks its backend at import), all against
that backend's own ``model.predict``:

(a) scan images/s against ``model.predict`` images/s over the same images, the
    predicting model cut at the deepest scanned layer. Target: >= 0.8x.
(b) peak RSS after scanning ``--rss`` small, then large image counts, in a fresh
    process (the images are made batch by batch by a ``keras.utils.PyDataset``, so the
    data is never in memory). Target: at most 50 MB apart.
(c) one whole trigger (scan ``--images`` images, then the 4 x 16 x 9 = 576
    projections from the kept crops) against its floor: one forward pass over
    the images (predict, as in (a)) plus one forward + backward pass over the
    576 crops (stock gradients through ``tbviz.backend.vjp``, compiled once). Target: <= 1.5x.

Every compiled function runs once before it is timed (a callback compiles once per
run). Wall and CPU times (all threads) are printed; CPU time is the less noisy
one on a shared machine. Usage::

    python scripts/bench_scan.py --markdown                  # the README figures
    python scripts/bench_scan.py --backends jax torch --models vgg19 --size 64 \\
        --images 200 --rss 100 1000                          # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _tables import add_markdown_flag, print_table  # scripts/, on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = {
    "vgg19": ["block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4"],
    "resnet50v2": ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                   "conv5_block3_out"],
}
BACKENDS = ("tensorflow", "jax", "torch")
BATCH = 32


def images(n: int, size: int):
    """``n`` random images in batches of ``BATCH``, each batch made from its number when
    read (a ``keras.utils.PyDataset``: every backend reads it, ``predict`` as ``scan``)."""
    import keras
    import numpy as np

    class Images(keras.utils.PyDataset):
        @property
        def num_batches(self):
            return -(-n // BATCH)

        def __getitem__(self, i):
            count = min(BATCH, n - i * BATCH)
            rng = np.random.default_rng((7, i))
            return rng.uniform(0, 255, (count, size, size, 3)).astype("float32")

    return Images()


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ``ru_maxrss``, a child
    process does not inherit its parent's peak)."""
    with open("/proc/self/status") as status:
        line = next(ln for ln in status if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def make(name, size):
    import keras

    apps = {"vgg19": keras.applications.VGG19, "resnet50v2": keras.applications.ResNet50V2}
    return apps[name](weights=None, include_top=False, input_shape=(size, size, 3))


def floor_fn(model, layer):
    """Stock forward + backward from the input to ``layer``'s summed output, compiled by
    the backend as tbviz compiles its probes (any batch size, crops smaller than the input)."""
    import keras

    from tbviz import backend

    sub = keras.Model(model.input, model.get_layer(layer).output)
    sub.input_spec = None  # crops are smaller than the model's input

    def fwd_bwd(x):
        y, pullback = backend.vjp(lambda t: sub(t, training=False), x)
        return pullback(keras.ops.ones_like(y))[0]

    return backend.function(fwd_bwd, models=[sub])


def bench(name, size, n, repeat=1, k=9, maps=16):
    """(a) and (c) of one model on this process's backend, as a dict of seconds."""
    import keras
    import numpy as np

    from tbviz import backend
    from tbviz.methods.deconvnet import scan

    layers = LAYERS[name]
    model = make(name, size)
    cut = keras.Model(model.input, model.get_layer(layers[-1]).output)
    channels = {layer: list(range(maps)) for layer in layers}

    def run_scan(count):
        return scan(model, images(count, size), layers, k=k, channels=channels, max_batch=BATCH)

    def run_predict(count):
        return cut.predict(images(count, size), verbose=0)

    # compile everything first: a full batch, then a partial one
    run_scan(BATCH + 1)
    run_predict(BATCH + 1)
    # scan and predict take turns, and each keeps its fastest turn: on a shared machine a
    # neighbour's burst then slows one turn, not the figure
    scans, predicts = [], []
    for _ in range(repeat):
        scans.append(timed(lambda: run_scan(n)))
        predicts.append(timed(lambda: run_predict(n)))
    found, scan_wall, scan_cpu = min(scans, key=lambda t: t[1])
    _, pred_wall, pred_cpu = min(predicts, key=lambda t: t[1])

    # (c) the projections from the kept crops, and the floor's forward+backward over them
    for layer in layers:
        found.project(layer)  # compile once
    _, proj_wall, proj_cpu = timed(lambda: [found.project(layer) for layer in layers])
    crops = {layer: np.concatenate([found.crops[layer][c] for c in found[layer]])
             for layer in layers}
    floors = {layer: floor_fn(model, layer) for layer in layers}

    def run_floors():
        return [backend.numpy(floors[layer](crops[layer][i:i + BATCH])) for layer in layers
                for i in range(0, len(crops[layer]), BATCH)]

    run_floors()  # compile once per batch size, as scan does
    _, fb_wall, fb_cpu = timed(run_floors)
    return {"model": name, "size": size, "images": n, "layers": layers,
            "projections": sum(len(u) for layer in layers for u in found[layer].values()),
            "scan": [scan_wall, scan_cpu], "predict": [pred_wall, pred_cpu],
            "project": [proj_wall, proj_cpu], "floor_backward": [fb_wall, fb_cpu]}


def scan_only(name, size, counts):
    """Print the peak RSS after a scan of each of ``counts`` images, one after the other."""
    from tbviz.methods.deconvnet import scan

    layers = LAYERS[name]
    model = make(name, size)
    for count in counts:
        scan(model, images(count, size), layers, k=9,
             channels={layer: list(range(16)) for layer in layers}, max_batch=BATCH)
        print(f"{peak_rss_mb():.1f}", flush=True)


def child(args):
    """Every model on this process's backend: one JSON line of seconds and MB."""
    import keras

    out = {"backend": keras.backend.backend(), "models": []}
    for name in args.models:
        result = bench(name, args.size, args.images, args.repeat)
        if args.rss:
            # a fresh process: this one's peak already holds predict's outputs, which
            # would hide any growth of the scan
            done = subprocess.run([sys.executable, __file__, "--models", name, "--size",
                                   str(args.size), "--rss-only", *map(str, args.rss)],
                                  capture_output=True, text=True, check=True)
            result["rss"] = list(map(float, done.stdout.split()[-2:]))
        out["models"].append(result)
    print(json.dumps(out))


def backend_rows(result, rss):
    """The table's rows of one backend: ratios are predict time over scan time (a)
    and trigger over floor (c), wall / CPU."""
    for r in result["models"]:
        scan, pred = r["scan"], r["predict"]
        trigger = [s + p for s, p in zip(scan, r["project"])]
        floor = [p + b for p, b in zip(pred, r["floor_backward"])]
        row = [result["backend"], r["model"],
               f"{r['images'] / scan[0]:.1f} / {r['images'] / pred[0]:.1f}",
               f"{pred[0] / scan[0]:.2f} / {pred[1] / scan[1]:.2f}",
               f"{trigger[0]:.2f} / {floor[0]:.2f}",
               f"{trigger[0] / floor[0]:.2f} / {trigger[1] / floor[1]:.2f}"]
        if rss:
            small, large = r["rss"]
            row.append(f"{small:.0f} / {large:.0f} ({large - small:+.0f})")
        yield row


def parent(args):
    results = []
    for name in args.backends:
        env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"]
                              + sys.argv[1:], env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = ["backend", "model", "(a) images/s, scan / predict",
              "(a) scan / predict throughput, wall / CPU", "(c) trigger / floor s, wall",
              "(c) trigger / floor, wall / CPU"]
    if args.rss:
        header.append(f"(b) peak RSS MB, {args.rss[0]} / {args.rss[1]} images")
    rows = [row for r in results for row in backend_rows(r, args.rss)]
    print(f"{args.size} px, 4 layers x 16 maps x top 9, {args.images} images in batches of "
          f"{BATCH}, fastest of {args.repeat}; (c): scan + {16 * 9 * 4} projections against "
          "predict + forward/backward of the crops. Targets: (a) >= 0.8, (b) <= 50 MB apart, "
          "(c) <= 1.5.")
    print_table(header, rows, args.markdown)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--models", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2000, help="images of (a) and (c)")
    parser.add_argument("--rss", type=int, nargs=2, default=(1000, 20000),
                        metavar=("SMALL", "LARGE"), help="image counts of (b)")
    parser.add_argument("--no-rss", dest="rss", action="store_const", const=None,
                        help="leave (b) out")
    parser.add_argument("--repeat", type=int, default=1,
                        help="turns of scan and predict in (a), fastest kept (default 1)")
    add_markdown_flag(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rss-only", type=int, nargs="+", help=argparse.SUPPRESS)  # (b)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(HERE, ".."))
    if args.rss_only:
        return scan_only(args.models[0], args.size, args.rss_only)
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
