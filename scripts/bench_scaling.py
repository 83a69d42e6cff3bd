#!/usr/bin/env python
"""Training throughput of the style pipeline on 1 and N replicas, side by side in one run.

What ``style-transfer train --strategy mirrored`` gains from more devices: the
same ``StyleTransferModel`` (transform-net + VGG19 with random weights, the
default loss layers) trained with ``tf.distribute.MirroredStrategy`` over 1 and
over N devices, and the ratio. Two ways to scale are shown:

* strong scaling: the same global batch split over more replicas (what
  ``--batch-size`` means: it is the global batch);
* weak scaling: the global batch grown with the replicas (``--batch-size`` times
  the number of replicas), the usual way to use more GPUs.

Devices: all local GPUs when there are any; otherwise the CPU split into N
logical devices (``--cpu-replicas``), which share the same cores, so on CPUs the
figures show the cost of the distribution machinery rather than a speed-up.

The input is an in-memory batch repeated (the tf.data pipeline is measured by
``bench_style_transfer.py``). The configurations are measured in alternating
rounds and the median is printed, so other load on the machine hits them alike.

Usage::

    python scripts/bench_scaling.py [--markdown]          # CPU: 2 logical devices, 64 px
    python scripts/bench_scaling.py --image-size 256 --batch-size 8 --steps 30   # on GPUs
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _tables import add_markdown_flag, print_table  # noqa: E402  (scripts/, on sys.path)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="global batch of the 1-replica run")
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu-replicas", type=int, default=2,
                   help="logical CPU devices when there is no GPU")
    add_markdown_flag(p)
    return p.parse_args()


def main():
    args = parse_args()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)
    kind = "GPU" if gpus else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)]

    import keras
    import numpy as np

    from style_transfer.model import StyleTransferModel

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    rng = np.random.default_rng(0)
    style = rng.uniform(0, 255, (256, 256, 3)).astype("float32")
    n = len(devices)
    configs = [("1 replica", devices[:1], args.batch_size),
               (f"{n} replicas, same global batch", devices, args.batch_size),
               (f"{n} replicas, {n}x the global batch", devices, args.batch_size * n)]
    runs = []
    for label, devs, batch in configs:
        if batch % len(devs):
            sys.exit(f"--batch-size must be a multiple of {len(devs)}")
        strategy = tf.distribute.MirroredStrategy(devs)
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = StyleTransferModel(style, vgg_weights="random", style_size=256)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        images = rng.uniform(0, 255, (batch, args.image_size, args.image_size, 3))
        ds = tf.data.Dataset.from_tensors(images.astype("float32")).repeat()
        clock = Clock()
        clock.times = []
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False,
                  callbacks=[clock])  # traces the train step
        runs.append({"label": label, "model": model, "ds": ds, "batch": batch, "rates": []})
        print(f"built: {label} on {', '.join(devs)}", flush=True)

    for r in range(args.rounds):
        for run in runs:
            clock = Clock()
            clock.times = []
            run["model"].fit(run["ds"], epochs=1, steps_per_epoch=args.steps + 1, verbose=0,
                             shuffle=False, callbacks=[clock])
            t = clock.times  # from the end of the first step: no iterator set-up in it
            run["rates"].append(args.steps * run["batch"] / (t[-1] - t[0]))

    base = float(np.median(runs[0]["rates"]))
    print(f"\nstyle pipeline training, {args.image_size}x{args.image_size} px, {kind} "
          f"({n} {'GPUs' if gpus else 'logical CPU devices sharing the same cores'}), "
          f"median of {args.rounds} rounds of {args.steps} steps")
    rows = [[run["label"], run["batch"], f"{float(np.median(run['rates'])):.2f}",
             f"{float(np.median(run['rates'])) / base:.2f}x"] for run in runs]
    print_table(["configuration", "global batch", "images/s", "vs 1 replica"], rows,
                args.markdown)


if __name__ == "__main__":
    main()
