"""A real ``tensorboard --logdir`` server and a headless Chromium, for end-to-end tests."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
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
def tensorboard_process(logdir, timeout=90):
    """Like :func:`tensorboard`, yielding ``(base URL, the server's Popen)``."""
    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or shutil.which(
        "tensorboard")
    cmd = [exe] if exe else [sys.executable, "-m", "tensorboard.main"]
    port = free_port()
    proc = subprocess.Popen(cmd + ["--logdir", str(logdir), "--port", str(port),
                                   "--host", "127.0.0.1", "--reload_interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                get(url + "/data/logdir", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    raise RuntimeError(f"tensorboard did not start: {out[-2000:]}")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


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
