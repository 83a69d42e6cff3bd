"""What activation maximization raises: objectives that combine, as Lucid's
(``lucid/optvis/objectives.py``) and Olah et al. 2017 describe them.

An :class:`Objective` scores each image of a batch from the outputs of the layers it reads
(each read before a final ReLU or softmax, see
:func:`tbviz.core.probes.before_activation`: a unit silent on the start image still gets a
gradient, a class's logit is raised, not its probability). They add, subtract and multiply,
with each other and with numbers: ``channel("conv3", 4) + 0.5 * channel("conv4", 1)``,
``channel("conv3", 4) * neuron("conv3", 7)``, ``channel("conv3", 2) + 10 * diversity("conv3")``.

=================================  ============================================================
objective                          score of image ``i``
=================================  ============================================================
``channel(layer, n)``              mean over positions of channel ``n`` (``n[i]`` for a list)
``neuron(layer, n, x=, y=)``       channel ``n`` at one position (default the centre)
``direction(layer, v)``            mean over positions of ``a . v`` (``v[i]`` for a ``(K, C)``)
``diversity(layer)``               ``-sum_{j != i} cos(G_i, G_j) / B``, ``G`` the Gram matrix
                                   of the layer's channels over positions (Lucid's diversity:
                                   higher when the batch's images differ in style)
=================================  ============================================================

An objective has ``rows``: 1, or ``K`` when it was given ``K`` channels or directions (one per
image of the batch); objectives combine when their rows agree or one has 1 row.

>>> from tbviz.methods.objectives import channel, diversity
>>> obj = channel("conv", [0, 3]) + 0.1 * diversity("conv")
>>> obj.rows, obj.layers, str(obj)
(2, ('conv',), 'channel(conv, [0, 3]) + 0.1 * diversity(conv)')
"""

from __future__ import annotations

import numbers

import keras
import numpy as np

from tbviz.core.checks import channels as channel_indices


class Objective:
    """A score per image from the layer outputs ``acts`` (``{layer: (B, ...) tensor}``):
    ``objective(acts)`` is ``(B,)`` float32. ``check(shapes)`` validates it against the
    model's ``{layer: output shape}`` and raises a ``ValueError`` naming what is wrong."""

    def __init__(self, layers, fn, rows: int, name: str, check=None, key=None,
                 per_image: bool = False):
        self.layers = tuple(dict.fromkeys(layers))
        self._fn, self.rows, self.name = fn, int(rows), name
        #: Given a list (of channels, directions): one image per entry, even for one entry.
        self.per_image = bool(per_image)
        self._check = check or (lambda shapes: None)
        self.key = key if key is not None else name  # what a compiled step is cached under

    def __call__(self, acts):
        return self._fn(acts)

    def check(self, shapes: dict) -> None:
        self._check(shapes)

    def __str__(self):
        return self.name

    __repr__ = __str__

    # -- arithmetic --------------------------------------------------------------------------
    def _join(self, other, symbol, op, swap=False):
        if isinstance(other, numbers.Number) and not isinstance(other, bool):
            c = float(other)
            a, b = (f"{c:g}", self._paren(symbol)) if swap else (self._paren(symbol), f"{c:g}")
            fn = (lambda acts: op(c, self(acts))) if swap else (lambda acts: op(self(acts), c))
            return Objective(self.layers, fn, self.rows, f"{a} {symbol} {b}", self._check,
                             ("op", symbol, swap, self.key, c), self.per_image)
        if not isinstance(other, Objective):
            return NotImplemented
        if self.rows != other.rows and 1 not in (self.rows, other.rows):
            raise ValueError(f"objectives {self} ({self.rows} rows) and {other} ({other.rows} "
                             "rows) score different batch sizes; combine objectives of one "
                             "row or of the same rows")
        first, second = (other, self) if swap else (self, other)

        def check(shapes):
            first.check(shapes)
            second.check(shapes)
        return Objective(first.layers + second.layers,
                         lambda acts: op(first(acts), second(acts)), max(self.rows, other.rows),
                         f"{first._paren(symbol)} {symbol} {second._paren(symbol)}", check,
                         ("op", symbol, first.key, second.key),
                         self.per_image or other.per_image)

    def _paren(self, symbol):
        """This objective's name, parenthesized where a ``*`` would bind it otherwise."""
        loose = any(f" {s} " in self.name for s in "+-")
        return f"({self.name})" if symbol in "*/" and loose else self.name

    def __add__(self, other):
        return self._join(other, "+", keras.ops.add)

    def __radd__(self, other):
        return self._join(other, "+", keras.ops.add, swap=True)

    def __sub__(self, other):
        return self._join(other, "-", keras.ops.subtract)

    def __rsub__(self, other):
        return self._join(other, "-", keras.ops.subtract, swap=True)

    def __mul__(self, other):
        return self._join(other, "*", keras.ops.multiply)

    def __rmul__(self, other):
        return self._join(other, "*", keras.ops.multiply, swap=True)

    def __truediv__(self, other):
        if not isinstance(other, numbers.Number):
            return NotImplemented
        return self._join(other, "/", keras.ops.divide)

    def __neg__(self):
        return -1 * self


