"""Do lower layers settle first? Train a small convnet with ConvergenceCallback, draw docs/convergence.png.

The network and the task are those of ``make_method_pictures.py`` (which of three
scikit-image objects is pasted on a grass, gravel or brick texture; five conv
layers -> global average pooling -> dense), trained longer, with flips and
90-degree turns as augmentation. ConvergenceCallback logs, every epoch, each
layer's debiased CKA with the previous epoch and with the start on 16 fixed
validation pictures; the picture is drawn from the event files, read back with
TensorBoard's ``EventAccumulator``, with Pillow.

    python scripts/make_convergence_picture.py                 # ~10 minutes on 2 CPU cores
    python scripts/make_convergence_picture.py --epochs 10 --out /tmp/c.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(here, ".."), here]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402

import make_method_pictures as task  # noqa: E402
from tbviz.callbacks.convergence import ConvergenceCallback  # noqa: E402


def augmented(x, y, batch, seed):
    """Random flips and quarter turns of every batch: the net sees new pictures each epoch."""
    def aug(img, label):
        img = tf.image.random_flip_left_right(img)
        return tf.image.rot90(img, tf.random.uniform((), 0, 4, tf.int32)), label

    return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
            .map(aug).batch(batch).prefetch(2))


def read_curves(run_dir, layers):
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    curves = {}
    for layer in layers:
        for kind in ("vs_previous", "vs_start"):
            events = acc.Tensors(f"convergence/{layer}/{kind}")
            curves[layer, kind] = [(e.step, float(tf.make_ndarray(e.tensor_proto)))
                                   for e in events]
    return curves


def settled_steps(run_dir, layers):
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    out = {}
    for layer in layers:
        tag = f"convergence/{layer}/settled"
        if tag in acc.Tags()["tensors"]:
            text = tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto).item().decode()
            out[layer] = int(text.rsplit(" ", 1)[-1])
    return out


# -- drawing (Pillow; matplotlib is not a dependency) -----------------------------------------

COLORS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167), (0, 114, 178),
          (213, 94, 0), (0, 0, 0)]  # Okabe-Ito, readable for color-blind readers


def panel(draw, box, series, title, x_max, y_range, steps_per_epoch, marks):
    left, top, right, bottom = box
    lo, hi = y_range
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left, top - 16), title, fill=(0, 0, 0))

    def xy(step, value):
        return (left + (right - left) * step / x_max,
                bottom - (bottom - top) * (min(max(value, lo), hi) - lo) / (hi - lo))

    for i in range(6):  # y grid and ticks
        v = lo + (hi - lo) * i / 5
        _, y = xy(0, v)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        draw.text((left - 34, y - 6), f"{v:.2f}", fill=(0, 0, 0))
    epochs = x_max / steps_per_epoch
    every = max(1, int(round(epochs / 8)))
    for e in range(0, int(epochs) + 1, every):
        x, _ = xy(e * steps_per_epoch, lo)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x - 6, bottom + 6), str(e), fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 16, bottom + 20), "epoch", fill=(0, 0, 0))
    for color, points in series:
        pts = [xy(s, v) for s, v in points]
        draw.line(pts, fill=color, width=2)
    for color, step, value in marks:
        x, y = xy(step, value)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=color, width=2)


def draw_picture(curves, settled, layers, steps_per_epoch, path, threshold):
    width, height = 980, 420
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    x_max = max(s for pts in curves.values() for s, _ in pts)
    prev = [v for layer in layers for _, v in curves[layer, "vs_previous"]]
    lo_prev = min(0.9, np.floor(min(prev) * 20) / 20)
    starts = [v for layer in layers for _, v in curves[layer, "vs_start"]]
    lo_start = min(0.5, np.floor(min(starts) * 10) / 10)
    marks = []
    for i, layer in enumerate(layers):
        if layer in settled:
            value = dict(curves[layer, "vs_previous"])[settled[layer]]
            marks.append((COLORS[i % len(COLORS)], settled[layer], value))
    panel(draw, (60, 50, 460, 340),
          [(COLORS[i % len(COLORS)], curves[layer, "vs_previous"]) for i, layer in enumerate(layers)],
          f"CKA with the previous epoch (circle: settled, >= {threshold} 3x)", x_max,
          (lo_prev, 1.0), steps_per_epoch, marks)
    panel(draw, (540, 50, 940, 340),
          [(COLORS[i % len(COLORS)], curves[layer, "vs_start"]) for i, layer in enumerate(layers)],
          "CKA with the untrained network", x_max, (lo_start, 1.0), steps_per_epoch, [])
    x = 60
    for i, layer in enumerate(layers):
        draw.line((x, 392, x + 24, 392), fill=COLORS[i % len(COLORS)], width=3)
        label = f"{layer}" + (f" (settled ep. {settled[layer] / steps_per_epoch:.0f})"
                              if layer in settled else " (not settled)")
        draw.text((x + 30, 386), label, fill=(0, 0, 0))
        x += 30 + 7 * len(label) + 20
    img.save(path, optimize=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(here, "..", "docs", "convergence.png"))
    p.add_argument("--logdir", default=None, help="keep the run here (default: a temp dir)")
    p.add_argument("--train", type=int, default=1600)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.99)
    args = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    objs, texs = task.objects(), task.textures()
    x, y = task.dataset(rng, args.train, objs, texs)
    xv, yv = task.dataset(rng, 300, objs, texs)
    model = task.build_model()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    logdir = args.logdir or tempfile.mkdtemp(prefix="convergence_")

    cb = ConvergenceCallback(logdir, probe_images=xv[:16], threshold=args.threshold)
    model.fit(augmented(x, y, args.batch, 0), validation_data=(xv, yv), epochs=args.epochs,
              verbose=2, callbacks=[cb])
    steps = int(np.ceil(args.train / args.batch))
    curves = read_curves(os.path.join(logdir, "train"), cb.layers)
    settled = settled_steps(os.path.join(logdir, "train"), cb.layers)
    print("run:", logdir)
    print("layer, epoch settled, vs_previous at epochs 1/5/10/20/last, vs_start at the end:")
    for layer in cb.layers:
        prev = dict(curves[layer, "vs_previous"])
        at = [prev.get(e * steps, float("nan")) for e in (1, 5, 10, 20)] + [prev[max(prev)]]
        print(f"  {layer:8s} {settled.get(layer, 0) / steps if layer in settled else 'never':>6} "
              + " ".join(f"{v:.4f}" for v in at)
              + f"  {curves[layer, 'vs_start'][-1][1]:.3f}")
    draw_picture(curves, settled, cb.layers, steps, os.path.normpath(args.out), args.threshold)
    print("wrote", os.path.normpath(args.out))


if __name__ == "__main__":
    main()
