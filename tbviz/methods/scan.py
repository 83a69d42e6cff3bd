"""The strongest units of each feature map over a whole dataset, in one streaming pass.

:func:`scan` is Zeiler & Fergus' "top 9 activations across the validation data":
for every feature map of some layers (or the listed ``channels``), its ``k``
strongest units over all images of ``data``, found without ever holding the
data or its activations, on every Keras backend:

* the forward pass stops at the deepest listed layer
  (:func:`tbviz.core.layers.forward_to`);
* per batch, one compiled probe on the device (:func:`tbviz.core.probes.function`)
  reduces each feature map to its candidates - with ``distinct``, each image's
  strongest position, else the batch's ``k`` strongest units - and counts the
  NaN/Inf activations; only those small arrays go to the host, where a stable
  sort merges them into the running top-k of each feature map, so memory is
  ``layers x channels x k`` whatever the dataset's size;
* each kept unit carries the input crop under its receptive field, cut from the
  host copy of its batch (see :mod:`tbviz.core.receptive_field`; the crop is the
  one :class:`tbviz.methods.deconvnet.Projector` projects from), so
  :meth:`Scan.project` and :meth:`Scan.patches` need no second pass over data
  that may not be re-readable (a stream);
* in a multi-process job (a ``tf.distribute.MultiWorkerMirroredStrategy``, JAX's
  processes, ``torch.distributed``; see :func:`tbviz.backend.processes`) each
  process scans every n-th image (image ``i`` on process ``i % n``) and the
  processes' top-k are merged at the end (:func:`tbviz.backend.all_gather`),
  so every process ends with the result of a single-process scan. Every process
  must then read the same data in the same order: give each the whole dataset,
  not a shard of its own. Within one process the probe runs as the backend places
  it (replicated weights under ``keras.distribution.DataParallel`` or a
  ``tf.distribute.MirroredStrategy``: one device's work).

``data`` may be a NumPy array, a ``keras.utils.PyDataset``, a ``tf.data.Dataset``
(where TensorFlow is installed: it is read as it is, never imported here), a
``torch.utils.data.DataLoader`` or any iterable of batches, each batch images or
``(images, labels[, weights])``. Ties go to the earlier image (then the earlier
position), as in :func:`tbviz.methods.deconvnet.top_units`; NaN and Inf activations
are never chosen, but counted (:attr:`Scan.nonfinite`) and warned about once.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.methods.deconvnet import scan
    >>> model = keras.Sequential([
    ...     keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
    ...     keras.layers.MaxPooling2D(2, name="pool1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv2")])
    >>> images = np.random.default_rng(0).uniform(0, 255, (50, 16, 16, 3)).astype("float32")
    >>> found = scan(model, images, ["conv1", "conv2"], k=3, channels={"conv2": [0, 5]})
    >>> len(found["conv1"]), sorted(found["conv2"]), len(found["conv2"][5])
    (4, [0, 5], 3)
    >>> found.project("conv2")[5].shape[1:], found.patches("conv2")[5][0].shape
    ((16, 16, 3), (8, 8, 3))
"""

from __future__ import annotations

import warnings
import weakref
from typing import Mapping

import keras
import numpy as np

from tbviz import backend
from tbviz.core import checks, probes, tokens
from tbviz.core import receptive_field as rf
from tbviz.core.backward_rules import check_rule
from tbviz.core.checks import positive_int
from tbviz.core.layers import check_layers, forward_to, image_input_shape
from tbviz.methods.projection import projector, token_window
from tbviz.methods.units import DEFAULT_MAX_BATCH, Unit

__all__ = ["scan", "Scan"]


# --------------------------------------------------------------------------------------------
# Crop geometry: where each unit's input crop starts, per output row and column


def _crop_axes(field, out_shape, image_shape):
    """Per layer axis: ``(starts, length, jump)``, the crop of each output index.

    The crop is :func:`tbviz.core.receptive_field.crop_plan` 's where the field is
    smaller than the image; the whole axis where it is not, or where the field is
    unknown (then any projection needs the whole image anyway).
    """
    axes = []
    for i, n in enumerate(image_shape[:2]):
        length = out_shape[i] if len(out_shape) == 3 else 1
        axis = field[i] if field is not None else None
        plan = rf.crop_plan(axis) if axis is not None else None
        if plan is None:
            axes.append((np.zeros(length, np.int64), int(n), axis.jump if axis else 1))
        else:
            starts = [rf.crop_start(axis, j, plan) for j in range(length)]
            axes.append((np.array(starts, np.int64), plan, axis.jump))
    return axes


