"""Epoch-time overhead of tbviz.TensorBoardViz vs Keras' own TensorBoard callback.

Trains the same small CNN (CIFAR-sized: 32x32x3 inputs, four 3x3 conv layers,
about 0.3M parameters) for 200 steps per epoch, four ways, taking turns so
that machine noise hits all alike:

* plain ``fit``,
* ``fit`` + ``keras.callbacks.TensorBoard(histogram_freq=1)``,
* ``fit`` + ``tbviz.TensorBoardViz`` at its defaults (graph, per-step losses,
  weight/gradient/activation histograms, deconvnet top-9 for 4 layers, all with
  8 probe images; convergence scalars included),
* ``fit`` + ``tbviz.ConvergenceCallback`` alone (its part of the defaults: CKA of
  the six conv/dense layers on the 8 probe images, every epoch),
* ``fit`` + ``tbviz.AttributionCallback`` at its defaults (saliency, guided backprop,
  Grad-CAM of the 8 probe images, every epoch), without and with ``faithfulness=True``
  (every metric of :mod:`tbviz.methods.faithfulness` at its defaults); the faithfulness
  row is the difference of the two callbacks' hook times over the plain epoch.

Each setup trains ``--rounds`` times for ``--epochs`` epochs, the setups taking
turns. Epochs are timed from epoch begin to the end of every callback's epoch-end
work, in wall time and in the process's CPU time; the first epoch of each fit
(tracing) is dropped. Prints the median epoch times of each and the ratios against
plain ``fit``, and, measured directly in the same epochs, the time spent inside each
callback's hooks relative to the rest of the epoch (the overhead with the machine's
noise cancelled out). Usage::

    python scripts/bench_callbacks.py [--epochs 3] [--rounds 3] [--steps 200]
        [--only plain,attribution,faithfulness] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tbviz  # noqa: E402


def small_cnn():
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv4"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="fc"),
        keras.layers.Dense(10, name="logits"),
    ], name="small_cnn")


class EpochClock(keras.callbacks.Callback):
    """Put first and last in the callback list: times each epoch including the other
    callbacks' per-step and epoch-end work (which is where tbviz writes), as wall time
    and as this process's CPU time (all threads; less sensitive to other load)."""

    def __init__(self, times, start):
        super().__init__()
        self.times, self.start = times, start

    def on_epoch_begin(self, epoch, logs=None):
        if self.start:
            self.times.append([-time.perf_counter(), -time.process_time()])

    def on_epoch_end(self, epoch, logs=None):
        if not self.start:
            self.times[-1][0] += time.perf_counter()
            self.times[-1][1] += time.process_time()


class HookTimer(keras.callbacks.Callback):
    """Wraps a callback and adds up the wall and CPU time spent in its hooks per epoch,
    so the overhead is measured directly, in the same run as the epoch it slows."""

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
             "on_train_batch_begin", "on_train_batch_end")

    def __init__(self, inner):
        super().__init__()
        self.inner, self.spent = inner, []
        for name in self.HOOKS:
            hook = getattr(inner, name)
            # Train begin/end happen once per fit, outside every epoch: not timed.
            setattr(self, name, hook if name in ("on_train_begin", "on_train_end")
                    else self._timed(hook, name == "on_epoch_begin"))

    def _timed(self, hook, new_epoch):
        def call(*args, **kwargs):
            if new_epoch:
                self.spent.append([0.0, 0.0])
            w, c = time.perf_counter(), time.process_time()
            hook(*args, **kwargs)
            if self.spent:
                self.spent[-1][0] += time.perf_counter() - w
                self.spent[-1][1] += time.process_time() - c
        return call

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)


