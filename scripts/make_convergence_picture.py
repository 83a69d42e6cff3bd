"""Do lower layers settle first? Train a small convnet with ConvergenceCallback; draw the curves.

Task (``--task photos``, default): which of 12 scikit-image photographs (bundled,
no download) a small gray crop comes from: a random square of 12-40% of the
photo's side, shrunk to 32x32, flipped, its brightness and contrast jittered, a
new one every time (``tf.image.crop_and_resize`` in ``tf.data``), so there is no
training set to memorize. Five 3x3 conv layers -> global average pooling ->
dense, SGD with momentum. ``--task objects``: the easy task of
``make_method_pictures.py`` (three objects pasted on textures), for comparison.

ConvergenceCallback logs, every epoch, each layer's debiased CKA with the
previous epoch and with the start, on 16 fixed probe pictures; the picture is
drawn from the event files, read back with TensorBoard's ``EventAccumulator``,
with Pillow.

    python scripts/make_convergence_picture.py                 # ~5 minutes on 2 CPU cores
    python scripts/make_convergence_picture.py --epochs 10 --out /tmp/c.png
    python scripts/make_convergence_picture.py --redraw RUN_DIR   # picture only
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
from skimage import color, data, transform  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402

import make_method_pictures as objects_task  # noqa: E402
from tbviz.callbacks.convergence import ConvergenceCallback  # noqa: E402
from tbviz.summary import metadata  # noqa: E402

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "moon", "rocket")
SIZE = 32


def photos(side=256):
    """The photographs in gray, ``(12, side, side, 1)`` in [0, 1]."""
    out = []
    for name in PHOTOS:
        im = getattr(data, name)()
        im = color.rgb2gray(im) if im.ndim == 3 else im / 255.0
        out.append(transform.resize(im, (side, side), anti_aliasing=True))
    return np.stack(out)[..., None].astype(np.float32)


def crops(stack, n, seed):
    """``n`` random crops per call: photo index, square of 12-40% of the side, flip, jitter."""
    rng = tf.random.Generator.from_seed(seed)

    def draw(_):
        label = rng.uniform((n,), 0, len(PHOTOS), tf.int32)
        side = rng.uniform((n, 1), 0.12, 0.4)
        corner = rng.uniform((n, 2)) * (1 - side)
        boxes = tf.concat([corner, corner + side], axis=1)
        x = tf.image.crop_and_resize(stack, boxes, label, (SIZE, SIZE))
        x = tf.where(rng.uniform((n, 1, 1, 1)) < 0.5, x[:, :, ::-1], x)
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * rng.uniform((n, 1, 1, 1), 0.6, 1.4) + mean + rng.uniform(
            (n, 1, 1, 1), -0.2, 0.2)
        return x * 255.0, label

    return draw


def photo_task(args):
    stack = tf.constant(photos())
    seed = 10 * args.seed
    train = (tf.data.Dataset.range(args.steps).map(crops(stack, args.batch, seed + 1))
             .prefetch(2).repeat())
    probes, _ = crops(stack, 16, 2)(0)  # the same probes whatever the seed
    val = crops(stack, 600, 3)(0)
    # The method pictures' network: five 3x3 conv layers -> global average pooling -> dense.
    model = objects_task.build_model(len(PHOTOS), channels=1, softmax=False)
    model.compile(keras.optimizers.SGD(0.02, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model, train, val, probes.numpy()


def objects_task_data(args):
    rng = np.random.default_rng(0)
    objs, texs = objects_task.objects(), objects_task.textures()
    x, y = objects_task.dataset(rng, args.steps * args.batch, objs, texs)
    xv, yv = objects_task.dataset(rng, 300, objs, texs)

    def aug(img, label):
        img = tf.image.random_flip_left_right(img)
        return tf.image.rot90(img, tf.random.uniform((), 0, 4, tf.int32)), label

    train = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).map(aug)
             .batch(args.batch).prefetch(2).repeat())
    model = objects_task.build_model()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, train, (xv, yv), xv[:16]


# -- reading the run back ---------------------------------------------------------------------

def read_run(run_dir):
    """``(layers, {(layer, kind): [(step, value)]}, {layer: settled step})`` from the events."""
    acc = ea.EventAccumulator(run_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    layers = [t[len("convergence/"):-len("/vs_start")] for t in tags
              if t.startswith("convergence/") and t.endswith("/vs_start")]
    curves = {(layer, kind): [(e.step, float(tf.make_ndarray(e.tensor_proto)))
                              for e in acc.Tensors(f"convergence/{layer}/{kind}")]
              for layer in layers for kind in ("vs_previous", "vs_start")}
    settled = {}
    for layer in layers:
        tag = f"convergence/{layer}/settled"
        if tag in tags:  # the first settling: "layer X settled at step S"
            text = tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto).item()
            settled[layer] = metadata.parse_settled(text)[1]
    return layers, curves, settled


# -- drawing (Pillow; matplotlib is not a dependency) -----------------------------------------

COLORS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167), (0, 114, 178),
          (213, 94, 0), (0, 0, 0)]  # Okabe-Ito, readable for color-blind readers
INK = (0, 0, 0)


def panel(draw, box, series, title, x_max, y_ticks, to_y, steps_per_epoch, marks=(),
          line=None):
    """Axes in ``box``, lines ``[(color, [(step, value)])]``; ``to_y`` maps a value to
    [0, 1] of the height (log scales are the caller's business)."""
    left, top, right, bottom = box
    draw.rectangle(box, outline=INK)
    draw.text((left, top - 16), title, fill=INK)

    def xy(step, value):
        return (left + (right - left) * step / x_max,
                bottom - (bottom - top) * min(max(to_y(value), 0.0), 1.0))

    for value, label in y_ticks:
        _, y = xy(0, value)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        draw.text((left - 6 * len(label) - 6, y - 6), label, fill=INK)
    if line is not None:
        _, y = xy(0, line)
        for x0 in range(left, right, 8):
            draw.line((x0, y, min(x0 + 4, right), y), fill=(120, 120, 120))
    epochs = x_max / steps_per_epoch
    every = max(1, int(round(epochs / 8)))
    for e in range(0, int(epochs) + 1, every):
        x, _ = xy(e * steps_per_epoch, 0)
        draw.line((x, bottom, x, bottom + 4), fill=INK)
        draw.text((x - 6, bottom + 6), str(e), fill=INK)
    draw.text(((left + right) // 2 - 16, bottom + 20), "epoch", fill=INK)
    for color, points in series:
        draw.line([xy(s, v) for s, v in points], fill=color, width=2)
    for color, step, value in marks:
        x, y = xy(step, value)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=color, width=2)


def draw_picture(layers, curves, settled, steps_per_epoch, path, threshold, title):
    width, height = 1000, 470
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((20, 8), title, fill=INK)
    x_max = max(s for pts in curves.values() for s, _ in pts)
    color = {layer: COLORS[i % len(COLORS)] for i, layer in enumerate(layers)}
    # Left: 1 - CKA on a log scale, 1e-5 .. 1: the approach to 1 is what matters.
    change = lambda v: 1.0 - v  # noqa: E731
    to_log = lambda v: (np.log10(max(change(v), 1e-5)) + 5) / 5  # noqa: E731
    marks = [(color[layer], settled[layer], dict(curves[layer, "vs_previous"])[settled[layer]])
             for layer in layers if layer in settled]
    panel(draw, (70, 60, 470, 360),
          [(color[layer], curves[layer, "vs_previous"]) for layer in layers],
          "change since the previous epoch, 1 - CKA (log; circle: settled)", x_max,
          [(1 - 10.0 ** -k, f"1e-{k}") for k in range(6)], to_log, steps_per_epoch, marks,
          line=threshold)
    lo = min(0.0, min(v for layer in layers for _, v in curves[layer, "vs_start"]))
    panel(draw, (570, 60, 970, 360),
          [(color[layer], curves[layer, "vs_start"]) for layer in layers],
          "CKA with the untrained network", x_max,
          [(lo + (1 - lo) * i / 5, f"{lo + (1 - lo) * i / 5:.1f}") for i in range(6)],
          lambda v: (v - lo) / (1 - lo), steps_per_epoch)
    for i, layer in enumerate(layers):
        x, y = 70 + (i % 4) * 230, 405 + (i // 4) * 20
        draw.line((x, y + 6, x + 24, y + 6), fill=color[layer], width=3)
        when = (f"settled at epoch {settled[layer] / steps_per_epoch:.0f}" if layer in settled
                else "never settled")
        draw.text((x + 30, y), f"{layer}: {when}", fill=INK)
    img.save(path, optimize=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(here, "..", "docs", "convergence.png"))
    p.add_argument("--task", choices=("photos", "objects"), default="photos")
    p.add_argument("--logdir", default=None, help="keep the run here (default: a temp dir)")
    p.add_argument("--redraw", default=None, help="only draw the picture of this run dir")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--steps", type=int, default=50, help="steps per epoch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0, help="weights and training crops")
    args = p.parse_args(argv)
    out = os.path.normpath(args.out)
    if args.redraw:
        layers, curves, settled = read_run(os.path.join(args.redraw, "train"))
        draw_picture(layers, curves, settled, args.steps, out, args.threshold,
                     f"run {args.redraw}")
        print("wrote", out)
        return

    keras.utils.set_random_seed(args.seed)
    model, train, val, probes = (photo_task if args.task == "photos" else objects_task_data)(args)
    logdir = args.logdir or tempfile.mkdtemp(prefix="convergence_")
    cb = ConvergenceCallback(logdir, probe_images=probes, threshold=args.threshold)
    model.fit(train, steps_per_epoch=args.steps, validation_data=val, epochs=args.epochs,
              verbose=2, callbacks=[cb])
    layers, curves, settled = read_run(os.path.join(logdir, "train"))
    print("run:", logdir)
    print("layer: epoch settled (first time); vs_previous at epochs 1/2/5/10/20/last; "
          "vs_start at the end")
    for layer in layers:
        prev = dict(curves[layer, "vs_previous"])
        at = [prev.get(e * args.steps, float("nan")) for e in (1, 2, 5, 10, 20)] + [
            prev[max(prev)]]
        when = f"{settled[layer] / args.steps:.0f}" if layer in settled else "never"
        print(f"  {layer:8s} {when:>5}  " + " ".join(f"{v:.4f}" for v in at)
              + f"  {curves[layer, 'vs_start'][-1][1]:.3f}")
    acc = model.evaluate(*val, verbose=0)[1] if isinstance(val, tuple) else float("nan")
    title = (f"ConvergenceCallback, task '{args.task}', {args.epochs} epochs x {args.steps} "
             f"steps, validation accuracy {acc:.2f}; debiased CKA on 16 probe images, "
             f"settled = vs previous >= {args.threshold} 3 epochs in a row")
    draw_picture(layers, curves, settled, args.steps, out, args.threshold, title)
    print("wrote", out)


if __name__ == "__main__":
    main()