# --------------------------------------------------------------------------------------------
# Reading the data: NumPy batches of images, whatever ``data`` is


def _adapters():
    # Keras' own tests of what a data object is, by class name: no TensorFlow or torch import.
    from keras.src.trainers.data_adapters import data_adapter_utils, is_tf_dataset

    return is_tf_dataset, data_adapter_utils.is_torch_tensor


def _is_array(data) -> bool:
    """An array of images (NumPy, or a backend's tensor), not an iterable of batches."""
    return isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype")
                                            and hasattr(data, "__array__"))


def _to_numpy(x):
    if _adapters()[1](x):
        x = x.detach().cpu()
    return np.asarray(x)


def _images_of(batch):
    """The images of one batch: ``x`` of ``x`` or ``(x, y[, w])``."""
    return batch[0] if isinstance(batch, (tuple, list)) and batch else batch


class _Source:
    """``data`` checked against the model and read as NumPy batches of images.

    ``image_shape`` is known once the constructor returns (it reads the first batch);
    :meth:`batches` yields the batches (that one first), ``limit`` images at most.
    """

    def __init__(self, model, data, limit, array_step):
        self.model, self.limit = model, limit
        self.want = image_input_shape(model)
        self._close = None
        is_tf_dataset, _ = _adapters()
        if _is_array(data):
            self._rest = self._array(data, array_step)
        elif is_tf_dataset(data):
            self._rest = self._tf_dataset(data)
        elif isinstance(data, keras.utils.PyDataset):
            self._rest = self._py_dataset(data)
        else:
            self._rest = self._iterable(data)
        self.first = None
        for batch in self._rest:  # the first batch, to know the image size
            self.first = self._check(batch)
            break
        if self.first is None:
            raise ValueError("data yielded no images; give at least one")
        got = self.first.shape[1:]
        self.image_shape = tuple(int(w) if w is not None else int(g)
                                 for g, w in zip(got, self.want))

    def bad(self, what):
        return ValueError(f"data {what}; model {self.model.name!r} expects image batches of "
                          f"shape (N,) + {self.want}, float or integer")

    def _check_dtype(self, dtype, name=None):
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise self.bad(f"has dtype {name or dtype}")

    def _check_shape(self, got):
        """``got``: a batch's shape without its batch axis (``None`` for unknown sizes)."""
        if any(w is not None and g is not None and g != w for g, w in zip(got, self.want)):
            raise self.bad(f"yields batches of shape {(None,) + tuple(got)}")
        if any(w is None and g is None for g, w in zip(got, self.want)):
            raise ValueError(f"scan needs images of one fixed size; model {self.model.name!r} "
                             f"accepts {(None,) + self.want} and data yields "
                             f"{(None,) + tuple(got)}")

    def _check(self, batch):
        x = _to_numpy(_images_of(batch))
        if x.ndim != 4:
            raise self.bad(f"yields batches of shape {x.shape}")
        self._check_dtype(x.dtype)
        self._check_shape(x.shape[1:])
        if self.first is not None and x.shape[1:] != self.first.shape[1:]:
            raise ValueError(f"data yields a batch of shape {x.shape} after batches of shape "
                             f"(N,) + {self.first.shape[1:]}; scan needs images of one size")
        return x

    def _array(self, data, step):
        data = _to_numpy(data)
        if data.ndim != 4:
            raise self.bad(f"is an array of shape {data.shape}")
        self._check_dtype(data.dtype)
        if len(data) == 0:
            raise ValueError("data is empty; give at least one image")
        end = min(len(data), self.limit or len(data))
        return (data[i:i + step] for i in range(0, end, step))

    def _tf_dataset(self, data):
        spec = data.element_spec
        if isinstance(spec, (tuple, list)) and spec:
            spec = spec[0]
            data = data.map(lambda *e: e[0])  # labels are never read
        shape = getattr(spec, "shape", None)
        if shape is None or shape.rank != 4 or not hasattr(spec, "dtype"):
            raise self.bad(f"yields {spec}")
        if not (spec.dtype.is_floating or spec.dtype.is_integer):
            raise self.bad(f"has dtype {spec.dtype.name}")
        self._check_shape(tuple(shape[1:]))
        cardinality = int(data.cardinality())  # -1: infinite, -2: unknown
        if cardinality == -1 and self.limit is None:
            raise ValueError("data is an infinite dataset (it repeats); give limit= to say how "
                             "many images to scan")
        if cardinality == 0:
            raise ValueError("data is an empty dataset; give at least one batch of images")
        return iter(data)

    def _py_dataset(self, data):
        from keras.src.trainers.data_adapters import PyDatasetAdapter

        if data.num_batches is None and self.limit is None:
            raise ValueError("data is an infinite dataset (a PyDataset without num_batches); "
                             "give limit= to say how many images to scan")
        if data.num_batches == 0:
            raise ValueError("data is an empty dataset; give at least one batch of images")
        adapter = PyDatasetAdapter(data, shuffle=False)
        if adapter.enqueuer is not None:  # its workers stop when the scan does
            self._close = adapter.enqueuer.stop
        return adapter.get_numpy_iterator()

    def _iterable(self, data):
        try:
            it = iter(data)
        except TypeError:
            raise self.bad(f"is a {type(data).__name__}, neither an array nor an iterable of "
                           "batches") from None
        try:
            first = next(it)
        except StopIteration:
            raise ValueError("data is empty; give at least one batch of images") from None

        def rest():
            yield first
            yield from it
        return rest()

    def batches(self):
        """The image batches, ``limit`` images at most (the first batch first)."""
        seen = 0
        try:
            batch = self.first
            while True:
                if self.limit is not None and seen + len(batch) >= self.limit:
                    yield batch[:self.limit - seen]
                    return
                seen += len(batch)
                yield batch
                batch = next(self._rest, None)
                if batch is None:
                    return
                batch = self._check(batch)
        finally:
            if self._close is not None:
                self._close()


