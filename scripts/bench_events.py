#!/usr/bin/env python
"""How much event data the style pipeline writes, and what TensorBoard holds to serve it.

Side by side in one run, at the style pipeline's defaults except a small image size
and a few steps (``--vgg-weights random``, so nothing is downloaded):

* **now**: ``style-transfer train`` as it is;
* **before**: the same command with the opt-in copies forced on, as they were always
  written before: every ``DeconvnetCallback`` with ``image_grids=True, raw=True`` (the
  Images-dashboard copy of every tile, the float16 raw projections) and its own probes
  panel (``probes_panel=None``: VGG19's copy of the stylized photos),
  ``StylizedProbes(image_summary=True)``, and the panels' images as PNG at zlib level 1
  instead of lossless WebP. (Patches stay crops of the probe images, which cannot be
  switched off: main before that change wrote more, see the README.)

For each it prints MB of event data per logged step (all of it over the logged steps,
and without what is written once, like the graph; a logged step is a step with tbviz
panels), the biggest tags, the MB per logged step of the 300-log run, and the resident
memory (RSS, the ``tensorboard`` process and its data server together) of the stock
``tensorboard --logdir`` serving a 300-log run made of those steps: the short run's
logged steps are copied, renumbered, until there are 300 (as a 30k-step run at
``--log-every 100`` would have), which costs no training. RSS is read once TensorBoard
has loaded the last step (polled through the scalars route).

Usage::

    python scripts/bench_events.py [--markdown]          # 128 px, 4 logged steps, 300 logs
    python scripts/bench_events.py --image-size 64 --logs 100 --skip-before

Other processes slow the runs but do not change the sizes; RSS varies by a few MB.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import tensorflow as tf  # noqa: E402
from tensorboard.backend.event_processing import event_file_loader  # noqa: E402
from tensorboard.compat.proto import event_pb2  # noqa: E402

import tbserver  # noqa: E402
from style_transfer import cli, data  # noqa: E402
from style_transfer.callbacks import StylizedProbes  # noqa: E402
from tbviz.callbacks.deconvnet import DeconvnetCallback  # noqa: E402
from tbviz.summary import metadata  # noqa: E402
from _tables import add_markdown_flag, print_table  # noqa: E402  (scripts/, on sys.path)

MB = 1e6
#: Tag written by this script at every copied step, so that loading can be polled.
LOADED_TAG = "bench/logged_step"


def forcing(cls, **options):
    """``cls.__init__`` with ``options`` whatever the caller passes."""
    init = cls.__init__

    @functools.wraps(init)  # keeps the signature, which TensorBoardViz checks options against
    def forced(self, *args, **kwargs):
        init(self, *args, **{**kwargs, **options})

    return forced


@contextlib.contextmanager
def old_defaults():
    """The Images-dashboard copies, raw tensors and VGG19's own probes panel on; PNG level 1."""
    saved = DeconvnetCallback.__init__, StylizedProbes.__init__, metadata.IMAGE_OPTIONS
    DeconvnetCallback.__init__ = forcing(DeconvnetCallback, image_grids=True, raw=True,
                                         probes_panel=None)
    StylizedProbes.__init__ = forcing(StylizedProbes, image_summary=True)
    metadata.IMAGE_OPTIONS = {"format": "PNG", "compress_level": 1}
    try:
        yield
    finally:
        DeconvnetCallback.__init__, StylizedProbes.__init__, metadata.IMAGE_OPTIONS = saved


def train(log_dir, args):
    """A short ``style-transfer train`` at defaults; logs every step, so each step is a log."""
    argv = ["train", "--content-dir", os.path.dirname(data.bundled_photos()[0]),
            "--style-image", data.asset_path("styles", "wave.jpg"), "--log-dir", log_dir,
            "--vgg-weights", "random", "--image-size", str(args.image_size),
            "--epochs", "1", "--steps-per-epoch", str(args.steps), "--batch-size", "2",
            "--log-every", "1", "--quiet"]
    if cli.main(argv) != 0:
        raise SystemExit("style-transfer train failed")


def events(run_dir):
    """``[(serialized Event, Event)]`` of every event file under ``run_dir``, in order."""
    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for raw in event_file_loader.RawEventFileLoader(path).Load():
            out.append((raw, event_pb2.Event.FromString(raw)))
    return out


def sizes(run_dir):
    """Bytes per tag (``<graph>`` etc. for events without a summary), its steps, and the
    steps with tbviz panels (the logged steps)."""
    by_tag, steps, panels = collections.Counter(), collections.defaultdict(set), set()
    for raw, ev in events(run_dir):
        values = ev.summary.value if ev.HasField("summary") else []
        for v in values:
            by_tag[v.tag] += len(raw) / len(values)
            steps[v.tag].add(ev.step)
            if v.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:  # (its first event)
                panels.add(v.tag)
        if not values:
            by_tag[f"<{ev.WhichOneof('what')}>"] += len(raw)
    return by_tag, steps, set().union(*(steps[t] for t in panels))


