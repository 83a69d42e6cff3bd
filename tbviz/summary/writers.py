"""One summary writer per run directory, shared by every tbviz callback.

TensorBoard reads a run directory best when one writer appends to it, so
callbacks never open their own writers: they ``acquire`` the run's writer at
train begin and ``release`` it at train end; the last release closes it.

Under ``tf.distribute`` (or JAX's multi-process distribution, or ``torch.distributed``)
only the chief writes (:func:`tbviz.backend.is_chief`). Other workers get a no-op writer
and create nothing under ``log_dir``.

Example:
    >>> import tempfile
    >>> from tbviz.summary import events, writers
    >>> d = tempfile.mkdtemp()
    >>> w = writers.acquire(d + "/train")
    >>> with w.as_default(step=0):
    ...     _ = events.scalar("x", 1.0)
    >>> writers.release(d + "/train")
"""

from __future__ import annotations

import os
import shutil
import threading

from tbviz.summary import events

_lock = threading.Lock()
_open: dict[str, list] = {}  # absolute path -> [writer, refcount]


def check_writable(log_dir: str) -> str:
    """Create ``log_dir`` if needed and prove it is writable; raise ``ValueError`` if not."""
    path = os.path.abspath(os.fspath(log_dir))
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".tbviz_write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"log_dir {log_dir!r} is not writable ({e.strerror or e}); pass a directory you can "
            "write to, e.g. log_dir='runs/my_run'"
        ) from None
    return path


def acquire(path: str, chief: bool = True):
    """The shared writer for run directory ``path`` (created on first use)."""
    if not chief:
        return events.NoopWriter()
    path = os.path.abspath(os.fspath(path))
    with _lock:
        entry = _open.get(path)
        if entry is None:
            os.makedirs(path, exist_ok=True)
            entry = _open[path] = [events.EventWriter.open(path), 0]
        entry[1] += 1
        return entry[0]


def release(path: str) -> None:
    """Give back a writer from :func:`acquire`; the last holder flushes and closes it."""
    path = os.path.abspath(os.fspath(path))
    with _lock:
        entry = _open.get(path)
        if entry is None:
            return
        entry[1] -= 1
        try:
            entry[0].flush()  # raises when the run folder was deleted or the disk is full
        finally:
            if entry[1] <= 0:
                del _open[path]  # forgotten even then, so a later acquire opens a fresh one
                entry[0].close()


def mark_start(writer, step: int) -> None:
    """Tell TensorBoard a run (re)starts at ``step``: it drops what the run logged at
    ``step`` and later before this point, since a resumed run logs those steps again.

    Writes a ``SessionLog.START`` event, the marker TensorBoard's readers use for
    restarted jobs (its Rust data server drops re-logged steps per tag by itself).
    Call it first thing with a run's writer; a no-op writer writes nothing.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> mark_start(acquire(d), 101)   # a run resumed from its checkpoint of step 100
    >>> release(d)
    """
    with writer.as_default(step=int(step)):
        events.session_start(int(step))


def remove_unused(paths) -> None:
    """Delete the folders ``paths`` (made by a run that failed before it started) unless
    an open writer still writes under one of them. Nothing half-written is left behind."""
    with _lock:
        held = list(_open)
    for path in paths:
        path = os.path.abspath(os.fspath(path))
        if not any(h == path or h.startswith(path + os.sep) for h in held):
            shutil.rmtree(path, ignore_errors=True)


def flush_all() -> None:
    """Flush every open writer (called at epoch ends and checkpoints)."""
    with _lock:
        for writer, _ in _open.values():
            writer.flush()
