"""Argument checks shared by the pure functions and the callbacks.

>>> positive_int("k", 9)
9
>>> positive_int("every_n_steps", None, allow_none=True) is None
True
"""

from __future__ import annotations

import math

import numpy as np


def positive_int(name: str, value, allow_none: bool = False):
    """``value`` as an ``int`` if it is a positive integer (``None`` too where allowed),
    else a ``ValueError`` naming ``name``. Booleans are not integers here."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def value_range(value) -> tuple[float, float]:
    """``(low, high)`` as floats if finite with ``low < high``, else a ``ValueError``.

    >>> value_range((0, 255))
    (0.0, 255.0)
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be (low, high), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"value_range must be finite with low < high, got {value!r}")
    return lo, hi
