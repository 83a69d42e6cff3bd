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
>>> Sink(d).close()  # a second file in the same second: a name of its own
>>> sorted(f.startswith("events.out.tfevents.") for f in os.listdir(d))
[True, True]
"""

from __future__ import annotations

import itertools
import os

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2


# tensorboardX names a file by the second it opens it and the host; two files opened in one
# second by one process (a second fit, a quick test) would get one name, and opening the
# second truncates the first. A number per file keeps every name new; zero-padded, so the
# files of one second sort (as TensorBoard reads them) in the order they were opened.
_FILE_NUMBERS = itertools.count()


class Sink:
    """Serialized ``Event`` s appended to a new event file in ``path``."""

    def __init__(self, path: str):
        os.makedirs(path, exist_ok=True)
        suffix = f".{os.getpid()}.{next(_FILE_NUMBERS):06d}.tbviz"
        self._writer = EventsWriter(os.path.join(path, "events"), suffix)

    def write(self, event: bytes) -> None:
        self._writer.write_event(event_pb2.Event.FromString(event))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