def _shape_of(shapes, layer, what, ranks=(2, 4)):
    if layer not in shapes:
        raise ValueError(f"{what}: layer {layer!r} does not run when the model is called")
    shape = shapes[layer]
    if len(shape) not in ranks:
        fitting = [p for p, s in shapes.items() if len(s) in ranks]
        raise ValueError(f"{what}: layer {layer!r} has output shape {shape}; it needs a "
                         f"{' or '.join(f'{r}-D' for r in ranks)} output. Layers that fit: "
                         f"{', '.join(fitting) or '(none)'}")
    return shape


def _pick(values, channels):
    """Row ``i`` of ``values`` ``(B, C)`` at ``channels[i]`` (or at ``channels`` for all)."""
    if np.ndim(channels) == 0:
        return values[:, int(channels)]
    onehot = np.eye(values.shape[-1], dtype=np.float32)[np.asarray(channels)]
    return keras.ops.sum(keras.ops.multiply(values, onehot), axis=-1)


def _float(a):
    return keras.ops.cast(a, "float32")  # float16 layers too


def _channels_check(layer, n, what):
    def check(shapes):
        shape = _shape_of(shapes, layer, what)
        channel_indices(n if np.ndim(n) else int(n), shape[-1], layer)
    return check


def _label(n):
    return str(list(map(int, n))) if np.ndim(n) else str(int(n))


def _indices(n):
    """``n`` as an int or a list of ints (checked), its shape kept: 1 row or one per image."""
    checked = channel_indices(n, np.iinfo(np.int32).max)  # the type; the range at check()
    return checked if np.ndim(n) else checked[0]


def channel(layer: str, n) -> Objective:
    """The mean over positions of channel ``n`` of ``layer`` (a dense layer: unit ``n``);
    ``n`` a list: image ``i`` raises channel ``n[i]`` (Lucid's ``channel``).

    >>> channel("conv2", 5)
    channel(conv2, 5)
    """
    n = _indices(n)

    def fn(acts):
        a = _float(acts[layer])
        return _pick(keras.ops.mean(a, axis=[1, 2]) if len(a.shape) == 4 else a, n)
    return Objective([layer], fn, len(n) if np.ndim(n) else 1, f"channel({layer}, {_label(n)})",
                     _channels_check(layer, n, "channel"), per_image=np.ndim(n) > 0)


def neuron(layer: str, n, x: int | None = None, y: int | None = None) -> Objective:
    """Channel ``n`` of ``layer`` at one position: column ``x``, row ``y`` (default the centre,
    ``(h // 2, w // 2)``), as Lucid's ``neuron``; a dense layer's unit ``n``.

    >>> neuron("conv2", [1, 2], x=3, y=4).rows
    2
    """
    n = _indices(n)

    def fn(acts):
        a = _float(acts[layer])
        if len(a.shape) == 4:
            row = a.shape[1] // 2 if y is None else y
            col = a.shape[2] // 2 if x is None else x
            a = a[:, row, col]
        return _pick(a, n)

    def check(shapes):
        _channels_check(layer, n, "neuron")(shapes)
        shape = shapes[layer]
        for name, value, size in (("y", y, shape[1] if len(shape) == 4 else None),
                                  ("x", x, shape[2] if len(shape) == 4 else None)):
            if value is not None and (size is None or not 0 <= value < size):
                raise ValueError(f"neuron: {name}={value} is outside layer {layer!r}'s output "
                                 f"{tuple(shape)}")
    where = "" if x is None and y is None else f", x={x}, y={y}"
    return Objective([layer], fn, len(n) if np.ndim(n) else 1,
                     f"neuron({layer}, {_label(n)}{where})", check, per_image=np.ndim(n) > 0)


