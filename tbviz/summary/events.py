"""Writing summaries in TensorBoard's own formats, on every backend, with ``tf.summary`` 's shape.

A run's writer (an :class:`EventWriter`, from :func:`tbviz.summary.writers.acquire`)
becomes the default inside ``with writer.as_default(step=...)``, and the functions here
write to it, as ``tf.summary.scalar`` and friends do: :func:`scalar`, :func:`text`,
:func:`image`, :func:`tensor` (any array with its metadata), :func:`summary` (a ready
``Summary`` proto) and :func:`graph`. Each builds the ``Summary`` with TensorBoard's own
protos and plugin metadata (``tensorboard.plugins.*``), so every dashboard reads it as
if ``tf.summary`` had written it, and hands the serialized ``Event`` to the backend's
event sink (:func:`tbviz.backend.event_sink`: TensorFlow's own writer on TensorFlow,
tensorboardX elsewhere). Images are encoded as PNG by Pillow.

Without a default writer every function returns ``False`` and writes nothing, as
``tf.summary`` does.

Example:
    >>> import tempfile, numpy as np
    >>> from tbviz.summary import events
    >>> w = events.EventWriter.open(tempfile.mkdtemp())
    >>> with w.as_default(step=3):
    ...     events.scalar("loss", 0.5)
    ...     events.image("photo", np.zeros((1, 4, 4, 3), np.uint8))
    True
    True
    >>> w.close()
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.util import tensor_util

_local = threading.local()  # the stack of (writer, default step) of this thread


class EventWriter:
    """One run directory's event file; the functions of this module write to it while it is
    the default (:meth:`as_default`)."""

    def __init__(self, sink):
        self._sink = sink
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> "EventWriter":
        """A writer of a new event file in ``path``, through the backend's event sink."""
        from tbviz import backend

        return cls(backend.event_sink(path))

    @contextlib.contextmanager
    def as_default(self, step: int | None = None):
        """Make this the writer the module's functions write to, ``step`` their default step."""
        stack = _stack()
        stack.append((self, step))
        try:
            yield self
        finally:
            stack.pop()

    def add_event(self, event: event_pb2.Event) -> None:
        with self._lock:
            self._sink.write(event.SerializeToString())

    def add_summary(self, value: summary_pb2.Summary, step: int) -> None:
        if not isinstance(value, summary_pb2.Summary):
            # TensorBoard's own writers hand out TensorFlow's proto class where it is
            # installed: the same message, another Python class.
            value = summary_pb2.Summary.FromString(value.SerializeToString())
        self.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=value))

    def flush(self) -> None:
        with self._lock:
            self._sink.flush()

    def close(self) -> None:
        with self._lock:
            self._sink.close()


class NoopWriter(EventWriter):
    """A writer that writes nothing (a worker that is not the chief)."""

    def __init__(self):
        super().__init__(sink=None)

    def add_event(self, event) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _default(step):
    stack = _stack()
    if not stack:
        return None, None
    writer, default = stack[-1]
    step = default if step is None else step
    if step is None:
        raise ValueError("no step for this summary: pass step= or write inside "
                         "writer.as_default(step=...)")
    return writer, int(step)


def summary(value: summary_pb2.Summary, step: int | None = None) -> bool:
    """Write a ready ``Summary`` proto at ``step`` to the default writer."""
    writer, step = _default(step)
    if writer is None:
        return False
    writer.add_summary(value, step)
    return True


def tensor(tag: str, data, step: int | None = None,
           metadata: summary_pb2.SummaryMetadata | None = None) -> bool:
    """Write any array (numbers, or bytes for blobs) with its summary ``metadata``."""
    value = summary_pb2.Summary()
    entry = value.value.add(tag=tag)
    if metadata is not None:
        entry.metadata.CopyFrom(metadata)
    if isinstance(data, str):
        data = data.encode("utf-8")
    arr = np.asarray(data, dtype=object) if _is_bytes(data) else np.asarray(data)
    entry.tensor.CopyFrom(tensor_util.make_tensor_proto(arr))
    return summary(value, step)


def _is_bytes(data) -> bool:
    if isinstance(data, bytes):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and isinstance(data[0], bytes)


def scalar(tag: str, value, step: int | None = None, description: str | None = None) -> bool:
    """A scalar for the Scalars dashboard (a float32 tensor, as ``tf.summary.scalar``)."""
    return summary(scalar_summary.scalar_pb(tag, np.float32(value), description), step)


def text(tag: str, data: str, step: int | None = None, description: str | None = None) -> bool:
    """Markdown text for the Text dashboard."""
    return summary(text_summary.text_pb(tag, data, description), step)


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W, C)`` uint8 (C = 1, 3 or 4) as PNG bytes.

    >>> encode_png(np.zeros((2, 2, 3), np.uint8))[:4]
    b'\\x89PNG'
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def image(tag: str, data, step: int | None = None, max_outputs: int = 3,
          description: str | None = None) -> bool:
    """Images for the Images dashboard: ``(N, H, W, C)`` uint8, or floats in [0, 1] (as
    ``tf.summary.image``), of which the first ``max_outputs`` are kept."""
    arr = np.asarray(data)
    if arr.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 1) * 255 + 0.5).astype(np.uint8)
    arr = arr[:max_outputs]
    height, width = arr.shape[1:3]
    blobs = [str(width).encode(), str(height).encode()] + [encode_png(a) for a in arr]
    md = image_metadata.create_summary_metadata(display_name=tag, description=description or "")
    return tensor(tag, blobs, step, md)


def graph(graph_def: bytes) -> bool:
    """The op graph (a serialized ``GraphDef``) for the Graphs dashboard, at step 0."""
    writer, _ = _default(0)
    if writer is None:
        return False
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, graph_def=graph_def))
    return True


def session_start(step: int) -> bool:
    """A ``SessionLog.START`` at ``step``: TensorBoard drops what the run logged at ``step``
    and later before this point (a resumed run logs those steps again)."""
    writer, step = _default(step)
    if writer is None:
        return False
    writer.add_event(event_pb2.Event(
        step=step, wall_time=time.time(),
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    return True
