"""Argument checks shared by the pure functions, the callbacks and the style pipeline.

One check per concept, so that one kind of mistake gets one kind of message:

>>> positive_int("k", 9)
9
>>> positive_int("every_n_steps", None, allow_none=True) is None
True
>>> positive_pair("patch", 8)
(8, 8)
>>> channels([2, 0], 4, layer="conv1")
[2, 0]
>>> number("tv_weight", 1e-6)
1e-06
"""

from __future__ import annotations

import math

import numpy as np


def _is_int(value) -> bool:
    # Booleans are ints to Python, but True as "k" or "channel" is always a mistake.
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value, allow_none: bool = False):
    """``value`` as an ``int`` if it is a positive integer (``None`` too where allowed),
    else a ``ValueError`` naming ``name``. Booleans are not integers here.

    >>> positive_int("max_batch", 0)
    Traceback (most recent call last):
    ...
    ValueError: max_batch must be a positive integer, got 0
    """
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def positive_pair(name: str, value) -> tuple[int, int]:
    """A positive integer or a pair of them as ``(height, width)``, else a ``ValueError``.

    >>> positive_pair("stride", (4, 2))
    (4, 2)
    """
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair (height, width) of them, "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def channels(value, n_channels: int, layer: str | None = None) -> list[int]:
    """Feature-map indices: an int or a non-empty list of ints in ``0..n_channels - 1``.

    Returns a list of ``int`` s (one for a single index); a ``ValueError`` names
    the first bad index, the layer and the choices.

    >>> channels(3, 8)
    [3]
    >>> channels([1, 8], 8, layer="conv2")
    Traceback (most recent call last):
    ...
    ValueError: channel 8 is out of range: layer 'conv2' has 8 channels, choose from 0..7
    """
    values = [value] if np.ndim(value) == 0 else list(value)
    if not values or not all(_is_int(c) for c in values):
        raise ValueError(f"channels must be an int or a non-empty list of ints, got {value!r}")
    for c in values:
        if not 0 <= c < n_channels:
            owner = "the layer" if layer is None else f"layer {layer!r}"
            raise ValueError(f"channel {c!r} is out of range: {owner} has {n_channels} "
                             f"channels, choose from 0..{n_channels - 1}")
    return [int(c) for c in values]


def number(name: str, value, minimum: float = 0.0) -> float:
    """``value`` as a ``float`` if it is a finite number ``>= minimum``, else a ``ValueError``.

    >>> number("lr", 0.05)
    0.05
    >>> number("octave_scale", 0.5, minimum=1.0)
    Traceback (most recent call last):
    ...
    ValueError: octave_scale must be a finite number >= 1.0, got 0.5
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}") from None
    if not math.isfinite(v) or v < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return v


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
