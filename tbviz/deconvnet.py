"""Zeiler & Fergus' deconvnet: strongest activations projected back to pixel space.

Three functions of a model (arrays in, arrays out, no TensorBoard):

* :func:`strongest` - the k strongest units of a layer over some images (or the
  strongest unit of each of some feature maps, the view of the paper's Fig. 3);
* :func:`project` - each unit alone, all other units of its layer zeroed,
  projected back to input pixels with the ``"deconvnet"``, ``"guided"`` or
  ``"gradient"`` backward rule (see :mod:`tbviz.backward_rules`);
* :func:`patches` - the input crop under each unit's receptive field, to show
  beside its projection;
* :func:`scan` (in :mod:`tbviz.scan`) - each feature map's strongest units over a
  whole dataset in one streaming pass, with the crops to project them from.

A projection is autodiff with a swapped ReLU rule: convolutions run their
transposed filters and max-pooling routes the signal to the recorded argmax
(the paper's switches). The signal that starts the projection is the unit's own
activation, so values are raw (not normalized) and scale with the activation.

All requested units are projected in batches by ``tf.function`` s traced once
per :class:`Projector`; projectors are cached per model, so repeated calls
(every epoch, say) never trace again. Three things keep the work small:

* one row per unit, a batch of rows per call (at most ``max_batch``), the
  forward pass stopping at the unit's layer (a sub-model up to it, where the
  model's graph allows: tracing covers only the layers a projection goes through);
* a unit only depends on the input under its receptive field, so where the
  field is known (see :mod:`tbviz.receptive_field`) its row is a crop of the
  image aligned to the layer's total stride, with the image's own padding at
  real borders, and the result is pasted back into a zero canvas: the same
  numbers for a fraction of the work;
* where all units of an image read the same row (the whole image, or a field
  about as large as it), they share one forward pass and their backward passes
  run as one vectorized batch, where pfor can vectorize every op (else they go
  one row each: no slow while-loop fallback). That costs one more trace per such
  layer: ``Projector(vectorize=False)`` (the deconvnet callback's default) skips it.

Which crop each unit gets and which units go into which call are pure NumPy
functions, :func:`crops` and :func:`batch_plan`, like :func:`top_units`.

Example:
    >>> import numpy as np, keras
    >>> from tbviz import deconvnet
    >>> model = keras.Sequential([
    ...     keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
    ...     keras.layers.MaxPooling2D(2, name="pool1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv2")])
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    >>> units = deconvnet.strongest(model, images, "conv2", k=3)
    >>> len(units), units[0]._fields
    (3, ('image_index', 'row', 'col', 'channel', 'value'))
    >>> deconvnet.project(model, images, "conv2", units).shape
    (3, 16, 16, 3)
    >>> deconvnet.patches(model, images, "conv2", [(0, 3, 3, 0)])[0].shape  # the 8x8 field
    (8, 8, 3)
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from tbviz import _probe
from tbviz import receptive_field as rf
from tbviz.backward_rules import backward_rule, check_rule, gradients
from tbviz.checks import channels as check_channels
from tbviz.checks import positive_int
from tbviz.layers import check_images, check_layers, forward_to

__all__ = ["Unit", "Projector", "projector", "strongest", "top_units", "top_channels",
           "unit_table", "crops", "batch_plan", "project", "patches", "windows", "support_window",
           "scan", "Scan"]

log = logging.getLogger(__name__)

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


def crops(table, field, image_size) -> tuple[np.ndarray, np.ndarray]:
    """The input crop each unit of ``table`` is projected from, and where the unit is in it.

    ``table`` is a :func:`unit_table`; ``field`` the layer's receptive field
    ``(rows, cols)`` (see :func:`tbviz.receptive_field.receptive_field`), or
    ``None`` for whole images; ``image_size`` is ``(height, width)``. Returns
    ``boxes`` ``(K, 4)``: top, height, left and width of each crop, and
    ``positions`` ``(K, 3)``: the unit's row, col and channel in the layer output
    computed from its crop.

    Along an axis where one crop length reproduces any unit exactly
    (:func:`~tbviz.receptive_field.crop_plan`) every unit gets that length, so
    units batch together. Where the field is about as large as the image, units
    of one image get the union of their own crops
    (:func:`~tbviz.receptive_field.unit_crop`), so that they share one forward
    pass (see :func:`batch_plan`). Crops start at multiples of the layer's stride.

    >>> from tbviz.receptive_field import Axis
    >>> axis = Axis(size=5, jump=1, start=-2, length=16, image_length=16)  # two 'same' 3x3
    >>> boxes, positions = crops([(0, 0, 0, 3), (1, 9, 4, 0)], (axis, axis), (16, 16))
    >>> boxes.tolist(), positions.tolist()
    ([[0, 5, 0, 5], [7, 5, 2, 5]], [[0, 0, 3], [2, 2, 0]])
    >>> crops([(0, 9, 4, 0)], None, (16, 16))[0].tolist()  # no field: the whole image
    [[0, 16, 0, 16]]
    """
    table = np.asarray(table, np.int64).reshape(-1, 4)
    positions = table[:, 1:].copy()
    if field is None:
        height, width = image_size[:2]
        return np.tile(np.array([0, height, 0, width], np.int64), (len(table), 1)), positions
    boxes = np.zeros((len(table), 4), np.int64)
    for a, (axis, units) in enumerate(zip(field, (table[:, 1], table[:, 2]))):
        length = rf.crop_plan(axis)
        if length is not None:
            starts = np.array([rf.crop_start(axis, i, length) for i in units], np.int64)
            ends = starts + length
        else:  # a field about as large as the image: one crop per image, the union
            own = np.array([rf.unit_crop(axis, i) for i in units], np.int64).reshape(-1, 2)
            starts, ends = own[:, 0], own[:, 0] + own[:, 1]
            for image in np.unique(table[:, 0]):
                rows = table[:, 0] == image
                starts[rows], ends[rows] = starts[rows].min(), ends[rows].max()
        boxes[:, 2 * a], boxes[:, 2 * a + 1] = starts, ends - starts
        positions[:, a] -= starts // axis.jump
    return boxes, positions


def batch_plan(table, boxes, max_batch: int, share: bool = True) -> list[tuple[bool, np.ndarray]]:
    """Which units go into which call: ``[(shared, indices), ...]``, each unit once.

    Units that read the same input (image and crop box of :func:`crops`) share one
    forward pass: with ``share``, each such group, cut into runs of ``max_batch``,
    is one call on one row whose backward passes are vectorized (``shared=True``).
    Every other unit is a row of its own, and rows of one crop size are batched,
    at most ``max_batch`` to a call.

    >>> table = [(0, 1, 1, 0), (1, 1, 1, 0), (0, 2, 2, 1)]
    >>> boxes = [(0, 8, 0, 8)] * 3
    >>> [(shared, ks.tolist()) for shared, ks in batch_plan(table, boxes, max_batch=32)]
    [(True, [0, 2]), (False, [1])]
    >>> [(shared, ks.tolist()) for shared, ks in batch_plan(table, boxes, 2, share=False)]
    [(False, [0, 2]), (False, [1])]
    """
    table = np.asarray(table, np.int64).reshape(-1, 4)
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    max_batch = positive_int("max_batch", max_batch)
    same_input: dict = {}
    for k, (image, box) in enumerate(zip(table[:, 0], boxes)):
        same_input.setdefault((int(image),) + tuple(int(v) for v in box), []).append(k)
    plan, by_size = [], {}
    for (_, _, height, _, width), ks in same_input.items():
        if share and len(ks) > 1:
            plan += [(True, np.array(ks[i:i + max_batch])) for i in range(0, len(ks), max_batch)]
        else:
            by_size.setdefault((height, width), []).extend(ks)
    for ks in by_size.values():
        plan += [(False, np.array(ks[i:i + max_batch])) for i in range(0, len(ks), max_batch)]
    return plan


# --------------------------------------------------------------------------------------------
# The projector: traced functions for one model, a set of layers and a rule


class Projector:
    """The traced functions that find and project units of ``layers`` of ``model``.

    Per image shape, one ``tf.function`` gives all layers' activations; per layer
    one projects a batch of rows, one unit each, and one several units of a single
    row (their forward pass shared, their backward passes vectorized), each from
    receptive-field crops of any size or from whole images. What goes where is
    planned by :func:`crops` and :func:`batch_plan`. The graphs read the live
    weights, so one projector serves a whole training run; :meth:`prepare` traces
    everything up front and ``trace_count`` counts the traces. ``vectorize=False``
    never shares a forward pass: one trace less per layer whose units share their
    image, for a slower projection of those units (each runs its own forward pass).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1)),
    ...                       keras.layers.Conv2D(2, 3, activation="relu", name="c")])
    >>> p = Projector(m, ["c"])
    >>> x = np.ones((1, 8, 8, 1), "float32")
    >>> p.project(x, {"c": [(0, 2, 2, 0)]})["c"].shape
    (1, 8, 8, 1)
    >>> _ = p.project(x, {"c": [(0, 3, 3, 1), (0, 0, 0, 0)]}); p.trace_count
    2
    """

    def __init__(self, model, layers: Iterable[str], rule: str = "deconvnet",
                 vectorize: bool = True):
        self._model = weakref.ref(model)  # the cache is keyed by the model: no cycle
        self.model_name = model.name
        self.layers = tuple(check_layers(model, layers))
        if not self.layers:
            raise ValueError("give at least one layer")
        self.rule = check_rule(rule)
        self.vectorize = bool(vectorize)
        self.trace_count = 0
        self._acts: dict = {}     # image shape -> tf.function
        self._forwards: dict = {}  # tuple of layers -> forward pass stopping at the deepest
        self._project: dict = {}  # (layer, image shape or None for crops, shared) -> fn
        self._fields: dict = {}   # (layer, image shape) -> (Axis, Axis) or None
        self._whole: set = set()  # (layer, image shape) the model cannot crop
        self._cropped: set = set()  # ... and those whose crops have run once
        self._unshared: set = set()  # keys of _project whose backward pfor cannot vectorize

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this projector no longer exists")
        return model

    def check_images(self, images, name: str = "images") -> np.ndarray:
        """``images`` as float32 ``(N, H, W, C)`` fitting the model (``ValueError`` if not)."""
        return check_images(self.model, images, name=name)

    # -- activations ----------------------------------------------------------------------------
    def _acts_fn(self, image_shape):
        fn = self._acts.get(image_shape)
        if fn is None:
            @_probe.probe_function([tf.TensorSpec((None,) + image_shape, tf.float32)])
            def fn(x):
                self.trace_count += 1
                seen = self._forward(self.layers)(x)
                for path in self.layers:
                    self._check_output(path, seen, x)
                return {path: seen[path] for path in self.layers}

            self._acts[image_shape] = fn
        return fn

    def _forward(self, layers: tuple):
        """``x -> {layer: output}`` stopping at the deepest of ``layers`` where the model's
        graph allows (:func:`tbviz.layers.forward_to`), so a trace covers only the layers a
        projection goes through; built once per set of layers."""
        if layers not in self._forwards:
            self._forwards[layers] = forward_to(self.model, layers)
        return self._forwards[layers]

    def _check_output(self, path, seen, x):
        if path not in seen:
            raise ValueError(f"layer {path!r} did not run when model {self.model_name!r} was "
                             "called on images; choose a layer on the path from the image input")
        out = seen[path]
        if not tf.is_tensor(out) or out.shape.rank not in (2, 4):
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"layer {path!r} outputs {shape}; projections need an (N, H, W, C) "
                             "or (N, features) output")
        if tf.gradients(tf.reduce_sum(tf.cast(out, tf.float32)), x)[0] is None:
            raise ValueError(f"layer {path!r} does not depend on the image input of model "
                             f"{self.model_name!r}; choose a layer downstream of it")

    def output_shapes(self, image_shape) -> dict[str, tuple]:
        """Each layer's output shape without batch for images of ``image_shape`` (traces once)."""
        fn = self._acts_fn(tuple(int(d) for d in image_shape))
        outs = fn.get_concrete_function().structured_outputs
        return {path: tuple(outs[path].shape[1:]) for path in self.layers}

    def activations(self, images) -> dict[str, np.ndarray]:
        """``{layer: activations}`` of every layer for ``images`` (inference mode)."""
        images = self.check_images(images)
        out = self._acts_fn(images.shape[1:])(images)
        return {path: out[path].numpy() for path in self.layers}

    # -- units and where they are ---------------------------------------------------------------
    def unit_table(self, layer: str, image_shape, units, n_images: int | None = None
                   ) -> np.ndarray:
        """:func:`unit_table` of ``units`` of ``layer`` for images of ``image_shape``."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} is not among this projector's layers: "
                             f"{', '.join(self.layers)}")
        shape = self.output_shapes(image_shape)[layer]
        return unit_table(units, shape, n_images, layer)

    def field(self, layer: str, image_shape):
        """Receptive field ``(rows, cols)`` of ``layer`` for ``image_shape``, or None (whole image)."""
        key = (layer, tuple(image_shape[:2]))
        if key not in self._fields:
            self._fields[key] = rf.receptive_field(self.model, layer, image_shape[:2])
        return self._fields[key]

    def windows(self, layer: str, image_shape, units) -> list[tuple[int, int, int, int]]:
        """``(top, bottom, left, right)`` of each unit's field clipped to the image."""
        table = self.unit_table(layer, image_shape, units)
        f = self.field(layer, image_shape)
        if f is None:
            return [(0, image_shape[0], 0, image_shape[1])] * len(table)
        return [f[0].window(r, clip=True) + f[1].window(c, clip=True) for _, r, c, _ in table]

    # -- projections ----------------------------------------------------------------------------
    def _project_fn(self, layer, image_shape, crop: bool, shared: bool = False):
        """Traced projection of a batch of rows (``shared``: of several units of one row)."""
        key = (layer, None if crop else image_shape, shared)
        fn = self._project.get(key)
        if fn is None:
            spatial = (None, None) if crop else image_shape[:2]
            signature = [tf.TensorSpec((1 if shared else None,) + spatial + image_shape[2:],
                                       tf.float32),
                         tf.TensorSpec((None, 3), tf.int32)]

            @_probe.probe_function(signature)
            def fn(x, pos):
                self.trace_count += 1
                with backward_rule(self.rule, self.model):
                    out = self._forward((layer,))(x)[layer]
                if not shared:
                    return _backward(out, x, pos)
                # pfor turns the units' backward passes into one batched pass after one
                # forward pass. Where an op has no pfor rule (MirrorPadGrad, say) its
                # fallback is a slow while-loop: refused here, and rows are used instead.
                return tf.vectorized_map(lambda p: _backward(out, x, p[None])[0], pos,
                                         fallback_to_while_loop=False)

            self._project[key] = fn
        return fn

    def _crops_work(self, layer, image_shape) -> bool:
        """Whether ``layer`` is projected from crops: its field is known and the model
        traces on crops of any size (tracing it here if not done yet)."""
        if (layer, image_shape) in self._whole or self.field(layer, image_shape) is None:
            return False
        try:
            self._project_fn(layer, image_shape, crop=True).get_concrete_function()
        except Exception as err:  # e.g. a layer that needs a fixed input size
            self._fall_back(layer, image_shape, err)
            return False
        return True

    def _shares(self, layer, image_shape, crop: bool) -> bool:
        """Whether units of one row share a forward pass: pfor vectorizes every op of the
        backward pass (traced here if not done yet)."""
        key = (layer, None if crop else image_shape, True)
        if key in self._unshared:
            return False
        # Known refusals are read off the one-row function's graph (traced already), rather
        # than paying a whole vectorized trace to see it fail.
        rows = self._project_fn(layer, image_shape, crop).get_concrete_function().graph
        refused = sorted(set(_PFOR_REFUSES) & {op.type for op in rows.get_operations()})
        if refused:
            log.info("tbviz.deconvnet: layer %r: units of one image are projected one row each "
                     "(pfor cannot vectorize %s)", layer, ", ".join(refused))
            self._unshared.add(key)
            return False
        try:
            with _pfor_quiet():
                self._project_fn(layer, image_shape, crop, shared=True).get_concrete_function()
        except Exception as err:
            log.info("tbviz.deconvnet: layer %r: units of one image are projected one row each "
                     "(%s)", layer, str(err).strip().splitlines()[-1])
            self._unshared.add(key)
            return False
        return True

    def _image_wide(self, layer, image_shape, crop: bool) -> bool:
        """Whether all units of one image are projected from one input (the whole image, or
        one crop per image where the field is about as large as it): only there are their
        forward passes shared. Units of a smaller field read small crops of their own, cheap
        to run once each; sharing those would cost one more trace per layer (the vectorized
        one) for the rare units that happen to share a crop."""
        if not crop:
            return True
        field = self.field(layer, image_shape)
        return field is None or all(rf.crop_plan(axis) is None for axis in field)

    def _fall_back(self, layer, image_shape, err):
        log.info("tbviz.deconvnet: layer %r cannot be projected from crops (%s); "
                 "using whole images", layer, err)
        self._whole.add((layer, image_shape))

    def prepare(self, image_shape) -> "Projector":
        """Trace every function a projection of these layers may need, now.

        Call it once (a callback does at train begin) so that no later call
        traces, whichever units come up. A layer whose model cannot run on
        crops is switched to whole images here.
        """
        image_shape = tuple(int(d) for d in image_shape)
        self.output_shapes(image_shape)
        for layer in self.layers:
            crop = self._crops_work(layer, image_shape)
            self._project_fn(layer, image_shape, crop).get_concrete_function()
            if self.vectorize and self._image_wide(layer, image_shape, crop):
                self._shares(layer, image_shape, crop)
        return self

    def project(self, images, units: Mapping[str, Sequence], max_batch: int = DEFAULT_MAX_BATCH,
                crop: bool = True) -> dict[str, np.ndarray]:
        """Project ``{layer: units}`` to pixel space; returns ``{layer: (K,) + image shape}``.

        ``units`` are :class:`Unit` s or ``(image_index, row, col, channel)`` tuples
        (``(image_index, channel)`` for a flat layer). At most ``max_batch`` units
        go into one call; ``crop=False`` projects from whole images (slower, same
        result).
        """
        images = self.check_images(images)
        max_batch = positive_int("max_batch", max_batch)
        unknown = [path for path in units if path not in self.layers]
        if unknown:
            raise ValueError(f"layer(s) {', '.join(map(repr, unknown))} are not among this "
                             f"projector's layers: {', '.join(self.layers)}")
        return {layer: self._project_layer(images, layer, self.unit_table(
                    layer, images.shape[1:], chosen, len(images)), max_batch, crop)
                for layer, chosen in units.items()}

    def _project_layer(self, images, layer, table, max_batch, crop):
        shape = images.shape[1:]
        crop = crop and self._crops_work(layer, shape)
        boxes, positions = crops(table, self.field(layer, shape) if crop else None, shape)
        plan = batch_plan(table, boxes, max_batch,
                          share=self.vectorize and self._image_wide(layer, shape, crop))
        if any(shared for shared, _ in plan) and not self._shares(layer, shape, crop):
            plan = batch_plan(table, boxes, max_batch, share=False)
        canvas = np.zeros((len(table),) + shape, np.float32)
        try:
            for shared, ks in plan:
                fn = self._project_fn(layer, shape, crop, shared)
                x = np.stack([images[table[k, 0], t:t + h, lft:lft + w]
                              for k in (ks[:1] if shared else ks) for t, h, lft, w in [boxes[k]]])
                grads = fn(x, positions[ks].astype(np.int32)).numpy()
                for k, g in zip(ks, grads):
                    t, h, lft, w = boxes[k]
                    canvas[k, t:t + h, lft:lft + w] = g
        except Exception as err:
            # Traced on crops but failing on one (a size check at run time): whole images.
            if not crop or (layer, shape) in self._cropped:
                raise
            self._fall_back(layer, shape, err)
            return self._project_layer(images, layer, table, max_batch, crop=False)
        if crop:
            self._cropped.add((layer, shape))
        return canvas