def _shares(source, count, index, max_batch):
    """``(global indices, images)`` of this process's share of ``source``, in runs of
    ``max_batch`` (the last one shorter): image ``i`` goes to process ``i % count``.
    Appends the total number of images read to ``total`` at the end."""
    held, start = [], 0
    for batch in source.batches():
        ids = np.arange(start, start + len(batch))
        start += len(batch)
        if count > 1:
            mine = ids % count == index
            ids, batch = ids[mine], batch[mine]
        if len(ids) == 0:
            continue
        held.append((ids, batch))
        while sum(len(i) for i, _ in held) >= max_batch:
            ids = np.concatenate([i for i, _ in held])
            images = np.concatenate([b for _, b in held]) if len(held) > 1 else held[0][1]
            yield ids[:max_batch], images[:max_batch]
            held = [(ids[max_batch:], images[max_batch:])] if len(ids) > max_batch else []
    if held:
        yield (np.concatenate([i for i, _ in held]),
               np.concatenate([b for _, b in held]) if len(held) > 1 else held[0][1])
    source.total = start


# --------------------------------------------------------------------------------------------
# On the device: each feature map's candidates in one batch


def _candidates(acts, valid, k, distinct):
    """``(value, where, nonfinite)`` of one layer's ``acts`` (``(B, H, W, C)`` or
    ``(B, C)``) for its first ``valid`` rows: with ``distinct`` each image's strongest
    position per map (``(B, C)`` each, ``where`` its flat position in ``H x W``), else the
    batch's ``k`` strongest units per map (``(C, k)`` each, ``where`` flat in ``B x H x W``,
    earlier units first among equal values); ``nonfinite``: NaN/Inf per map, ``(C,)``.
    NaN, Inf and the rows past ``valid`` come out as ``-inf``, which the merge never keeps.
    """
    ops = keras.ops
    acts = ops.cast(acts, "float32")
    if len(acts.shape) == 2:
        acts = acts[:, None, None, :]
    batch, channels = acts.shape[0], acts.shape[-1]
    rows = ops.arange(batch) < valid
    # One cheap pass says whether a real image has a NaN or Inf activation: a sum is finite
    # where all its terms are (an overflow takes the exact path too, which counts right).
    sums = ops.sum(acts, axis=(1, 2))
    clean = ops.all(ops.logical_or(ops.isfinite(sums), ops.logical_not(rows)[:, None]))
    real = rows[:, None, None, None]

    def masked():
        finite = ops.logical_and(ops.isfinite(acts), real)
        bad = ops.logical_and(ops.logical_not(finite), real)
        return (ops.where(finite, acts, -np.inf),
                ops.sum(ops.cast(bad, "int32"), axis=(0, 1, 2)))

    def unmasked():
        return acts, ops.zeros((channels,), "int32")

    reduce = _per_image if distinct else _per_batch
    return ops.cond(clean, lambda: reduce(*unmasked(), rows, k),
                    lambda: reduce(*masked(), rows, k))


