"""What tbviz costs, as the user pays it, on one model of every keras.applications family.

For each model (``weights=None``, ``--size`` px inputs, 10 classes, ``--steps``
batches of ``--batch`` per epoch), in one process per model so no model sees
another's traces, two fresh copies train for two epochs side by side:

* plain ``fit``;
* ``fit`` + ``tbviz.TensorBoardViz(log_dir, probe_images=x[:4], probe_labels=y[:4],
  attribution=["saliency", "grad_cam"])`` (its defaults otherwise: graph, losses,
  histograms, deconvnet of four conv layers, feature maps, convergence; a log every epoch).

and it prints, per model:

* ``setup``: the two epochs with tbviz minus the two plain epochs (tracing, the
  train-begin work and both logs), against ``keras 1st``: Keras' own first
  epoch of the plain run (its trace and its steps) - the target is a ratio <= 1;
* ``in tbviz``: the same cost measured directly, as the time spent inside tbviz's
  parts (the sum of every ``tbviz/cost/...`` scalar of the run: train-begin work and
  both logs). On a loaded machine the difference of two runs above is noisy (the
  load changes between them); this one is not, and is the figure to quote there;
* ``one log``: the time of the second epoch's log (the sum of the parts'
  ``tbviz/cost/<part>`` scalars, read back from the run), in plain training steps
  (the second plain epoch's time per step) - the target is <= 20.
* the parts that cost most at setup and per log;
* ``fits``: ``--fits`` more ``fit(epochs=1)`` calls of the tbviz model with the same
  callback (fine-tuning phases, notebook cells, loops of ``fit``): tbviz's train-begin
  time in each (the time inside its ``on_train_begin`` and, where setup waits for the
  first batch, that batch's end), the first fit's beside the largest later one, and the
  process's resident memory after the second fit and after the last; side by side, the
  same number of plain ``fit(epochs=1)`` calls of the plain model first, so that what
  Keras and the backend themselves keep per fit is not put down to tbviz. Each side also
  counts the Python objects the garbage collector tracks (what a callback that keeps
  references per fit would grow).

Usage::

    python scripts/bench_zoo.py                     # every family
    python scripts/bench_zoo.py MobileNetV2 VGG16   # some
    python scripts/bench_zoo.py MobileNetV3Small --fits 10   # ten fits with one callback
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FAMILIES = ["ResNet50V2", "MobileNetV2", "EfficientNetB0", "DenseNet121", "ConvNeXtTiny",
            "Xception", "InceptionV3", "NASNetMobile", "VGG16", "MobileNetV3Small",
            "EfficientNetV2B0", "InceptionResNetV2", "ResNet50", "RegNetX002"]


class EpochClock:
    """Wall time of each epoch, from epoch begin to the end of every callback's epoch end
    (put it first and last in the callback list)."""

    def __init__(self, keras):
        clock = self
        self.times, self._start = [], None

        class Begin(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock._start = time.perf_counter()

        class End(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                clock.times.append(time.perf_counter() - clock._start)

        self.begin, self.end = Begin(), End()


class SetupClock:
    """Wall time tbviz's callback spends setting up in each ``fit``: its ``on_train_begin``,
    and the first batch's end (where setup waits for Keras to build the model)."""

    def __init__(self, viz):
        self.times = []
        begin, batch_end = viz.on_train_begin, viz.on_train_batch_end

        def on_train_begin(logs=None):
            start = time.perf_counter()
            begin(logs)
            self.times.append(time.perf_counter() - start)

        def on_train_batch_end(batch, logs=None):
            start = time.perf_counter()
            batch_end(batch, logs)
            if batch == 0:
                self.times[-1] += time.perf_counter() - start

        viz.on_train_begin, viz.on_train_batch_end = on_train_begin, on_train_batch_end


