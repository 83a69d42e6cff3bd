"""Files and folders the commands write: checked before anything is written, saved atomically.

* :func:`check_creatable`: can this folder be written (or created)? Creates nothing.
* :func:`save_keras_atomically`: a ``.keras`` file appears whole or not at all.
* :func:`unique_path`: ``photo.jpg``, ``photo_2.jpg``... for outputs with the same name.

Example:
    >>> import tempfile
    >>> missing = check_creatable(os.path.join(tempfile.mkdtemp(), "runs", "wave"), "--log-dir")
    >>> [os.path.basename(path) for path in missing]  # what creating it would make
    ['runs', 'wave']
"""

from __future__ import annotations

import os
import tempfile


def check_creatable(path: str, option: str) -> list[str]:
    """Raise ``ValueError`` unless directory ``path`` exists writable or could be created.

    Creates nothing (an early error must leave nothing behind); returns the
    directories that creating ``path`` would make, outermost first.

    >>> check_creatable("/proc/no/such/dir", "--log-dir")
    Traceback (most recent call last):
    ...
    ValueError: --log-dir '/proc/no/such/dir': cannot create it in '/proc' (not writable); ...
    """
    missing, head = [], os.path.abspath(path)
    while not os.path.exists(head):
        missing.insert(0, head)
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        where = head if not missing else f"inside {head!r}"
        raise ValueError(f"{option} {path!r}: {where} is a file, not a folder; pass a folder path")
    probe = None
    try:  # os.access says yes to root even on read-only mounts: try it for real
        fd, probe = tempfile.mkstemp(prefix=".style_transfer_write_test_", dir=head)
        os.close(fd)
    except OSError:
        place = f"cannot create it in {head!r}" if missing else "the folder is"
        raise ValueError(f"{option} {path!r}: {place} (not writable); pass a folder you can "
                         "write to") from None
    finally:
        if probe:
            os.remove(probe)
    return missing


def save_keras_atomically(model, path: str) -> None:
    """``model.save(path)`` through a temporary file in the same folder, then a rename:
    a reader (or a crash) never sees half a file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def unique_path(directory: str, name: str, taken: set) -> str:
    """``directory/name``, or ``stem_2.ext``, ``stem_3.ext``... if already in ``taken``
    (which it joins).

    >>> taken = set()
    >>> [os.path.basename(unique_path("out", "a.jpg", taken)) for _ in range(3)]
    ['a.jpg', 'a_2.jpg', 'a_3.jpg']
    """
    stem, ext = os.path.splitext(name)
    path, k = os.path.join(directory, name), 2
    while path in taken:
        path, k = os.path.join(directory, f"{stem}_{k}{ext}"), k + 1
    taken.add(path)
    return path