def _per_image(acts, nonfinite, rows, k):
    """Each image's strongest position per map, ``(B, C)``: the first row holding the
    maximum, then the first column in it, so ties go to the earlier position in row-major
    order (``argmax`` gives the first index holding the maximum on every backend: NumPy's
    rule, which JAX, PyTorch and TensorFlow's kernels follow). Reduced one axis at a time:
    no copy of the feature maps into another layout. Rows past the valid ones are dropped
    on the host."""
    ops = keras.ops
    width = acts.shape[2]
    col = ops.argmax(acts, axis=2)  # (B, H, C): each row's first maximum
    row_max = ops.max(acts, axis=2)
    row = ops.argmax(row_max, axis=1)  # (B, C): the first row holding the maximum
    best = ops.take_along_axis(row_max, row[:, None, :], axis=1)[:, 0]
    col = ops.take_along_axis(col, row[:, None, :], axis=1)[:, 0]
    where = ops.cast(row, "int32") * width + ops.cast(col, "int32")
    return best, where, nonfinite


def _per_batch(acts, nonfinite, rows, k):
    """The batch's ``k`` strongest units per map, earliest first among equal values. The
    order among ties is made here, not left to the backend's ``top_k`` (PyTorch's is not
    stable): all units above the k-th value, then the earliest ones equal to it."""
    ops = keras.ops
    batch, height, width, channels = acts.shape
    hw = height * width
    acts = ops.where(rows[:, None, None, None], acts, -np.inf)
    per_map = ops.reshape(ops.transpose(acts, (3, 0, 1, 2)), (channels, batch * hw))
    kk = min(k, batch * hw)
    kth = ops.top_k(per_map, kk)[0][:, -1:]  # the k-th value is right whoever holds it
    above = per_map > kth
    at_kth = ops.cast(per_map == kth, "int32")
    room = kk - ops.sum(ops.cast(above, "int32"), axis=1, keepdims=True)
    keep = ops.logical_or(above, ops.logical_and(at_kth > 0, ops.cumsum(at_kth, axis=1) <= room))
    # the kept positions, earliest first: top_k of distinct keys has no ties to break
    order = ops.where(keep, -ops.arange(batch * hw, dtype="int32")[None],
                      np.iinfo(np.int32).min)
    where = -ops.top_k(order, kk)[0]
    return ops.take_along_axis(per_map, where, axis=1), where, nonfinite


# --------------------------------------------------------------------------------------------
# On the host: the running top-k of one layer


