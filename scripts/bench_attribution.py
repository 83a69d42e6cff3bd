"""Batched occlusion and SmoothGrad against the loops peers use, side by side in one run.

Occlusion: tbviz batches every (image, patch) pair through one traced probe, chunked by
``max_batch``. Compared with an eager loop calling the model once per patch of each
image, and with a loop over images sending one image's patches as one batch
(tf-explain's way).

SmoothGrad: tbviz sends all ``N * samples`` noisy copies through one traced gradient
probe in chunks of ``max_batch``. Compared with an eager ``GradientTape`` per noisy
sample of each image, and with one tape per image over all its samples.

Each variant runs once to warm up (tracing), then the best of ``--repeats`` timed runs
is kept. All variants must give the same numbers (same noise, same patches); the
script checks that and prints speed ratios relative to tbviz.

    python scripts/bench_attribution.py              # defaults: 8 images of 32x32
    python scripts/bench_attribution.py --images 16 --size 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tbviz import attribution  # noqa: E402


def small_cnn(size: int, classes: int = 10):
    return keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes),
    ], name="bench_cnn")


def starts(size, patch, stride):
    s = list(range(0, size - patch + 1, stride))
    return s if s[-1] == size - patch else s + [size - patch]


def spread(drops, positions, patch, shape):
    total, count = np.zeros(shape), np.zeros(shape)
    for d, (y0, x0) in zip(drops, positions):
        total[y0:y0 + patch, x0:x0 + patch] += d
        count[y0:y0 + patch, x0:x0 + patch] += 1
    return total / count


def occlusion_per_patch(model, x, target, patch, stride):
    h, w = x.shape[1:3]
    positions = [(y0, x0) for y0 in starts(h, patch, stride) for x0 in starts(w, patch, stride)]
    out = []
    for img, t in zip(x, target):
        base = float(model(img[None], training=False)[0, t])
        drops = []
        for y0, x0 in positions:
            occ = img.copy()
            occ[y0:y0 + patch, x0:x0 + patch] = 0
            drops.append(base - float(model(occ[None], training=False)[0, t]))
        out.append(spread(drops, positions, patch, (h, w)))
    return np.stack(out)


def occlusion_per_image(model, x, target, patch, stride):
    h, w = x.shape[1:3]
    positions = [(y0, x0) for y0 in starts(h, patch, stride) for x0 in starts(w, patch, stride)]
    out = []
    for img, t in zip(x, target):
        batch = np.repeat(img[None], len(positions) + 1, axis=0)
        for i, (y0, x0) in enumerate(positions, start=1):
            batch[i, y0:y0 + patch, x0:x0 + patch] = 0
        scores = model(batch, training=False).numpy()[:, t]
        out.append(spread(scores[0] - scores[1:], positions, patch, (h, w)))
    return np.stack(out)


def noise_for(x, samples, noise, seed):
    """The noisy copies tbviz.smoothgrad draws (same generator, same order)."""
    sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    eps = np.random.default_rng(seed).standard_normal((len(x) * samples,) + x.shape[1:],
                                                      dtype=np.float32)
    owner = np.repeat(np.arange(len(x)), samples)
    noisy = x[owner] + eps * sigma[owner, None, None, None]
    return noisy.reshape((len(x), samples) + x.shape[1:])


def smoothgrad_per_sample(model, noisy, target):
    out = []
    for copies, t in zip(noisy, target):
        total = 0
        for c in copies:
            xt = tf.constant(c[None])
            with tf.GradientTape() as tape:
                tape.watch(xt)
                score = model(xt, training=False)[0, t]
            total = total + tape.gradient(score, xt)[0].numpy()
        out.append(total / len(copies))
    return np.stack(out)


def smoothgrad_per_image(model, noisy, target):
    out = []
    for copies, t in zip(noisy, target):
        xt = tf.constant(copies)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            score = tf.reduce_sum(model(xt, training=False)[:, t])
        out.append(tape.gradient(score, xt).numpy().mean(axis=0))
    return np.stack(out)


def best_time(fn, repeats):
    result = fn()  # warm-up: traces tf.functions, builds eager kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--samples", type=int, default=25)
    p.add_argument("--noise", type=float, default=0.15)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    model = small_cnn(args.size)
    shape = (args.images, args.size, args.size, 3)
    x = np.random.default_rng(1).uniform(0, 1, shape).astype("float32")
    target = np.arange(args.images) % 10
    positions = len(starts(args.size, args.patch, args.stride)) ** 2
    print(f"model {model.name}: {model.count_params()} parameters; {args.images} images of "
          f"{args.size}x{args.size}; {os.cpu_count()} CPU threads; TF {tf.__version__}")

    print(f"\nocclusion: patch {args.patch}, stride {args.stride}: {positions} patches per image")
    t_batched, ref = best_time(lambda: attribution.occlusion(
        model, x, target, patch=args.patch, stride=args.stride, max_batch=args.max_batch),
        args.repeats)
    rows = [("tbviz batched (max_batch=%d)" % args.max_batch, t_batched, ref)]
    for name, fn in (("per-image loop, patches batched", occlusion_per_image),
                     ("per-image, per-patch eager loop", occlusion_per_patch)):
        t, out = best_time(lambda fn=fn: fn(model, x, target, args.patch, args.stride),
                           args.repeats)
        rows.append((name, t, out))
    report(rows)

    print(f"\nSmoothGrad: {args.samples} samples per image, noise {args.noise}")
    t_batched, ref = best_time(lambda: attribution.smoothgrad(
        model, x, target, samples=args.samples, noise=args.noise, max_batch=args.max_batch,
        seed=0), args.repeats)
    noisy = noise_for(x, args.samples, args.noise, seed=0)
    rows = [("tbviz batched (max_batch=%d)" % args.max_batch, t_batched, ref)]
    for name, fn in (("per-image tape over its samples", smoothgrad_per_image),
                     ("per-image, per-sample eager tape", smoothgrad_per_sample)):
        t, out = best_time(lambda fn=fn: fn(model, noisy, target), args.repeats)
        rows.append((name, t, out))
    report(rows)


def report(rows):
    name0, t0, ref = rows[0]
    scale = np.abs(ref).max()
    print(f"  {'variant':36s} {'seconds':>9s} {'tbviz speed-up':>15s} {'max |diff| / max':>17s}")
    for name, t, out in rows:
        diff = np.abs(out - ref).max() / scale
        print(f"  {name:36s} {t:9.3f} {t / t0:14.1f}x {diff:17.2e}")
        if diff > 1e-4:
            raise SystemExit(f"'{name}' disagrees with tbviz: relative difference {diff:.2e}")
    print("  all variants agree (relative difference <= 1e-4)")


if __name__ == "__main__":
    main()
