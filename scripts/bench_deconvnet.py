"""Benchmark: tbviz's deconvnet projections against the naive way and the physical floor.

On VGG19 (``weights=None``, 224x224), 5 layers x 9 strongest units (45 projections):

(a) tbviz (batched, traced once, receptive-field crops) vs the way peers do it:
    the model rebuilt with a ``tf.custom_gradient`` ReLU (backward ``relu(dy)``),
    one sub-model per layer and one eager ``GradientTape`` per unit. The script
    checks that both give the same projections before timing. Target: >= 5x.
(b) tbviz vs one plain forward + backward pass over the same 45 rows (stock
    ReLU gradient, whole images, one traced function, forward to the deepest
    layer): the floor of any batched whole-image projection. Target: <= 1.5x.

The units are the top 9 of each layer over 4 probe images (as the callback
picks them), so several units of a layer often come from one image and share
its forward pass. ``--distinct`` takes 9 probe images and the strongest unit of
each instead: no two units of a layer share an image, the worst case for tbviz.

All timings are taken side by side in one process, interleaved, repeated.
Ratios are computed within each repeat and their median reported, for wall
time and for the process's CPU time (all threads): on a machine shared with
other jobs, CPU time measures the work done and is far less noisy. Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_deconvnet.py [--repeats 3] [--distinct] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tbviz import deconvnet  # noqa: E402
from tbviz.core.layers import capture_outputs  # noqa: E402
from _tables import add_markdown_flag, print_table  # noqa: E402  (scripts/, on sys.path)

LAYERS = ["block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"]


def probe_images(n: int, size: int = 224) -> np.ndarray:
    """Smooth random colour fields with edges: enough structure for distinct strong units."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (n, size // 16, size // 16, 3)).astype("float32")
    img = tf.image.resize(low, (size, size), method="bicubic").numpy()
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype("float32")


# -- the naive way ---------------------------------------------------------------------------

@tf.custom_gradient
def deconvnet_relu(x):
    def grad(dy):
        return tf.nn.relu(dy)
    return tf.nn.relu(x), grad


def rebuild_with_deconvnet_relu(model):
    """Clone ``model`` with every ReLU activation replaced by the custom-gradient one."""
    def clone(layer):
        new = layer.__class__.from_config(layer.get_config())
        if getattr(layer, "activation", None) is keras.activations.relu:
            new.activation = deconvnet_relu
        return new

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def naive_projections(submodels, images, units):
    """One eager GradientTape per unit, starting from the unit's own activation."""
    out = {}
    for layer, chosen in units.items():
        sub = submodels[layer]
        projections = []
        for u in chosen:
            x = tf.constant(images[u.image_index:u.image_index + 1])
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = sub(x, training=False)
            mask = np.zeros(y.shape, np.float32)
            mask[0, u.row, u.col, u.channel] = 1.0
            projections.append(tape.gradient(y, x, output_gradients=y * mask)[0].numpy())
        out[layer] = np.stack(projections)
    return out


# -- the floor -------------------------------------------------------------------------------

def make_floor(model, layers, image_shape):
    """One traced forward + backward over a batch of whole images, stock ReLU gradient."""
    @tf.function(input_signature=[tf.TensorSpec((None,) + image_shape, tf.float32),
                                  tf.TensorSpec((None, 4), tf.int32)])
    def floor(x, pos):
        with tf.GradientTape() as tape:
            tape.watch(x)
            with capture_outputs(model, layers) as seen:
                model(x, training=False)
            target = 0.0
            for i, layer in enumerate(layers):
                out = seen[layer]
                sh = tf.shape(out)
                mask = tf.einsum("bi,bj,bk->bijk", tf.one_hot(pos[:, 1], sh[1]),
                                 tf.one_hot(pos[:, 2], sh[2]), tf.one_hot(pos[:, 3], sh[3]))
                mask *= tf.cast(pos[:, 0] == i, tf.float32)[:, None, None, None]
                target += tf.reduce_sum(out * tf.stop_gradient(out * mask))
        return tape.gradient(target, x)
    return floor