class _TopK:
    """The running top-k of one layer's maps (``(C, k)`` arrays) and the kept crops."""

    def __init__(self, n_channels, k, crop_shape):
        self.value = np.full((n_channels, k), -np.inf, np.float32)
        self.image = np.full((n_channels, k), -1, np.int64)
        self.where = np.zeros((n_channels, k), np.int64)
        self.crop = np.zeros((n_channels, k) + tuple(crop_shape), np.float32)
        self.nonfinite = 0

    def state(self) -> dict:
        return {"value": self.value, "image": self.image, "where": self.where,
                "crop": self.crop, "nonfinite": self.nonfinite}

    def merge(self, value, image, b, where, images, axes):
        """Merge candidates (``(C, m)`` each: value, global image index, row ``b`` of
        ``images``, flat position), which come after everything kept so far, in order."""
        k = self.value.shape[1]
        both = np.concatenate([self.value, value], 1)
        # stable: among equal values the kept units (earlier images) stay ahead, and the
        # candidates keep their (image, position) order
        pick = np.argsort(-both, axis=1, kind="stable")[:, :k]
        moved = (pick != np.arange(k)).any(1)
        if not moved.any():
            return
        rows = np.nonzero(moved)[0]
        pick = pick[rows]
        new = pick >= k
        old = np.minimum(pick, k - 1)
        fresh = np.maximum(pick - k, 0)
        self.value[rows] = both[rows[:, None], pick]
        self.image[rows] = np.where(new, image[rows[:, None], fresh], self.image[rows[:, None], old])
        self.where[rows] = np.where(new, where[rows[:, None], fresh], self.where[rows[:, None], old])
        crops = self.crop[rows[:, None], old]
        # only the newly kept units need their crop, cut from this batch's host copy
        at = np.nonzero(new)
        unit_b = b[rows[at[0]], fresh[at]]
        (row_starts, height, _), (col_starts, crop_width, _) = axes
        r, c = np.divmod(self.where[rows[at[0]], at[1]], len(col_starts))
        ys = row_starts[r][:, None, None] + np.arange(height)[None, :, None]
        xs = col_starts[c][:, None, None] + np.arange(crop_width)[None, None, :]
        crops[at] = images[unit_b[:, None, None], ys, xs]
        self.crop[rows] = crops


def _merge_processes(states, k):
    """One layer's top-k over the states of all processes (ties: earlier image, position)."""
    both = {name: np.concatenate([s[name] for s in states], 1)
            for name in ("value", "image", "where", "crop")}
    order = np.lexsort((both["where"], both["image"], -both["value"]), axis=1)[:, :k]
    merged = {name: np.take_along_axis(t, order.reshape(order.shape + (1,) * (t.ndim - 2)), 1)
              for name, t in both.items()}
    merged["nonfinite"] = sum(int(s["nonfinite"]) for s in states)
    return merged


# --------------------------------------------------------------------------------------------
# The result


