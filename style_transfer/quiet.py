"""TensorFlow's start-up lines kept off the terminal, and nothing else (only where
TensorFlow is Keras' backend: elsewhere it is never imported).

TensorFlow 2.20+ logs its device discovery from C++ (oneDNN, "Could not find cuda
drivers", "failed call to cuInit", ...) before it has read ``TF_CPP_MIN_LOG_LEVEL``,
straight to file descriptor 2, where ``warnings`` filters and ``logging`` levels
cannot reach. :func:`import_tensorflow` imports TensorFlow and lists its devices
with that descriptor captured, then writes back every captured line except
TensorFlow's own log lines of a severity below the level:

* ``TF_CPP_MIN_LOG_LEVEL`` set by the user (0 info, 1 warning, 2 error, 3 fatal):
  exactly that level, so ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything;
* unset: none of the start-up lines, and ``TF_CPP_MIN_LOG_LEVEL=2`` for the rest of
  the process (TensorFlow's later C++ errors still show).

Python output of the same moment (a warning, a traceback) is written back in order.

Example:
    >>> keras_backend() in ("tensorflow", "jax", "torch", "numpy", "openvino")
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile

#: A line of TensorFlow's C++ logging: absl's ``I0000 00:00:... file.cc:12]``, the older
#: ``2024-01-01 00:00:00.0: I file.cc:12]``, or absl's note about logging before its start.
LOG_LINE = re.compile(r"(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]"
                      r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<old>[IWEF]) \S+:\d+\]"
                      r"|(?P<note>WARNING): All log messages before absl::InitializeLog")
SEVERITIES = "IWEF"


def severity(line: str) -> int | None:
    """0..3 for a TensorFlow C++ log line (info, warning, error, fatal), else ``None``.

    >>> severity("I0000 00:00:1796118940.240009   11632 port.cc:153] oneDNN custom operations")
    0
    >>> severity("E0000 00:00:1796118962.676640   11819 cuda_platform.cc:52] failed call to cuInit")
    2
    >>> severity("UserWarning: something of Python's") is None
    True
    """
    found = LOG_LINE.match(line)
    if not found:
        return None
    letter = found.group("absl") or found.group("old") or found.group("note")[0]
    return SEVERITIES.index(letter)


@contextlib.contextmanager
def filtered_stderr(min_level: int):
    """Capture file descriptor 2 in the block; write back all but TensorFlow log lines
    below ``min_level``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                level = severity(line)
                if level is None or level >= min_level:
                    sys.stderr.write(line)
            sys.stderr.flush()


def keras_backend() -> str:
    """The backend Keras will choose, found without importing Keras (which imports its
    backend): ``KERAS_BACKEND``, else ``keras.json``'s ``"backend"`` in ``KERAS_HOME``
    (default ``~/.keras``), else TensorFlow, as Keras reads them. Keras' own answer once
    it is imported."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def import_tensorflow():
    """``import tensorflow`` without its start-up lines (see the module docstring)."""
    if "tensorflow" in sys.modules:  # started already: its lines are out, its level is set
        return sys.modules["tensorflow"]
    user = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip()
    min_level = int(user) if user.isdigit() else len(SEVERITIES)
    if not user.isdigit():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with filtered_stderr(min_level):
        import tensorflow as tf

        tf.config.list_physical_devices()  # where "failed call to cuInit" comes from
    return tf
