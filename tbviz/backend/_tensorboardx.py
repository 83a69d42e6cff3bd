"""Event files without TensorFlow: tensorboardX's synchronous events writer.

tensorboardX (lanpa/tensorboardX) writes TensorBoard's record format with the
``crc32c`` package's native checksum where it is installed (the extras install it;
its pure-Python fallback takes about 0.2 s per MB). Its asynchronous
``EventFileWriter`` pickles every event through a ``multiprocessing`` queue, so the
synchronous ``EventsWriter`` is used: an image panel is written once, when logged.

>>> import tempfile, os
>>> from tensorboard.compat.proto import event_pb2
>>> d = tempfile.mkdtemp()
>>> sink = Sink(d)
>>> sink.write(event_pb2.Event(step=1, wall_time=1.0).SerializeToString())
>>> sink.close()
>>> [f.startswith("events.out.tfevents.") for f in os.listdir(d)]
[True]
"""

from __future__ import annotations

import os

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2


class Sink:
    """Serialized ``Event`` s appended to a new event file in ``path``."""

    def __init__(self, path: str):
        os.makedirs(path, exist_ok=True)
        self._writer = EventsWriter(os.path.join(path, "events"), f".{os.getpid()}.tbviz")

    def write(self, event: bytes) -> None:
        self._writer.write_event(event_pb2.Event.FromString(event))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
