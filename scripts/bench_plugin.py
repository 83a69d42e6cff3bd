"""Benchmark: the tbviz tab in a real TensorBoard and Chromium, and what the server's
heaviest requests cost it in memory.

Side by side in one run, against the same server and browser, repeated and interleaved
(median reported):

The run: the real ``DeconvnetCallback`` on conv1 of a small Sequential CNN, 50 epochs,
top 4 (4 fixed feature maps).

(a) the evolution grid as it opens (the default spread of steps: 6 of 50 columns) vs
    then choosing all 50 steps (the other 44 columns): time until every tile the browser
    fetched is decoded, tile requests and bytes. Target: the default view well under a
    second and several times cheaper than showing everything.
(b) the top-k view of one step: time from moving the step slider to its 8 tiles decoded.

Memory (``--only memory``): a live ``tensorboard`` (the default fast loading) over the
largest animation its budget allows (``plugin_logs.write_largest_animation``: 4 tiles of
noise a step, which does not compress, each frame as large as ``MAX_FRAME_PIXELS``
allows, as many steps as ``MAX_ANIMATION_PIXELS`` allows), its server process's resident
memory (``/proc/<pid>/status``) before each request, at its peak (``VmHWM``, reset before
each) and 2 s after: that animation as APNG and as GIF, one step more (refused: 413),
and eight of the largest at once. Targets: no allowed request costs more than 512 MB;
eight at once stay within 2 GB.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_plugin.py [--repeats 5] [--only memory]
        [--markdown]

``--markdown`` prints the tables as Markdown (for the docs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

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


def browser(repeats):
    """Part (a) and (b): ``(title, header, rows, notes)`` of a table."""
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
            for _ in range(repeats):
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

    title = f"server: {how}; 50 logged steps, 4 feature maps, {repeats} repeats, median"
    rows = []
    for name, label in [("slider", "top-k, step slider to the first step"),
                        ("spread", "evolution, default spread (6 steps)"),
                        ("all", "evolution, then all 50 steps chosen")]:
        t, n, b = med(name)
        rows.append([label, f"{t * 1000:.0f} ms", f"{n:.0f}", f"{b / 1024:.1f} KiB"])
    (ts, ns, bs), (ta, na, ba) = med("spread"), med("all")
    # "all" fetches only the 44 columns not shown yet (the spread's 6 are cached)
    note = (f"all 50 columns / default 6: time x{(ta + ts) / ts:.1f}, requests "
            f"x{(na + ns) / max(ns, 1):.1f}, bytes x{(ba + bs) / max(bs, 1):.1f}")
    return title, ["view", "time", "tile requests", "bytes"], rows, [note]


def memory():
    """The server's memory serving the largest allowed animations: ``(title, header, rows,
    notes)`` of a table."""
    from tbviz.plugin import tbviz_plugin

    logdir = tempfile.mkdtemp(prefix="bench_plugin_memory_")
    allowed, plan = plugin_logs.write_largest_animation(os.path.join(logdir, "heavy"))
    with tbserver.tensorboard_process(logdir) as (url, server):
        tbserver.wait_for(lambda: tbserver.steps_loaded(url, "heavy", plugin_logs.HEAVY_TAG,
                                                        allowed + 1), timeout=300)

        def animation(fmt, steps):
            query = {"run": "heavy", "tag": plugin_logs.HEAVY_TAG, "format": fmt,
                     "steps": ",".join(str(s) for s in range(1, steps + 1))}
            return f"{url}/data/plugin/tbviz/animation?{urllib.parse.urlencode(query)}"

        cases = [("largest allowed, APNG", animation("apng", allowed), 1),
                 ("largest allowed, GIF", animation("gif", allowed), 1),
                 ("one step more (refused)", animation("apng", allowed + 1), 1),
                 ("8 x largest APNG at once", animation("apng", allowed), 8)]
        start = tbserver.memory(server.pid)["rss"]
        rows = []
        for label, link, n in cases:
            before = tbserver.memory(server.pid)["rss"]
            tbserver.reset_peak(server.pid)
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                answers = list(pool.map(tbserver.fetch, [link] * n))
            seconds = time.perf_counter() - t0
            peak = tbserver.memory(server.pid)["peak"]
            time.sleep(2)
            after = tbserver.memory(server.pid)["rss"]
            codes = sorted({code for code, _ in answers})
            size = max(len(body) for _, body in answers)
            rows.append([label, "/".join(map(str, codes)), f"{size / 2**20:.1f} MiB",
                         f"{before:.0f}", f"{peak:.0f}", f"+{peak - before:.0f}",
                         f"{after - before:+.0f}", f"{seconds:.1f} s"])
    frames = f"{allowed} frames of {plan.width}x{plan.height}"
    title = (f"server memory (MiB, the tensorboard process) serving /animation: {frames} = "
             f"{allowed * plan.pixels / 1e6:.1f} M pixels of noise, the budget "
             f"{tbviz_plugin.MAX_ANIMATION_PIXELS / 1e6:.1f} M ({tbviz_plugin.MAX_FRAME_PIXELS / 1e6:.1f}"
             f" M a frame, {tbviz_plugin.MAX_ANIMATIONS} made at once); at start {start:.0f}")
    return title, ["request", "answer", "body", "RSS before", "peak", "peak - before",
                   "after - before", "time"], rows, []


def table(title, header, rows, notes, markdown=False) -> str:
    """A table as aligned text, or as Markdown."""
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"{n}" for n in notes])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [title, "  " + fmt.format(*header)] + ["  " + fmt.format(*row) for row in rows]
    return "\n".join(lines + [f"  {n}" for n in notes])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=["browser", "memory"],
                    help="run one part (default: both)")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = ap.parse_args()
    parts = [args.only] if args.only else ["browser", "memory"]
    tables = [browser(args.repeats) if part == "browser" else memory() for part in parts]
    print("\n\n".join(table(*t, markdown=args.markdown) for t in tables))


if __name__ == "__main__":
    main()