def rss_mb() -> float:
    """This process's resident memory now (not its peak), in MB."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(name: str, size: int, steps: int, batch: int, fits: int = 0) -> dict:
    import keras
    import numpy as np

    import tbviz
    from tests.eventfiles import load, scalars

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (steps * batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))

    def model():
        keras.utils.set_random_seed(0)
        m = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                              classes=10)
        m.compile("adam", "sparse_categorical_crossentropy")
        return m

    def fit(m, callbacks):
        clock = EpochClock(keras)
        start = time.perf_counter()
        m.fit(x, y, batch_size=batch, epochs=2, verbose=0,
              callbacks=[clock.begin] + callbacks + [clock.end])
        return time.perf_counter() - start, clock.times

    plain_model = model()
    plain_total, plain = fit(plain_model, [])
    log_dir = tempfile.mkdtemp(prefix=f"bench_zoo_{name}_")
    viz = tbviz.TensorBoardViz(log_dir, probe_images=x[:4], probe_labels=y[:4],
                               attribution=["saliency", "grad_cam"])
    setups = SetupClock(viz)
    tbviz_model = model()
    viz_total, _ = fit(tbviz_model, [viz])
    run = load(os.path.join(log_dir, "train"))
    costs = {t[len("tbviz/cost/"):]: scalars(run, t)
             for t in run.Tags()["tensors"] if t.startswith("tbviz/cost/")}
    setup_parts = {k[:-len("_setup")]: v[-1][1] for k, v in costs.items() if k.endswith("_setup")}
    log_parts = {k: v[-1][1] for k, v in costs.items() if not k.endswith("_setup") and v}
    errors = "tbviz/errors" in run.Tags()["tensors"]
    inside = sum(v for values in costs.values() for _, v in values)
    step_time = plain[1] / steps
    def refit(m, callbacks):
        rss, objects = [], []
        for _ in range(fits):
            m.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
            gc.collect()
            rss.append(rss_mb())
            objects.append(len(gc.get_objects()))
        return rss, objects

    # The plain model's fits first: they cannot hold anything of tbviz's.
    plain_rss, plain_objects = refit(plain_model, []) if fits else ([], [])
    rss, objects = refit(tbviz_model, [viz]) if fits else ([], [])
    return {"model": name, "keras_first_epoch": plain[0], "setup": viz_total - plain_total,
            "step": step_time, "log": sum(log_parts.values()),
            "inside": inside, "setup_parts": setup_parts, "log_parts": log_parts, "errors": errors,
            "fit_setups": setups.times, "fit_rss": rss, "fit_objects": objects,
            "plain_rss": plain_rss, "plain_objects": plain_objects}


def _top(parts: dict, n: int = 2) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:n])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=FAMILIES[:9],
                   help=f"keras.applications names (default: {', '.join(FAMILIES[:9])})")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=8, help="batches per epoch")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--fits", type=int, default=0,
                   help="further fit(epochs=1) calls with the same callback, each one timed")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one model here, print JSON
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.size, args.steps, args.batch,
                                             args.fits)))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"{args.size}x{args.size} inputs, {args.steps} steps of {args.batch} per epoch, "
          "weights=None; setup = 2 epochs with tbviz - 2 plain epochs\n")
    print(f"{'model':<18}{'keras 1st':>10}{'setup':>8}{'ratio':>7}{'in tbviz':>9}{'ratio':>7}"
          f"{'step':>8}{'one log':>9}{'steps':>7}  costliest at setup | per log")
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--size", str(args.size),
                              "--steps", str(args.steps), "--batch", str(args.batch),
                              "--fits", str(args.fits)],
                             capture_output=True, text=True, cwd=root,
                             env=dict(os.environ, PYTHONPATH=root))
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name:<18}failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(line[len("RESULT "):])
        note = "  (a part was switched off: see tbviz/errors)" if r["errors"] else ""
        print(f"{name:<18}{r['keras_first_epoch']:>9.1f}s{r['setup']:>7.1f}s"
              f"{r['setup'] / r['keras_first_epoch']:>7.2f}{r['inside']:>8.1f}s"
              f"{r['inside'] / r['keras_first_epoch']:>7.2f}{r['step'] * 1000:>6.0f}ms"
              f"{r['log']:>8.2f}s{r['log'] / r['step']:>7.1f}  {_top(r['setup_parts'], 4)} | "
              f"{_top(r['log_parts'])}{note}", flush=True)
        if r["fit_rss"]:
            first, later = r["fit_setups"][0], r["fit_setups"][1:]
            print(f"{'':<18}fits: setup {first:.2f}s in the first, {min(later):.2f}-"
                  f"{max(later):.2f}s in the {len(later)} later (at most "
                  f"{max(later) / first:.1%} of the first; each: "
                  f"{' '.join(f'{t:.2f}' for t in later)})", flush=True)
            for side, rss, objects in (("tbviz", r["fit_rss"], r["fit_objects"]),
                                       ("plain", r["plain_rss"], r["plain_objects"])):
                print(f"{'':<18}{side} fits: memory {rss[0]:.0f} MB after the 2nd, "
                      f"{rss[-1]:.0f} MB after the last ({rss[-1] - rss[0]:+.0f} MB over "
                      f"{len(rss) - 1} fits; each: {' '.join(f'{m:.0f}' for m in rss)}); "
                      f"Python objects {objects[-1] - objects[0]:+d}", flush=True)


if __name__ == "__main__":
    main()
