"""A real ``tensorboard --logdir`` server and a headless Chromium, for end-to-end tests."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

CHROMIUM = os.environ.get("TBVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    try:
        return json.loads(body)
    except ValueError:
        return body


@contextlib.contextmanager
def tensorboard(logdir, timeout=90):
    """Start ``tensorboard --logdir`` on a free loopback port; yield its base URL."""
    with tensorboard_process(logdir, timeout) as (url, _):
        yield url


@contextlib.contextmanager
def tensorboard_process(logdir, timeout=90, args=()):
    """Like :func:`tensorboard`, yielding ``(base URL, the server's Popen)``; ``args`` are
    more flags (e.g. ``["--load_fast=false"]``). Its output goes to a file, not a pipe
    nobody reads (a full pipe would stall the server)."""
    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or shutil.which(
        "tensorboard")
    cmd = [exe] if exe else [sys.executable, "-m", "tensorboard.main"]
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd + ["--logdir", str(logdir), "--port", str(port),
                                   "--host", "127.0.0.1", "--reload_interval", "1", *args],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                get(url + "/data/logdir", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    out = log.read().decode(errors="replace")
                    raise RuntimeError(f"tensorboard did not start: {out[-2000:]}")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_for(fn, timeout=60, interval=0.5):
    """Poll ``fn()`` until it returns something truthy; return it or fail."""
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {fn}")
        time.sleep(interval)


@contextlib.contextmanager
def browser():
    """A headless Debian Chromium driven by Playwright, or a skip that says what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright): browser test skipped")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium): "
                    "browser test skipped")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def memory(pid) -> dict:
    """``{"rss", "peak"}`` of process ``pid`` in MiB: its resident memory now and its
    high-water mark since start or the last :func:`reset_peak` (Linux ``/proc``)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out["rss" if name == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    return out


def reset_peak(pid):
    """Start ``pid``'s high-water mark (``VmHWM``) again from its resident memory now."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def fetch(url, timeout=600):
    """``(status, body)`` of a GET, an HTTP error's status and text included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def steps_loaded(url, run, tag, n) -> bool:
    """Whether the server at ``url`` lists ``n`` steps of ``run``/``tag`` (it may still be
    loading, or not know the run yet)."""
    query = urllib.parse.urlencode({"run": run, "tag": tag, "limit": 1})
    try:
        return get(f"{url}/data/plugin/tbviz/steps?{query}", timeout=10)["total"] >= n
    except OSError:  # includes HTTP 404 while the run is not loaded
        return False