def report(name, run_dir):
    """Prints the run's sizes and biggest tags; returns (bytes per logged step, bytes per
    logged step without what is written once, bytes written once, logged steps)."""
    by_tag, steps, logged = sizes(run_dir)
    logged = len(logged)
    total = sum(by_tag.values())
    once = sum(n for t, n in by_tag.items() if len(steps.get(t, ())) <= 1)
    print(f"{name}: {total / MB:.2f} MB over {logged} logged steps = "
          f"{total / MB / logged:.2f} MB per logged step "
          f"({(total - once) / MB / logged:.2f} MB without the {once / MB:.2f} MB written once)")
    groups = collections.Counter()
    for tag, n in by_tag.items():
        parts = tag.split("/")
        groups["/".join(parts[:1] + ["*"] * (len(parts) > 2) + parts[-1:])] += n
    for group, n in groups.most_common(6):
        print(f"    {n / MB / logged:6.3f} MB per step  {group}")
    return total / logged, (total - once) / logged, once, logged


def write_long_run(src_run, dst_run, logs):
    """``logs`` logged steps: the logged steps of ``src_run`` repeated and renumbered 1..logs,
    after what it wrote once (file version, graph, the tags of one step only, such as a
    fixed array of probe images). Returns the bytes written (without the loading marks)."""
    evs = [ev for _, ev in events(src_run)]
    steps = collections.defaultdict(set)
    for ev in evs:
        for v in ev.summary.value:
            steps[v.tag].add(ev.step)
    by_step = collections.defaultdict(list)
    once = []
    for ev in evs:
        repeated = ev.step > 0 and any(len(steps[v.tag]) > 1 for v in ev.summary.value)
        (by_step[ev.step] if repeated else once).append(ev)
    cycle = [by_step[s] for s in sorted(by_step)]
    os.makedirs(dst_run, exist_ok=True)
    path = os.path.join(dst_run, f"events.out.tfevents.{int(time.time())}.bench.v2")
    written = 0
    with tf.io.TFRecordWriter(path) as w:
        for ev in once:
            blob = ev.SerializeToString()
            written += len(blob)
            w.write(blob)
        for step in range(1, logs + 1):
            for ev in cycle[(step - 1) % len(cycle)]:
                copy = event_pb2.Event()
                copy.CopyFrom(ev)
                copy.step = step
                blob = copy.SerializeToString()
                written += len(blob)
                w.write(blob)
            mark = event_pb2.Event(step=step, wall_time=time.time())
            mark.summary.value.add(tag=LOADED_TAG, simple_value=step)
            w.write(mark.SerializeToString())
    return written


def rss_of_tree(pid):
    """Resident bytes of ``pid`` and its descendants (TensorBoard and its data server)."""
    children = collections.defaultdict(list)
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError), open(stat) as f:
            fields = f.read().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.split("/")[2]))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    return total


def serve_rss(logdir, logs, timeout):
    """RSS of ``tensorboard --logdir`` (default fast loading) once it has loaded step ``logs``,
    and the seconds it took."""
    with tbserver.tensorboard_process(logdir) as (url, proc):
        t0 = time.perf_counter()
        scalars = f"{url}/data/plugin/scalars/scalars?run=train&tag={LOADED_TAG}"

        def loaded():
            with contextlib.suppress(OSError, ValueError, TypeError, IndexError):
                return tbserver.get(scalars, timeout=10)[-1][1] == logs
            return False

        tbserver.wait_for(loaded, timeout=timeout, interval=1)
        seconds = time.perf_counter() - t0
        time.sleep(2)  # let the data server settle after its last read
        return rss_of_tree(proc.pid), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="training steps = logged steps")
    parser.add_argument("--logs", type=int, default=300, help="logged steps TensorBoard serves")
    parser.add_argument("--skip-before", action="store_true", help="only today's defaults")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for loading")
    add_markdown_flag(parser)
    args = parser.parse_args()
    results, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="bench_events_") as tmp:
        for name in ([] if args.skip_before else ["before"]) + ["now"]:
            run = os.path.join(tmp, name)
            with old_defaults() if name == "before" else contextlib.nullcontext():
                train(run, args)
            per_step, repeated, once, logged = report(name, os.path.join(run, "train"))
            long_dir = os.path.join(tmp, f"{name}_{args.logs}")
            written = write_long_run(os.path.join(run, "train"), os.path.join(long_dir, "train"),
                                     args.logs)
            rss, seconds = serve_rss(long_dir, args.logs, args.timeout)
            print(f"    {args.logs}-log run: {written / MB:.0f} MB of events "
                  f"({written / MB / args.logs:.2f} MB per logged step); tensorboard "
                  f"resident {rss / MB:.0f} MB once loaded ({seconds:.0f} s to load)")
            results[name] = per_step, rss
            rows.append([f"{name}, {args.image_size} px",
                         f"{per_step / MB:.2f} MB over {logged} steps",
                         f"{repeated / MB:.2f} MB", f"{once / MB:.2f} MB",
                         f"{written / MB:.0f} MB ({written / MB / args.logs:.2f} MB)",
                         f"{rss / MB:.0f} MB"])
    if len(results) == 2:
        (b, rb), (n, rn) = results["before"], results["now"]
        print(f"now / before: {n / b:.2f} of the event data per logged step "
              f"({b / MB:.2f} -> {n / MB:.2f} MB), {rn / rb:.2f} of TensorBoard's RSS "
              f"({rb / MB:.0f} -> {rn / MB:.0f} MB)")
    print()
    print_table(["run", "event data per logged step", "without what is written once",
                 "written once", f"{args.logs}-log run on disk (per logged step)",
                 "tensorboard RSS serving it"], rows, args.markdown)


if __name__ == "__main__":
    main()