def direction(layer: str, vector) -> Objective:
    """The mean over positions of the dot product of ``layer``'s activations with ``vector``
    (``(C,)``, or ``(K, C)``: one direction per image), Lucid's ``direction``: a feature that
    is a mix of channels, as Olah et al. find in many.

    >>> direction("conv2", [[1.0, 0.0], [0.0, 1.0]]).rows
    2
    """
    v = np.asarray(vector, np.float32)
    if v.ndim not in (1, 2) or not np.all(np.isfinite(v)):
        raise ValueError(f"direction needs a finite vector (C,) or one per image (K, C); got "
                         f"shape {v.shape}")

    def fn(acts):
        a = _float(acts[layer])
        if len(a.shape) == 4:
            a = keras.ops.mean(a, axis=[1, 2])
        return keras.ops.sum(keras.ops.multiply(a, v if v.ndim == 2 else v[None]), axis=-1)

    def check(shapes):
        shape = _shape_of(shapes, layer, "direction")
        if v.shape[-1] != shape[-1]:
            raise ValueError(f"direction: the vector has {v.shape[-1]} entries but layer "
                             f"{layer!r} has {shape[-1]} channels")
    return Objective([layer], fn, len(v) if v.ndim == 2 else 1, f"direction({layer})", check,
                     ("direction", layer, v.tobytes(), v.shape), per_image=v.ndim == 2)


def diversity(layer: str) -> Objective:
    """Lucid's diversity term: for image ``i`` of a batch of ``B``, ``-sum_{j != i}
    <G_i, G_j> / (|G_i| |G_j| B)``, ``G`` the Gram matrix of ``layer``'s channels over its
    positions. Added to a channel objective (``channel(l, n) + w * diversity(l)``) it makes
    the batch's images different ways of raising the channel. Batches of one score 0.

    >>> diversity("conv2").rows
    1
    """
    def fn(acts):
        a = _float(acts[layer])
        b = keras.ops.shape(a)[0]
        flat = keras.ops.reshape(a, (b, -1, a.shape[-1]))
        gram = keras.ops.reshape(keras.ops.einsum("bpc,bpd->bcd", flat, flat), (b, -1))
        gram = gram / (keras.ops.norm(gram, axis=-1, keepdims=True) + 1e-12)
        sims = keras.ops.matmul(gram, keras.ops.transpose(gram))
        others = keras.ops.sum(sims, axis=-1) - keras.ops.diagonal(sims)
        return -others / keras.ops.cast(b, "float32")

    return Objective([layer], fn, 1, f"diversity({layer})",
                     lambda shapes: _shape_of(shapes, layer, "diversity", ranks=(4,)))


def as_objective(layer, channel_arg, unit: str) -> Objective:
    """The objective of ``maximize_activation(model, layer, channel, unit=...)``: ``layer``
    itself when it is an :class:`Objective` (``channel`` must then be ``None``), else
    :func:`channel` (``unit="mean"``) or :func:`neuron` at the centre (``unit="center"``)."""
    if isinstance(layer, Objective):
        if channel_arg is not None:
            raise ValueError(f"channel is part of the objective {layer}; pass channel=None")
        return layer
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a layer path or an objective (tbviz.objectives), got "
                         f"{layer!r}")
    if channel_arg is None:
        raise ValueError(f"which channel(s) of {layer!r}? pass channel=, or an objective")
    if unit == "mean":
        return channel(layer, channel_arg)
    if unit == "center":
        return neuron(layer, channel_arg)
    raise ValueError(f"unknown unit {unit!r}; choose one of mean, center")