#: Backward ops pfor refuses to vectorize over units: a depthwise convolution's (its
#: converter wants a filter that varies with the unit: "expected to be not loop invariant";
#: MobileNet, EfficientNet, Xception, NASNet, ConvNeXt's grouped convolutions) and a
#: reflection padding's (no converter).
_PFOR_REFUSES = ("DepthwiseConv2dNativeBackpropInput", "MirrorPadGrad")


def _drop_pfor_records(record) -> bool:
    return "parallel_for" not in record.pathname


@contextlib.contextmanager
def _pfor_quiet():
    """Hold back pfor's own log while trying to vectorize: it logs every op it cannot
    convert at ERROR level (with the op's creation trace) before raising, and that
    failure is expected and handled (units then go one row each)."""
    logger = logging.getLogger("tensorflow")
    logger.addFilter(_drop_pfor_records)
    try:
        yield
    finally:
        logger.removeFilter(_drop_pfor_records)


def _backward(out, x, pos):
    """Project ``out`` back to ``x``, each row starting from its one unit of ``pos``."""
    # The signal is the layer output with every other unit zeroed, as in the paper. Rows
    # do not mix in inference mode, so one batched backward pass gives every projection.
    signal = tf.stop_gradient(out * _one_hot(out, pos))
    return gradients(tf.reduce_sum(out * signal), x)


