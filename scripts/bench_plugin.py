"""Benchmark: the tbviz tab on a run with 50 logged steps, in a real TensorBoard and Chromium.

Side by side in one run, against the same server and browser, repeated and interleaved
(median reported):

The run: the real ``DeconvnetCallback`` on conv1 of a small Sequential CNN, 50 epochs,
top 4 (4 fixed feature maps).

(a) the evolution grid as it opens (the default spread of steps: 6 of 50 columns) vs
    then choosing all 50 steps (the other 44 columns): time until every tile the browser
    fetched is decoded, tile requests and bytes. Target: the default view well under a
    second and several times cheaper than showing everything.
(b) the top-k view of one step: time from moving the step slider to its 8 tiles decoded.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_plugin.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import plugin_logs  # noqa: E402
import tbserver  # noqa: E402
from test_plugin_browser import _server_command  # noqa: E402

ALL_DONE = "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"


def measure(page, frame, action, selector, count, finished):
    """Seconds from ``action`` until ``count`` tiles match ``selector`` and the last tile
    fetched has arrived; tile requests and bytes fetched meanwhile."""
    finished.clear()
    t0 = time.perf_counter()
    action()
    frame.wait_for_function(f"() => document.querySelectorAll({selector!r}).length === {count}",
                            timeout=60_000)
    t_dom = time.perf_counter()
    seen = -1
    while seen != len(finished):  # quiet for 300 ms: nothing more is coming
        seen = len(finished)
        page.wait_for_timeout(300)
    bad = frame.evaluate("() => [...document.images].filter(i => i.complete && !i.naturalWidth)"
                         ".length")
    assert bad == 0, f"{bad} tiles did not decode"
    end = max([t for t, _ in finished] + [t_dom])
    return end - t0, len(finished), sum(b for _, b in finished)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    logdir = tempfile.mkdtemp(prefix="bench_plugin_")
    import models

    plugin_logs.train_deconvnet_run(os.path.join(logdir, "long"), models.sequential(), ["conv1"],
                                    epochs=50, top_k=4)
    port = tbserver.free_port()
    cmd, how = _server_command(logdir, port)
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": ROOT})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if tbserver.get(f"{url}/data/plugin/tbviz/steps?run=long/train"
                           "&tag=tbviz/deconvnet/conv1/evolution&limit=1")["total"] == 50:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=tbserver.CHROMIUM,
                                        args=tbserver.CHROMIUM_ARGS)
            finished = []  # (time, bytes) of every tile response
            results = {"spread": [], "all": [], "slider": []}
            for _ in range(args.repeats):
                # a fresh context each time: nothing in the browser cache
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.on("requestfinished", lambda r: "/tbviz/blob?" in r.url and finished.append(
                    (time.perf_counter(), r.sizes()["responseBodySize"])))
                page.goto(f"{url}/#tbviz")
                frame = page.wait_for_selector("iframe").content_frame()
                frame.wait_for_function(ALL_DONE + " && document.images.length > 0")
                results["slider"].append(measure(page, frame, lambda: (
                    frame.focus(".steps input"), page.keyboard.press("Home")),
                    "img[src*='step=1&']", 8, finished))
                results["spread"].append(measure(page, frame, lambda: frame.get_by_role(
                    "tab", name="Evolution").click(), "table.evo img", 24, finished))
                results["all"].append(measure(page, frame, lambda: frame.get_by_role(
                    "button", name="all", exact=True).click(), "table.evo img", 200, finished))
                context.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)

    def med(name):
        rows = results[name]
        return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
                statistics.median(r[2] for r in rows))

    print(f"server: {how}; 50 logged steps, 4 feature maps, {args.repeats} repeats, median")
    for name, label in [("slider", "top-k, step slider to the first step"),
                        ("spread", "evolution, default spread (6 steps)"),
                        ("all", "evolution, then all 50 steps chosen")]:
        t, n, b = med(name)
        print(f"  {label:40s} {t * 1000:7.0f} ms  {n:4.0f} tile requests  {b / 1024:7.1f} KiB")
    (ts, ns, bs), (ta, na, ba) = med("spread"), med("all")
    # "all" fetches only the 44 columns not shown yet (the spread's 6 are cached)
    print(f"  all 50 columns / default 6: time x{(ta + ts) / ts:.1f}, requests "
          f"x{(na + ns) / max(ns, 1):.1f}, bytes x{(ba + bs) / max(bs, 1):.1f}")


if __name__ == "__main__":
    main()
