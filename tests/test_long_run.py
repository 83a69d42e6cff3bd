"""Long-run stability: 30 epochs with every tbviz callback on.

Checks that nothing re-traces after the first epoch (the model's Python ``call``
runs only while a function is traced, so counting its calls catches any probe
that re-traces or runs eagerly), that process memory stops growing, and that the
callbacks' time per epoch does not rise. The memory growth from epoch 5 to 30
is printed (run with ``-s``) for the README.
"""

import time

import keras
import numpy as np
import pytest

import tbviz
from models import compile, data, functional_bn_nested

EPOCHS = 30


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Watch(keras.callbacks.Callback):
    """First and last in the list: per-epoch time spent in the callbacks between, and RSS."""

    def __init__(self, log, first):
        super().__init__()
        self.log, self.first = log, first

    def on_epoch_end(self, epoch, logs=None):
        if self.first:
            self.log.setdefault("t0", {})[epoch] = time.perf_counter()
        else:
            self.log.setdefault("cb", []).append(time.perf_counter() - self.log["t0"][epoch])
            self.log.setdefault("rss", []).append(rss_mb())
            self.log.setdefault("calls", []).append(self.log["counter"][0])


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs /proc")
def test_thirty_epochs_with_everything_on(tmp_path):
    model = compile(functional_bn_nested())
    x, y = data(32)
    counter = [0]
    layer = model.get_layer("conv1")
    original = layer.call

    def counting_call(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    object.__setattr__(layer, "call", counting_call)
    log = {"counter": counter}
    viz = tbviz.TensorBoardViz(
        str(tmp_path), probe_images=x[:4], probe_labels=y[:4], losses={"every_n_steps": 1},
        attribution=["saliency", "guided_backprop", "grad_cam", "occlusion"],
        synthesis={"maximize": {"conv1": 2}, "invert": ["conv1"], "steps": 4})
    # Keras' epoch-end order: ours run between the two watches.
    model.fit(x, y, epochs=EPOCHS, batch_size=16, verbose=0,
              callbacks=[Watch(log, True), viz, Watch(log, False)])

    calls = log["calls"]
    assert calls[1:] == [calls[0]] * (EPOCHS - 1), f"re-traced after epoch 1: {calls}"

    rss = log["rss"]
    growth = rss[-1] - rss[4]
    print(f"\nRSS epoch 5: {rss[4]:.1f} MB, epoch {EPOCHS}: {rss[-1]:.1f} MB, "
          f"growth {growth:+.1f} MB; callback time per epoch: first 10 median "
          f"{np.median(log['cb'][1:11]):.3f} s, last 10 median {np.median(log['cb'][-10:]):.3f} s")
    # Growth in the second half must be a fraction of the first half's (it levels off).
    assert rss[-1] - rss[17] <= max(20.0, 0.5 * (rss[17] - rss[4]) + 10.0), rss

    # Callback time does not rise: the last ten epochs are not slower than epochs 2-11
    # (a leak that adds work per epoch would double it over 30 epochs).
    assert np.median(log["cb"][-10:]) < 1.5 * np.median(log["cb"][1:11]) + 0.05