def _one_hot(out, pos):
    """A mask like ``out`` with a single 1 per row, at ``pos[b] = (row, col, channel)``."""
    shape = tf.shape(out)
    channel = tf.one_hot(pos[:, 2], shape[-1], dtype=out.dtype)
    if out.shape.rank == 2:
        return channel
    row = tf.one_hot(pos[:, 0], shape[1], dtype=out.dtype)
    col = tf.one_hot(pos[:, 1], shape[2], dtype=out.dtype)
    return tf.einsum("bi,bj,bk->bijk", row, col, channel)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def projector(model, layers: Iterable[str], rule: str = "deconvnet",
              vectorize: bool = True) -> Projector:
    """The cached :class:`Projector` of ``model`` for ``layers`` and ``rule``.

    Repeated calls with the same arguments return the same object, so its
    traced functions are reused (no retracing across epochs or calls).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> projector(m, ["c"]) is projector(m, ("c",)), projector(m, "c", "guided").rule
    (True, 'guided')
    """
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    per_model = _CACHE.setdefault(model, {})
    key = (layers, rule, bool(vectorize))
    if key not in per_model:
        per_model[key] = Projector(model, layers, rule, vectorize)
    return per_model[key]


# --------------------------------------------------------------------------------------------
# The three functions of the issue