class Scan(dict):
    """``{layer: {channel: [Unit, ...]}}`` from :func:`scan`, strongest first, with the crops.

    ``crops[layer][channel]`` holds each unit's input crop, ``origins[layer][channel]``
    where it starts ``(top, left)`` in its image; :meth:`project` and :meth:`patches`
    work from them alone. ``nonfinite[layer]`` counts NaN/Inf activations seen,
    ``n_images`` the images scanned. ``grids[layer]`` is a token layer's patch grid
    ``(h, w, skip)`` (:func:`tbviz.core.tokens.token_grid`; its units' rows and columns are
    grid cells, each crop is the whole image), ``None`` for any other layer.
    """

    def __init__(self, model, units, crops, origins, image_shape, nonfinite, n_images,
                 grids=None, token_grid=None, class_token=None):
        super().__init__(units)
        self._model = weakref.ref(model)
        self.crops, self.origins = crops, origins
        self.image_shape, self.nonfinite, self.n_images = image_shape, nonfinite, n_images
        self.grids = dict(grids or {})
        self._told = (token_grid, class_token)  # what the scan was told of the token grid

    def patches(self, layer: str) -> dict[int, list[np.ndarray]]:
        """``{channel: [patch, ...]}``: the input under each unit's receptive field, clipped
        to the image - the same arrays as :func:`tbviz.methods.deconvnet.patches` on the whole
        images; for a token layer, the image region of each unit's token."""
        grid = self.grids.get(layer)
        field = None if grid else rf.receptive_field(self._model(), layer, self.image_shape[:2])
        result = {}
        for ch, units in self[layer].items():
            result[ch] = []
            for u, crop, (y0, x0) in zip(units, self.crops[layer][ch], self.origins[layer][ch]):
                if grid:  # the crop is the whole image
                    t, b, lft, r = token_window(u.row, u.col, grid, self.image_shape[:2])
                    result[ch].append(crop[t:b, lft:r].copy())
                    continue
                if field is None:
                    result[ch].append(crop.copy())
                    continue
                (t, b), (lft, r) = field[0].window(u.row, True), field[1].window(u.col, True)
                result[ch].append(crop[t - y0:b - y0, lft - x0:r - x0].copy())
        return result

    def project(self, layer: str, rule: str = "deconvnet",
                max_batch: int | None = None) -> dict[int, np.ndarray]:
        """``{channel: (n,) + image shape}``: each unit projected to pixel space from its crop -
        the same numbers as :func:`tbviz.methods.deconvnet.project` on the whole images
        (``max_batch`` crops per call, the deconvnet's default if None). A token layer is
        projected with the plain gradient whatever ``rule`` says, from whole images
        (:meth:`tbviz.methods.deconvnet.Projector.rule_of`)."""

        model = self._model()
        max_batch = positive_int("max_batch", max_batch or DEFAULT_MAX_BATCH)
        grid = self.grids.get(layer)
        # A token layer's crop is the whole image, which a transformer needs at its own size
        # (a position embedding): its projection is traced for that size, not for any crop.
        fn = projector(model, (layer,), check_rule(rule), True, *self._told)._project_fn(
            layer, tuple(self.image_shape), crop=not grid)
        field = None if grid else rf.receptive_field(model, layer, self.image_shape[:2])
        jumps = (field[0].jump, field[1].jump) if field is not None else (1, 1)
        # Every channel's units in one stack, projected max_batch at a time: a call per
        # channel would leave most calls a few rows (k) long.
        channels = list(self[layer])
        units = [u for ch in channels for u in self[layer][ch]]
        origins = [o for ch in channels for o in self.origins[layer][ch]]
        if not units:
            return {ch: np.zeros((0,) + tuple(self.image_shape), np.float32) for ch in channels}
        crops = np.concatenate([self.crops[layer][ch] for ch in channels if self[layer][ch]])
        pos = np.array([(u.row - y0 // jumps[0], u.col - x0 // jumps[1], u.channel)
                        for u, (y0, x0) in zip(units, origins)], np.int32).reshape(-1, 3)
        canvas = np.zeros((len(units),) + tuple(self.image_shape), np.float32)
        for lo in range(0, len(units), max_batch):
            grads = backend.numpy(fn(crops[lo:lo + max_batch], pos[lo:lo + max_batch]))
            for i, g in enumerate(grads, lo):
                y0, x0 = origins[i]
                canvas[i, y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = g
        ends = np.cumsum([len(self[layer][ch]) for ch in channels])
        return dict(zip(channels, np.split(canvas, ends[:-1])))


# --------------------------------------------------------------------------------------------
# The scan


def scan(model, data, layers, k: int = 9, channels=None, limit: int | None = None,
         max_batch: int = 64, distinct: bool = True, token_grid=None,
         class_token=None) -> Scan:
    """The ``k`` strongest units of each feature map of ``layers`` over all of ``data``.

    ``data`` is a NumPy array ``(N, H, W, C)``, or batches of images or of
    ``(images, labels[, weights])`` tuples (labels are ignored): a
    ``keras.utils.PyDataset``, a ``tf.data.Dataset``, a ``torch.utils.data.DataLoader``
    or any iterable of such batches; ``limit`` caps the images read (needed for an
    infinite dataset). ``channels`` restricts the feature maps: a list for every
    layer or ``{layer: list}``. With ``distinct``, a feature map keeps at most one
    unit per image. At most ``max_batch`` images go into one forward pass (per
    process in a multi-process job, where every process must be given the same data).
    A vision transformer's token layer ``(N, T, D)`` is scanned on its patch grid
    (:func:`tbviz.core.tokens.token_grid`; ``token_grid=(h, w)`` and ``class_token=`` say it
    where the token count cannot): a unit is a token channel at one grid cell, its patch the
    image region of its token.

    Returns a :class:`Scan`, ``{layer: {channel: [Unit, ...]}}`` strongest first,
    where ``Unit.image_index`` counts images in the order ``data`` yields them;
    fewer than ``k`` units where there are fewer images (or finite activations).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> x = np.zeros((5, 6, 6, 1), "float32"); x[3, 2, 2] = 1.0
    >>> scan(m, x, ["c"], k=2, channels=[0])["c"][0][0].image_index
    3
    """
    layers = check_layers(model, layers)
    if not layers:
        raise ValueError("give at least one layer")
    k = positive_int("k", k)
    limit = positive_int("limit", limit, allow_none=True)
    max_batch = positive_int("max_batch", max_batch)
    count, index = backend.processes(model)
    source = _Source(model, data, limit, array_step=max_batch * count)
    told = (None if token_grid is None else tuple(int(g) for g in token_grid), class_token)
    scanner = _scanner(model, tuple(layers), source.image_shape, k, channels, distinct, told)
    tops = {layer: _TopK(len(ch), k, (axes[0][1], axes[1][1], source.image_shape[2]))
            for layer, (ch, axes) in scanner.plan.items()}
    pending = None
    for ids, images in _shares(source, count, index, max_batch):
        images = images.astype(np.float32, copy=False)
        # the next batch goes to the device before this one's merge: an asynchronous
        # backend (JAX, a GPU) computes while the host merges
        out = scanner.run(images)
        if pending is not None:
            scanner.merge(tops, *pending)
        pending = out, ids, images
    if pending is not None:
        scanner.merge(tops, *pending)
    if source.total == 0:  # the same on every process: each reads all of data
        raise ValueError("data yielded no images; give at least one")
    states = {layer: top.state() for layer, top in tops.items()}
    if count > 1:
        every = backend.all_gather(states, model)
        states = {layer: _merge_processes([s[layer] for s in every], k) for layer in states}
    return _result(model, scanner, states, source.total, source.image_shape)


_SCANNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _chosen(channels, layer, n):
    """The feature maps of ``layer`` (``n`` of them) to scan: all where ``channels`` names none."""
    chosen = channels[layer]
    return list(range(n)) if chosen is None else checks.channels(list(chosen), n, layer)


def _scanner(model, layers, image_shape, k, channels, distinct, told=(None, None)):
    """The cached :class:`_Scanner` for these arguments: one scan per epoch traces once."""
    per_model = _SCANNERS.setdefault(model, {})
    given = (lambda layer: channels.get(layer)) if isinstance(channels, Mapping) else (
        lambda layer: channels)
    chosen = {layer: None if given(layer) is None else tuple(given(layer)) for layer in layers}
    key = (layers, image_shape, k, tuple(chosen.items()), bool(distinct), told)
    if key not in per_model:
        per_model[key] = _Scanner(model, layers, image_shape, k, chosen, bool(distinct), told)
    return per_model[key]


def _output_shapes(model, layers, image_shape) -> dict:
    """Each layer's output shape without batch, from one trace of the forward pass (cached)."""
    def build(ref):
        probe = backend.function(forward_to(ref(), layers), models=[ref()])
        outs = probe.trace(backend.Spec((None,) + image_shape))
        return {layer: tuple(outs[layer][1:]) for layer in layers}

    return probes.traced(model, ("scan_shapes", layers, image_shape), build)


class _Scanner:
    """The compiled per-batch probe of one kind of scan (one per batch size), and the
    host-side merge of its output."""

    def __init__(self, model, layers, image_shape, k, channels, distinct, told=(None, None)):
        self._model = weakref.ref(model)
        self.layers, self.image_shape, self.k, self.distinct = layers, image_shape, k, distinct
        self.told = told
        self.plan = {}  # layer -> (channels, crop axes)
        self.grids = {}  # layer -> (h, w, skip) of a token layer, else None
        self._picks = {}  # layer -> the channels to take from its output (None: all)
        for layer, shape in _output_shapes(model, layers, image_shape).items():
            grid = self.grids[layer] = _token_grid(layer, shape, image_shape, told)
            if grid:
                shape = grid[:2] + shape[-1:]
            if len(shape) not in (1, 3):
                raise ValueError(f"layer {layer!r} outputs (N,) + {shape}; scan needs an "
                                 "(N, H, W, C), (N, tokens, D) or (N, features) output")
            # A token depends on every token before it (attention): its crop is the image.
            field = rf.receptive_field(model, layer, image_shape[:2]) \
                if len(shape) == 3 and not grid else None
            chosen = _chosen(channels, layer, shape[-1])
            self.plan[layer] = (chosen, _crop_axes(field, shape, image_shape))
            self._picks[layer] = None if chosen == list(range(shape[-1])) else np.array(
                chosen, np.int32)
        self.probes: dict = {}  # batch size -> probe
        self.batch = None

    def _probe(self, batch):
        """The probe for batches of ``batch`` images: each batch is padded to the size of
        the first, so a scan compiles once (the last, shorter batch would compile again)."""
        if batch not in self.probes:
            forward = forward_to(self._model(), self.layers)

            def step(images, valid):
                acts = forward(images)
                out = {}
                for layer in self.layers:
                    a = acts[layer]
                    if self.grids[layer]:
                        a = tokens.to_grid(a, self.grids[layer])
                    if self._picks[layer] is not None:
                        a = keras.ops.take(a, self._picks[layer], axis=-1)
                    out[layer] = _candidates(a, valid, self.k, self.distinct)
                return out

            self.probes[batch] = probes.function(
                self._model(), step, (batch,) + self.image_shape, (), dtypes=["float32", "int32"])
        return self.probes[batch]

    def run(self, images):
        """Start the probe on one batch (padded to the first batch's size)."""
        n = len(images)
        if self.batch is None or n > self.batch:
            self.batch = n
        if n < self.batch:
            images = np.concatenate([images, np.zeros((self.batch - n,) + images.shape[1:],
                                                      np.float32)])
        return self._probe(self.batch)(images, np.asarray(n, np.int32))

    def merge(self, tops, out, ids, images):
        """Merge one batch's candidates (the probe's ``out``) into the running ``tops``."""
        out = backend.numpy(out)
        n = len(ids)
        for layer, (_, axes) in self.plan.items():
            value, where, nonfinite = out[layer]
            tops[layer].nonfinite += int(nonfinite.astype(np.int64).sum())
            if self.distinct:  # (B, C): one candidate per image, in image order
                value, where = value[:n].T, where[:n].T.astype(np.int64)
                b = np.broadcast_to(np.arange(n), value.shape)
            else:  # (C, k): flat positions over the batch, earliest first
                where = where.astype(np.int64)
                b, where = np.divmod(where, len(axes[0][0]) * len(axes[1][0]))
                b = np.minimum(b, n - 1)  # padded rows hold -inf: never kept
            tops[layer].merge(value, ids[b], b, where, images, axes)


def _token_grid(layer, shape, image_shape, told):
    """A token layer's ``(h, w, skip)`` (its output ``shape`` without batch), ``None`` for
    any other rank; a 3-D output that is no grid is a ``ValueError`` saying how to give one."""
    if len(shape) != 2:
        return None
    return tokens.as_units(np.zeros((1,) + tuple(shape), np.float32), image_shape, *told,
                           layer=layer)[1]


def _result(model, scanner, states, seen, image_shape) -> Scan:
    plan = scanner.plan
    units, crops, origins = {}, {}, {}
    for layer, (channels, axes) in plan.items():
        s = states[layer]
        units[layer], crops[layer], origins[layer] = {}, {}, {}
        rows, cols = np.divmod(s["where"], len(axes[1][0]))
        for j, ch in enumerate(channels):
            keep = np.isfinite(s["value"][j])
            units[layer][ch] = [Unit(int(i), int(r), int(c), ch, float(v)) for i, r, c, v in zip(
                s["image"][j][keep], rows[j][keep], cols[j][keep], s["value"][j][keep])]
            crops[layer][ch] = s["crop"][j][keep]
            origins[layer][ch] = [(int(axes[0][0][u.row]), int(axes[1][0][u.col]))
                                  for u in units[layer][ch]]
    nonfinite = {layer: int(states[layer]["nonfinite"]) for layer in plan}
    if any(nonfinite.values()):
        warnings.warn("tbviz.deconvnet.scan: NaN or Inf activations were never chosen: "
                      + ", ".join(f"{n} in {layer!r}" for layer, n in nonfinite.items() if n),
                      RuntimeWarning, stacklevel=3)
    return Scan(model, units, crops, origins, image_shape, nonfinite, seen, scanner.grids,
                *scanner.told)
