"""Units of a layer: what one is, choosing the strongest, and the signal a projection starts from.

Shared by the deconvnet (:mod:`tbviz.methods.deconvnet`) and the dataset scan
(:mod:`tbviz.methods.scan`). The choosing is pure NumPy.

Example:
    >>> import numpy as np
    >>> from tbviz.methods.units import top_units
    >>> a = np.zeros((1, 2, 2, 1)); a[0, 1, 0, 0] = 3.0
    >>> top_units(a, k=1)
    [Unit(image_index=0, row=1, col=0, channel=0, value=3.0)]
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import keras
import numpy as np

from tbviz import backend
from tbviz.core.checks import channels as check_channels
from tbviz.core.checks import positive_int

DEFAULT_MAX_BATCH = 32


class Unit(NamedTuple):
    """One activation of a layer: where it is and how strong it is.

    For a layer with a flat ``(batch, features)`` output, ``row`` and ``col`` are 0.
    """

    image_index: int
    row: int
    col: int
    channel: int
    value: float


# --------------------------------------------------------------------------------------------
# Choosing units (pure NumPy)


def top_units(activations, k: int = 9, channels: Sequence[int] | None = None,
              distinct: bool = False) -> list[Unit]:
    """The ``k`` strongest units of a layer's ``activations`` (``(N, H, W, C)`` or ``(N, C)``).

    With ``channels``, the strongest unit of each listed feature map instead, in
    the order given. With ``distinct``, at most one unit per (image, feature map),
    its strongest position: the top-k then shows k different things rather than
    neighbouring positions of one blob (when there are fewer than k such pairs, the
    next strongest units fill the rest). Ties go to the first unit in
    ``(image, row, col, channel)`` order. Non-finite activations are never chosen
    (a channel with no finite value is left out), so fewer than ``k`` units may
    come back.

    >>> a = np.zeros((1, 2, 2, 2)); a[0, 1, 0, 1] = 5.0; a[0, 0, 1, 0] = 3.0
    >>> [tuple(u) for u in top_units(a, k=2)]
    [(0, 1, 0, 1, 5.0), (0, 0, 1, 0, 3.0)]
    >>> [u.channel for u in top_units(a, channels=[1, 0])]
    [1, 0]
    >>> a[0, 1, 1, 1] = 4.0  # a second peak in map 1: distinct skips it
    >>> [tuple(u) for u in top_units(a, k=2, distinct=True)]
    [(0, 1, 0, 1, 5.0), (0, 0, 1, 0, 3.0)]
    """
    a = np.asarray(activations)
    if a.ndim == 2:
        a = a[:, None, None, :]
    if a.ndim != 4:
        raise ValueError(f"activations must have shape (N, H, W, C) or (N, C), got {a.shape}")
    a = np.where(np.isfinite(a), a, -np.inf).astype(np.float64)
    if channels is None and distinct:
        k = positive_int("k", k)
        n, h, w, c = a.shape
        per_map = a.transpose(0, 3, 1, 2).reshape(n, c, h * w)
        where = per_map.argmax(axis=-1)  # first maximum of each (image, map)
        best = np.take_along_axis(per_map, where[..., None], axis=-1)[..., 0]
        # (image, channel) order, stable: ties go to the earlier image, then channel
        order = np.argsort(-best.reshape(-1), kind="stable")[:k]
        picked = []
        for i in order:
            img, ch = divmod(int(i), c)
            if np.isfinite(best[img, ch]):
                r, col = divmod(int(where[img, ch]), w)
                picked.append((img, r, col, ch))
        if len(picked) < k:  # fewer (image, map) pairs than k: fill with the next strongest
            flat = a.reshape(-1)
            taken = set(picked)
            for i in np.argsort(-flat, kind="stable"):
                if len(picked) == k or not np.isfinite(flat[i]):
                    break
                unit = tuple(int(v) for v in np.unravel_index(i, a.shape))
                if unit not in taken:
                    picked.append(unit)
    elif channels is None:
        k = positive_int("k", k)
        flat = a.reshape(-1)
        order = np.argsort(-flat, kind="stable")[:k]
        picked = [np.unravel_index(i, a.shape) for i in order if np.isfinite(flat[i])]
    else:
        picked = []
        for c in check_channels(channels, a.shape[-1]):
            fmap = a[..., c]
            i = int(np.argmax(fmap))  # first maximum, as for the top-k
            if np.isfinite(fmap.reshape(-1)[i]):
                picked.append(np.unravel_index(i, fmap.shape) + (c,))
    return [Unit(int(n), int(r), int(c), int(ch), float(a[n, r, c, ch]))
            for n, r, c, ch in picked]


def top_channels(activations, k: int = 9) -> list[int]:
    """The ``k`` feature maps with the highest mean activation (non-finite values ignored).

    ``activations`` is ``(N, H, W, C)`` or ``(N, C)``; ties go to the lower channel.

    >>> a = np.zeros((2, 3, 3, 4)); a[..., 2] = 1.0; a[0, 0, 0, 0] = 5.0
    >>> top_channels(a, k=2)  # means: 5/18, 0, 1, 0
    [2, 0]
    """
    k = positive_int("k", k)
    a = np.asarray(activations, dtype=np.float64)
    a = a.reshape(-1, a.shape[-1])
    finite = np.isfinite(a)
    count = finite.sum(0)
    mean = np.where(finite, a, 0.0).sum(0) / np.maximum(count, 1)
    mean = np.where(count > 0, mean, -np.inf)
    return [int(c) for c in np.argsort(-mean, kind="stable")[:k]]


# --------------------------------------------------------------------------------------------
# Where units are projected from (pure NumPy)


def unit_table(units, output_shape, n_images: int | None = None,
               layer: str | None = None) -> np.ndarray:
    """``units`` as an integer table ``(K, 4)``: image_index, row, col, channel.

    ``units`` are :class:`Unit` s or ``(image_index, row, col, channel)`` tuples
    (``(image_index, channel)`` for a layer with a flat output); ``output_shape``
    is the layer's output shape without the batch, ``(H, W, C)`` or ``(C,)``. A
    unit outside it, or an image index past ``n_images``, is a ``ValueError``
    naming the unit, the layer and the range.

    >>> unit_table([Unit(1, 0, 2, 3, 9.5), (0, 1, 1, 0)], (2, 3, 4), n_images=2).tolist()
    [[1, 0, 2, 3], [0, 1, 1, 0]]
    >>> unit_table([(0, 5)], (8,)).tolist()  # a flat layer: (image_index, channel)
    [[0, 0, 0, 5]]
    """
    shape = tuple(output_shape)
    flat = len(shape) == 1
    h, w, c = (1, 1, shape[0]) if flat else shape
    owner = "the layer" if layer is None else f"layer {layer!r}"
    table = []
    for i, u in enumerate(units):
        t = tuple(u)
        if len(t) == 5:  # a Unit: drop the value
            t = t[:4]
        if flat and len(t) == 2:
            t = (t[0], 0, 0, t[1])
        if len(t) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in t):
            form = "(image_index, channel)" if flat else "(image_index, row, col, channel)"
            raise ValueError(f"unit #{i} {u!r} must be a Unit or an integer tuple {form}")
        limits = (("image_index", n_images), ("row", h), ("col", w), ("channel", c))
        for (name, limit), v in zip(limits, t):
            if limit is not None and not 0 <= v < limit:
                raise ValueError(
                    f"unit #{i} {tuple(int(x) for x in t)}: {name} {v} out of range "
                    f"0..{limit - 1}; {owner} has output shape (N,) + {shape}"
                    + (f" and {n_images} images were given" if n_images is not None else ""))
        table.append(t)
    return np.array(table, dtype=np.int64).reshape(-1, 4)


def one_hot(out, pos):
    """A mask like ``out`` (``(B, H, W, C)`` or ``(B, C)``) with a single 1 per row, at
    ``pos[b] = (row, col, channel)``."""
    channel = keras.ops.one_hot(pos[:, 2], out.shape[-1], dtype=out.dtype)
    if len(out.shape) == 2:
        return channel
    row = keras.ops.one_hot(pos[:, 0], keras.ops.shape(out)[1], dtype=out.dtype)
    col = keras.ops.one_hot(pos[:, 1], keras.ops.shape(out)[2], dtype=out.dtype)
    return keras.ops.einsum("bi,bj,bk->bijk", row, col, channel)


def project_rows(forward, x, pos):
    """Inside a probe: each row of ``x`` projected back from its one unit ``pos[b]`` of
    ``forward(x)`` (the layer's output, its rule entered inside ``forward``).

    The signal is the layer output with every other unit zeroed, as in the paper. Rows do
    not mix in inference mode, so one batched backward pass gives every projection.
    """
    out, pullback = backend.vjp(forward, x)
    return pullback(out * one_hot(out, pos))[0]


def project_shared(forward, x, pos):
    """Inside a probe: several units ``pos`` of one row ``x`` (``(1, ...)``) projected after
    one forward pass, their backward passes vectorized (:func:`tbviz.backend.pullback_batched`).
    """
    out, pullback = backend.vjp(forward, x)
    k = keras.ops.shape(pos)[0]
    rows = keras.ops.repeat(out, k, axis=0)
    signals = keras.ops.expand_dims(rows * one_hot(rows, pos), 1)  # (K, 1, ...): one per unit
    return backend.pullback_batched(pullback, signals)[0][:, 0]