def strongest(model, images, layer: str, k: int = 9, channels: Sequence[int] | None = None,
              distinct: bool = False) -> list[Unit]:
    """The ``k`` strongest activations of ``layer`` over ``images`` (inference mode).

    Returns :class:`Unit` s ``(image_index, row, col, channel, value)``, strongest
    first. With ``channels``, the strongest unit of each given feature map, in
    that order (the paper's Fig. 3 view). With ``distinct``, at most one unit per
    (image, feature map). ``layer`` is a name or an ``"outer/inner"`` path into a
    nested model.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> len(strongest(m, np.ones((2, 6, 6, 1)), "c", k=4))
    4
    """
    acts = projector(model, (layer,)).activations(images)[layer]
    return top_units(acts, k=k, channels=channels, distinct=distinct)


def project(model, images, layer: str, units, rule: str = "deconvnet",
            max_batch: int = DEFAULT_MAX_BATCH, crop: bool = True) -> np.ndarray:
    """Project each unit of ``layer`` back to input pixel space, one at a time.

    ``units`` are :class:`Unit` s (e.g. from :func:`strongest`) or
    ``(image_index, row, col, channel)`` tuples. Returns ``(len(units),) +
    image shape`` raw float32 values. ``rule`` is ``"deconvnet"``, ``"guided"``
    or ``"gradient"``. Units are projected ``max_batch`` at a time; ``crop``
    projects from receptive-field crops where the field is known (same result).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> project(m, np.ones((1, 6, 6, 1)), "c", [(0, 1, 1, 0)], rule="guided").shape
    (1, 6, 6, 1)
    """
    p = projector(model, (layer,), check_rule(rule))
    return p.project(images, {layer: list(units)}, max_batch=max_batch, crop=crop)[layer]