def timed(fn):
    """(wall seconds, CPU seconds of this process over all its threads) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=4, help="probe images the units come from")
    ap.add_argument("--distinct", action="store_true",
                    help="k probe images, one unit from each per layer (no shared forward pass)")
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--max-batch", type=int, default=deconvnet.DEFAULT_MAX_BATCH)
    add_markdown_flag(ap)
    args = ap.parse_args(argv)

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG19(weights=None, include_top=False, input_shape=(224, 224, 3))
    images = probe_images(args.k if args.distinct else args.images)
    proj = deconvnet.Projector(model, LAYERS, "deconvnet")
    t0 = time.perf_counter()
    proj.prepare(images.shape[1:])
    prepare_s = time.perf_counter() - t0
    acts = proj.activations(images)
    if args.distinct:
        units = {layer: [deconvnet.top_units(acts[layer][i:i + 1], k=1)[0]._replace(image_index=i)
                         for i in range(len(images))] for layer in LAYERS}
    else:
        units = {layer: deconvnet.top_units(acts[layer], k=args.k) for layer in LAYERS}
    n_units = sum(len(u) for u in units.values())
    print(f"VGG19 (weights=None), {images.shape[0]} probe images {images.shape[1:]}, "
          f"{len(LAYERS)} layers x {args.k} strongest units = {n_units} projections, "
          f"max_batch={args.max_batch}, TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores")
    print(f"units from {len({u.image_index for us in units.values() for u in us})} images"
          + (" (one per image per layer)" if args.distinct else "")
          + f"; tracing everything up front (Projector.prepare) took {prepare_s:.1f} s")
    for layer in LAYERS:
        f = proj.field(layer, images.shape[1:])
        table = proj.unit_table(layer, images.shape[1:], units[layer], len(images))
        boxes, _ = deconvnet.crops(table, f, images.shape[1:])
        sizes = sorted({(h, w) for _, h, _, w in boxes})
        print(f"  {layer:14s} field {f[0].size:3d}px stride {f[0].jump:2d} -> units projected "
              f"from crops of {', '.join(f'{h}x{w}' for h, w in sizes)}")

    # Inputs of the naive way and of the floor.
    rebuilt = rebuild_with_deconvnet_relu(model)
    submodels = {layer: keras.Model(rebuilt.input, rebuilt.get_layer(layer).output)
                 for layer in LAYERS}
    floor = make_floor(model, LAYERS, images.shape[1:])
    rows = np.stack([images[u.image_index] for layer in LAYERS for u in units[layer]])
    pos = np.array([(i, u.row, u.col, u.channel) for i, layer in enumerate(LAYERS)
                    for u in units[layer]], np.int32)

    run = {
        "tbviz": lambda: proj.project(images, units, max_batch=args.max_batch),
        "tbviz, whole images": lambda: proj.project(images, units, max_batch=args.max_batch,
                                                    crop=False),
        "naive (eager tape per unit)": lambda: naive_projections(submodels, images, units),
        "floor (one fwd+bwd, 45 rows)": lambda: floor(rows, pos).numpy(),
    }

    # Same answers first (this also traces everything once).
    ours = run["tbviz"]()
    whole = run["tbviz, whole images"]()
    naive = run["naive (eager tape per unit)"]()
    run["floor (one fwd+bwd, 45 rows)"]()
    worst = 0.0
    for layer in LAYERS:
        for a, b, c in zip(ours[layer], whole[layer], naive[layer]):
            scale = max(np.abs(c).max(), 1e-30)
            worst = max(worst, np.abs(a - c).max() / scale, np.abs(b - c).max() / scale)
    print(f"largest difference tbviz vs naive, relative to each projection's peak: {worst:.2e}")
    if worst > 1e-3:
        raise SystemExit("projections differ: the comparison would be meaningless")

    traces = proj.trace_count
    times = {name: [] for name in run}
    for _ in range(args.repeats):
        for name, fn in run.items():
            times[name].append(timed(fn))
    assert proj.trace_count == traces, "tbviz retraced during timing"
    for name, t in times.items():
        print(f"  {name:30s} wall median {statistics.median(w for w, _ in t):6.2f} s "
              f"({', '.join(f'{w:.2f}' for w, _ in t)});  CPU median "
              f"{statistics.median(c for _, c in t):6.2f} s")

    def ratio(a, b, which):
        return statistics.median(x[which] / y[which] for x, y in zip(times[a], times[b]))

    naive, ours = "naive (eager tape per unit)", "tbviz"
    floor, whole = "floor (one fwd+bwd, 45 rows)", "tbviz, whole images"
    n = sum(len(u) for u in units.values())
    rows = [
        [f"speed-up over one eager GradientTape per unit ({n} units)",
         f"{ratio(naive, ours, 0):.1f}x", f"{ratio(naive, ours, 1):.1f}x", ">= 5x"],
        [f"tbviz / one plain forward+backward over the same {n} rows (the floor)",
         f"{ratio(ours, floor, 0):.2f}x", f"{ratio(ours, floor, 1):.2f}x", "<= 1.5x"],
        ["tbviz from whole images (no receptive-field crops) / the floor",
         f"{ratio(whole, floor, 0):.2f}x", f"{ratio(whole, floor, 1):.2f}x", ""],
    ] + [[f"{name}: seconds per call (median)",
          f"{statistics.median(w for w, _ in t):.2f}", f"{statistics.median(c for _, c in t):.2f}",
          ""] for name, t in times.items()]
    print(f"traces of tbviz's functions during the whole run: {proj.trace_count} "
          "(none while timing)\n")
    print_table([f"VGG19 224x224, {len(LAYERS)} layers x {args.k} units", "wall", "CPU",
                 "target"], rows, args.markdown)


if __name__ == "__main__":
    main()