def run(args):
    rng = np.random.default_rng(0)
    n = args.steps * args.batch
    x = rng.random((n, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, n)
    probe_x, probe_y = x[:8], y[:8]
    root = tempfile.mkdtemp(prefix="bench_callbacks_")

    def make(kind):
        keras.utils.set_random_seed(0)
        model = small_cnn()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        if kind == "plain":
            cbs = []
        elif kind == "keras":
            cbs = [keras.callbacks.TensorBoard(os.path.join(root, "keras"), histogram_freq=1)]
        elif kind == "convergence":
            cbs = [tbviz.ConvergenceCallback(os.path.join(root, "convergence"), probe_x)]
        elif kind in ("attribution", "faithfulness"):
            cbs = [tbviz.AttributionCallback(os.path.join(root, kind), probe_x,
                                             faithfulness=kind == "faithfulness")]
        else:
            cbs = [tbviz.TensorBoardViz(os.path.join(root, "tbviz"), probe_images=probe_x,
                                        probe_labels=probe_y, deconvnet=not args.no_deconvnet)]
        return model, cbs

    kinds = ["plain", "keras", "tbviz", "convergence", "attribution", "faithfulness"]
    if args.only:
        kinds = ["plain"] + [k for k in kinds if k in args.only.split(",") and k != "plain"]
    labels = {"keras": "keras.callbacks.TensorBoard(histogram_freq=1)",
              "tbviz": "tbviz.TensorBoardViz (defaults)",
              "convergence": "tbviz.ConvergenceCallback (defaults)",
              "attribution": "tbviz.AttributionCallback (defaults)",
              "faithfulness": "tbviz.AttributionCallback(faithfulness=True)"}
    labels = {k: v for k, v in labels.items() if k in kinds}
    times = {k: [] for k in kinds}
    hooks = {k: [] for k in labels}
    for _ in range(args.rounds):  # rounds interleave the three so noise hits all alike
        for k in kinds:
            model, cbs = make(k)
            cbs = [HookTimer(cb) for cb in cbs]
            clocks = [EpochClock(times[k], True)] + cbs + [EpochClock(times[k], False)]
            model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=0,
                      shuffle=False, callbacks=clocks)
            del times[k][-args.epochs]  # first epoch of each fit: tracing, not steady state
            if cbs:
                hooks[k] += [(t, e) for t, e in zip(cbs[0].spent[1:], times[k][-args.epochs + 1:])]
    print(f"small CNN, {model.count_params():,} parameters, {args.steps} steps x batch "
          f"{args.batch} per epoch; {args.rounds} rounds of {args.epochs} epochs per setup, "
          "first epoch of each fit dropped")
    for k in kinds:
        print(f"  {k:6s} epoch wall / CPU s: " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in times[k]))
    for i, what in enumerate(("wall time", "CPU time")):
        steady = {k: statistics.median(t[i] for t in v) for k, v in times.items()}
        print(f"end to end, median epoch {what}: "
              + ", ".join(f"{k} {steady[k]:.3f} s" for k in kinds))
        for k, label in labels.items():
            print(f"  ratio vs plain fit, {label}: {steady[k] / steady['plain']:.3f}")
    print("direct: time inside the callback's hooks per epoch, over the rest of that epoch "
          "(same run, so load on the machine cancels out):")
    for k, label in labels.items():
        for i, what in enumerate(("wall", "CPU")):
            ratios = [1 + spent[i] / (epoch[i] - spent[i]) for spent, epoch in hooks[k]]
            spent = statistics.median(s[i] for s, _ in hooks[k])
            print(f"  {label}, {what}: {statistics.median(ratios):.3f} "
                  f"({spent:.3f} s in hooks per epoch)")
    rows = []
    if "faithfulness" in hooks and "attribution" in hooks:
        print("faithfulness metrics at their defaults (hooks with them minus hooks without), "
              "over a plain epoch:")
        for i, what in enumerate(("wall", "CPU")):
            plain = statistics.median(t[i] for t in times["plain"])
            extra = (statistics.median(s[i] for s, _ in hooks["faithfulness"])
                     - statistics.median(s[i] for s, _ in hooks["attribution"]))
            rows.append((what, extra, plain))
            print(f"  {what}: +{100 * extra / plain:.1f}% ({extra:.3f} s on a {plain:.3f} s "
                  "epoch; target at most +5%)")
    if args.markdown:
        print("\n| setup | direct overhead, wall | direct overhead, CPU |\n|---|---|---|")
        for k, label in labels.items():
            cells = [statistics.median(1 + s[i] / (e[i] - s[i]) for s, e in hooks[k])
                     for i in range(2)]
            print(f"| {label} | {cells[0]:.3f}x | {cells[1]:.3f}x |")
        for what, extra, plain in rows:
            print(f"| faithfulness metrics at defaults, {what}, over a plain "
                  f"{args.steps}-step epoch | +{100 * extra / plain:.1f}% | |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--no-deconvnet", action="store_true", help="TensorBoardViz without deconvnet")
    p.add_argument("--only", default="", help="comma-separated setups besides plain: keras, "
                   "tbviz, convergence, attribution, faithfulness")
    p.add_argument("--markdown", action="store_true")
    run(p.parse_args())
