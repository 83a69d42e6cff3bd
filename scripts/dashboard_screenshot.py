"""Screenshots of the tbviz tab for the README, from a model that is not in the test suite.

Trains a small CNN to tell apart crops of scikit-image's sample photos (no downloads),
with ``tbviz.DeconvnetCallback`` on its three conv layers, ``tbviz.ConvergenceCallback``
and ``tbviz.AttributionCallback`` (Grad-CAM, guided backprop), serves the run with a real
TensorBoard (the ``tensorboard`` command when tbviz is installed), opens the tab in
headless Chromium and saves ``docs/dashboard.png`` (top-k projections beside their input
patches), ``docs/dashboard-evolution.png`` (feature maps across epochs, the step at which
the layer settled marked), ``docs/dashboard-evolution.gif`` (that evolution, every
epoch, as the tab's GIF button downloads it) and ``docs/dashboard-attribution.png``.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python scripts/dashboard_screenshot.py [--epochs 20] [--logdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data as samples  # noqa: E402

import tbserver  # noqa: E402
import tbviz  # noqa: E402
from test_plugin_browser import _server_command  # noqa: E402

#: The layer shown (the deepest of the three).
LAYER = "conv3"
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel"]
SIZE = 48


def crops(n_per_photo: int, seed: int = 0):
    """Random ``SIZE`` x ``SIZE`` crops of each photo (at half resolution), labelled by photo."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, name in enumerate(PHOTOS):
        img = getattr(samples, name)()[::2, ::2, :3].astype(np.float32) / 255
        for _ in range(n_per_photo):
            r, c = rng.integers(0, img.shape[0] - SIZE), rng.integers(0, img.shape[1] - SIZE)
            xs.append(img[r:r + SIZE, c:c + SIZE])
            ys.append(label)
    order = rng.permutation(len(xs))
    return np.stack(xs)[order], np.array(ys)[order]


def model():
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(16, 5, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(len(PHOTOS), name="head"),
    ], name="photo_cnn")


def train(logdir, epochs):
    keras.utils.set_random_seed(0)
    x, y = crops(96)
    net = model()
    net.compile(keras.optimizers.Adam(3e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    run = os.path.join(logdir, "photo_cnn")
    callbacks = [
        tbviz.DeconvnetCallback(run, probe_images=x[:16], layers=["conv1", "conv2", "conv3"],
                                top_k=9),
        tbviz.AttributionCallback(run, probe_images=x[:4], target=y[:4],
                                  methods=["grad_cam", "guided_backprop"]),
        tbviz.ConvergenceCallback(run, probe_images=x[:16]),
    ]
    hist = net.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
    print(f"trained {epochs} epochs: accuracy {hist.history['accuracy'][0]:.2f} -> "
          f"{hist.history['accuracy'][-1]:.2f}")


def shoot(url, out_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=tbserver.CHROMIUM, args=tbserver.CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/#tbviz")
        frame = page.wait_for_selector("iframe").content_frame()
        frame.wait_for_selector("figure.tile img")
        frame.get_by_role("option", name=LAYER).click()
        done = ("n => document.images.length >= n && "
                "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        frame.wait_for_function("() => document.querySelector('.panel h3').textContent"
                                ".startsWith('deconvnet/" + LAYER + "')")
        frame.wait_for_function(done, arg=18)
        page.screenshot(path=os.path.join(out_dir, "dashboard.png"))
        frame.get_by_role("tab", name="Evolution").click()
        frame.wait_for_selector("table.evo img")
        frame.wait_for_function(done, arg=9 * 5)
        page.screenshot(path=os.path.join(out_dir, "dashboard-evolution.png"))
        frame.get_by_role("button", name="all", exact=True).click()
        with page.expect_download() as download:
            frame.get_by_role("button", name="GIF", exact=True).click()
        download.value.save_as(os.path.join(out_dir, "dashboard-evolution.gif"))
        frame.get_by_role("button", name="spread", exact=True).click()
        frame.get_by_role("tab", name="Attribution").click()
        frame.wait_for_selector(".grid.wide img")
        frame.wait_for_function(done, arg=8)
        page.screenshot(path=os.path.join(out_dir, "dashboard-attribution.png"))
        browser.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--logdir", help="where the run goes (default: a temporary directory)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="tbviz_docs_")
    train(logdir, args.epochs)
    port = tbserver.free_port()
    cmd, how = _server_command(logdir, port)
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        tbserver.wait_for(lambda: _listed(url), timeout=90)
        os.makedirs(args.out, exist_ok=True)
        shoot(url, args.out)
        print(f"served {logdir} with the {how}; screenshots in {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=15)


def _listed(url):
    try:
        return tbserver.get(f"{url}/data/plugin/tbviz/panels")["total"] > 0
    except OSError:
        time.sleep(0.5)
        return False


if __name__ == "__main__":
    main()