def windows(model, image_shape, layer: str, units) -> list[tuple[int, int, int, int]]:
    """``(top, bottom, left, right)`` of each unit's receptive field, clipped to the image.

    The whole image where the field is unknown (after a Dense layer, say).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> windows(m, (6, 6, 1), "c", [(0, 1, 2, 0)])
    [(1, 4, 2, 5)]
    """
    return projector(model, (layer,)).windows(layer, tuple(image_shape), list(units))


def support_window(projection, threshold: float = 0.05, margin: int = 2
                   ) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` around the part of a projection that matters.

    For units whose receptive field cannot be worked out from the layers (instance
    normalization makes every output depend a little on the whole image, say): the
    box of the connected region around the peak where the magnitude (summed over
    channels) reaches ``threshold`` of the peak, widened by ``margin`` pixels and
    made square where the image allows. Far-away specks (a normalization's global
    terms on high-contrast pixels) are not connected to the peak and are left out.
    An all-zero projection gives the whole image.

    >>> p = np.zeros((10, 10, 1)); p[4, 5] = 1.0; p[0, 0] = 0.5
    >>> support_window(p, margin=1)
    (3, 6, 4, 7)
    """
    mag = np.abs(np.nan_to_num(np.asarray(projection, dtype=np.float64))).sum(axis=-1)
    h, w = mag.shape
    peak = mag.max()
    if not peak > 0:
        return (0, h, 0, w)
    mask = mag >= threshold * peak
    region = np.zeros_like(mask)
    region[np.unravel_index(int(mag.argmax()), mag.shape)] = True
    while True:  # grow the peak's 8-connected region inside the mask
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        grown &= mask
        if (grown == region).all():
            break
        region = grown
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    t, b = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    lft, r = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    side = max(b - t, r - lft)

    def widen(lo, hi, n):  # grow [lo, hi) to `side` pixels around its centre, inside [0, n)
        need = min(side, n) - (hi - lo)
        lo = max(lo - need // 2, 0)
        hi = min(lo + min(side, n), n)
        return hi - min(side, n), hi

    return widen(t, b, h) + widen(lft, r, w)


def patches(model, images, layer: str, units) -> list[np.ndarray]:
    """The input crop under each unit's receptive field, clipped at the image borders.

    Returns a list of float32 ``(h, w, C)`` arrays, one per unit; crops at a
    border are smaller than the field (not padded), and a unit whose field is
    unknown (after a Dense layer, say) gets its whole image.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> patches(m, np.ones((1, 6, 6, 1)), "c", [(0, 0, 0, 1)])[0].shape
    (3, 3, 1)
    """
    p = projector(model, (layer,))
    images = p.check_images(images)
    table = p.unit_table(layer, images.shape[1:], units, n_images=len(images))
    boxes = p.windows(layer, images.shape[1:], table)
    return [images[i, t:b, lft:r].copy() for i, (t, b, lft, r) in zip(table[:, 0], boxes)]


# The dataset-wide scan lives in its own module; imported last, as it uses this one.
from tbviz.scan import Scan, scan  # noqa: E402,F401
