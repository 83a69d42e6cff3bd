"""Training statistics the histogram callback logs: dead ReLUs and how far a step moved weights.

Pure functions over arrays; no TensorBoard.

Example:
    >>> import numpy as np
    >>> from tbviz.stats import zero_fractions, update_ratio
    >>> zero_fractions(np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]))
    (0.6666666666666666, 0.6666666666666666)
    >>> update_ratio([3.0, 4.0], [3.0, 4.5])
    0.1
"""

from __future__ import annotations

import numpy as np


def zero_fractions(activation) -> tuple[float, float]:
    """``(fraction of exactly-zero outputs, fraction of dead units)`` of one layer output.

    A unit (channel: the last axis) is dead when it is exactly zero for every
    image and position of the probe batch.
    """
    a = np.asarray(activation)
    zero = a == 0
    flat = zero.reshape(-1, a.shape[-1]) if a.ndim > 1 else zero.reshape(-1, 1)
    return float(zero.mean()), float(flat.all(axis=0).mean())


def update_ratio(before, after) -> float:
    """``||after - before|| / ||before||``: how far one step moved the weights, relative
    to their size (Karpathy's rule of thumb: about 1e-3 is healthy)."""
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan")
