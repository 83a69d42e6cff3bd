"""The strongest units of each feature map over a whole dataset, in one streaming pass.

:func:`scan` is Zeiler & Fergus' "top 9 activations across the validation data":
for every feature map of some layers (or the listed ``channels``), its ``k``
strongest units over all images of ``data``, found without ever holding the
data or its activations:

* the forward pass stops at the deepest listed layer;
* per batch, each feature map's candidates (with ``distinct``, the strongest
  position of each image) are concatenated with the running top-k and cut back
  to ``k`` by ``tf.math.top_k``, inside one ``tf.function`` on the device, so
  memory is ``layers x channels x k`` whatever the dataset's size;
* each kept unit carries the input crop under its receptive field (see
  :mod:`tbviz.core.receptive_field`; the crop is the one :class:`tbviz.methods.deconvnet.Projector`
  projects from), so :meth:`Scan.project` and :meth:`Scan.patches` need no
  second pass over data that may not be re-readable (a ``tf.data`` stream);
* under a ``tf.distribute`` strategy each replica scans its shard and the
  top-k of each feature map is merged across replicas by one ``all_gather``.

Ties go to the earlier image (then the earlier position), as in
:func:`tbviz.methods.deconvnet.top_units`; NaN and Inf activations are never chosen,
but counted (:attr:`Scan.nonfinite`) and warned about once.

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
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tbviz import backend
from tbviz.core import receptive_field as rf
from tbviz.core import checks
from tbviz.core.checks import positive_int
from tbviz.core.layers import check_layers, forward_to, image_input_shape
from tbviz.core.backward_rules import check_rule
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
            axes.append((np.zeros(length, np.int32), int(n), axis.jump if axis else 1))
        else:
            starts = [rf.crop_start(axis, j, plan) for j in range(length)]
            axes.append((np.array(starts, np.int32), plan, axis.jump))
    return axes


# --------------------------------------------------------------------------------------------
# Reading the data


def _image_dataset(model, data, limit):
    """``data`` as a ``tf.data.Dataset`` of single float32 images, checked against the model."""
    want = image_input_shape(model)

    def bad(what):
        return ValueError(f"data {what}; model {model.name!r} expects image batches of shape "
                          f"(N,) + {want}, float or integer")

    if isinstance(data, np.ndarray):
        if data.ndim != 4:
            raise bad(f"is an array of shape {data.shape}")
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
            raise bad(f"has dtype {data.dtype}")
        if len(data) == 0:
            raise ValueError("data is empty; give at least one image")
        ds = tf.data.Dataset.from_tensor_slices(data[:limit] if limit else data)
        spec = tf.TensorSpec((None,) + data.shape[1:], tf.as_dtype(data.dtype))
    else:
        if not isinstance(data, tf.data.Dataset):
            it = iter(data)
            try:
                first = next(it)
            except StopIteration:
                raise ValueError("data is empty; give at least one batch of images") from None
            first_images = first[0] if isinstance(first, (tuple, list)) else first
            arr = np.asarray(first_images)
            if arr.ndim != 4:
                raise bad(f"yields batches of shape {arr.shape}")

            def gen(first=arr, rest=it):
                yield first
                for b in rest:
                    yield np.asarray(b[0] if isinstance(b, (tuple, list)) else b)

            try:
                dtype = tf.as_dtype(arr.dtype)
            except TypeError:
                raise bad(f"has dtype {arr.dtype}") from None
            data = tf.data.Dataset.from_generator(
                gen, output_signature=tf.TensorSpec((None,) + arr.shape[1:], dtype))
        spec = data.element_spec
        if isinstance(spec, (tuple, list)):
            spec = spec[0]
            data = data.map(lambda *e: e[0])
        if not isinstance(spec, tf.TensorSpec) or spec.shape.rank != 4:
            raise bad(f"yields {spec}")
        if data.cardinality() == tf.data.INFINITE_CARDINALITY and limit is None:
            raise ValueError("data is an infinite dataset (it repeats); give limit= to say how "
                             "many images to scan")
        if data.cardinality() == 0:
            raise ValueError("data is an empty dataset; give at least one batch of images")
        ds = data.unbatch()
        if limit:
            ds = ds.take(limit)
    if not (spec.dtype.is_floating or spec.dtype.is_integer):
        raise bad(f"has dtype {spec.dtype.name}")
    got = tuple(spec.shape[1:])
    if any(w is not None and g is not None and g != w for g, w in zip(got, want)):
        raise bad(f"yields batches of shape {(None,) + got}")
    shape = tuple(w if w is not None else g for g, w in zip(got, want))
    if None in shape:
        raise ValueError(f"scan needs images of one fixed size; model {model.name!r} accepts "
                         f"{(None,) + want} and data yields {(None,) + got}")
    return ds.map(lambda x: tf.ensure_shape(tf.cast(x, tf.float32), shape)), shape


# --------------------------------------------------------------------------------------------
# The running top-k of one layer (runs on each replica, inside tf.function)


def _initial(n_channels, k, crop_shape):
    return {"value": tf.fill([n_channels, k], -np.inf),
            "image": tf.fill([n_channels, k], tf.constant(-1, tf.int64)),
            "row": tf.zeros([n_channels, k], tf.int32),
            "col": tf.zeros([n_channels, k], tf.int32),
            "crop": tf.zeros([n_channels, k] + list(crop_shape), tf.float32)}


def _candidates(acts, k, distinct):
    """Per feature map its candidates ``(value, batch position, row, col)``, each ``(C, m)``."""
    if acts.shape.rank == 2:
        acts = acts[:, None, None, :]
    width = tf.shape(acts)[2]
    hw = tf.shape(acts)[1] * width
    per_map = tf.transpose(acts, [3, 0, 1, 2])  # (C, B, H, W)
    if distinct:
        # each image's strongest position (top_k: ties go to the first), one candidate per image
        best, where = tf.math.top_k(tf.reshape(per_map, [tf.shape(per_map)[0], -1, hw]), 1)
        value, where = best[..., 0], where[..., 0]
        batch = tf.broadcast_to(tf.range(tf.shape(value)[1])[None], tf.shape(value))
    else:
        flat = tf.reshape(per_map, [tf.shape(per_map)[0], -1])
        value, flat_at = tf.math.top_k(flat, tf.minimum(k, tf.shape(flat)[1]))
        batch, where = flat_at // hw, flat_at % hw
    return value, batch, where // width, where % width


def _merge_batch(state, acts, index, images, k, distinct, axes):
    """The running top-k of one layer after one more batch; ``index``: global image indices."""
    acts = tf.cast(acts, tf.float32)
    finite = tf.math.is_finite(acts)
    nonfinite = tf.reduce_sum(tf.cast(~finite, tf.int64))
    acts = tf.where(finite, acts, -np.inf)
    value, batch, row, col = _candidates(acts, k, distinct)
    both = tf.concat([state["value"], value], 1)
    top, pick = tf.math.top_k(both, k)  # state first: ties go to the earlier images
    new = pick >= k
    from_new = tf.maximum(pick - k, 0)

    def take(old, fresh):
        return tf.where(new, tf.gather(fresh, from_new, batch_dims=1),
                        tf.gather(old, tf.minimum(pick, k - 1), batch_dims=1))

    out = {"value": top,
           "image": take(state["image"], tf.gather(index, batch)),
           "row": take(state["row"], row), "col": take(state["col"], col)}
    crops = tf.gather(state["crop"], tf.minimum(pick, k - 1), batch_dims=1)
    # Only the newly kept units need their crop cut out of this batch's images.
    at = tf.where(new)  # (n, 2): (channel, slot)
    b = tf.gather_nd(tf.gather(batch, from_new, batch_dims=1), at)
    (row_starts, height, _), (col_starts, width, _) = axes
    y0 = tf.gather(row_starts, tf.gather_nd(out["row"], at))
    x0 = tf.gather(col_starts, tf.gather_nd(out["col"], at))
    ys = y0[:, None, None] + tf.range(height)[None, :, None]
    xs = x0[:, None, None] + tf.range(width)[None, None, :]
    where = tf.stack([tf.broadcast_to(tf.cast(b, tf.int32)[:, None, None], tf.shape(ys + xs)),
                      tf.broadcast_to(ys, tf.shape(ys + xs)),
                      tf.broadcast_to(xs, tf.shape(ys + xs))], -1)
    out["crop"] = tf.tensor_scatter_nd_update(crops, at, tf.gather_nd(images, where))
    return out, nonfinite


def _merge_replicas(state, k, height, width):
    """The top-k of one layer over all replicas (each replica ends with the same result)."""
    ctx = tf.distribute.get_replica_context()
    # (tf.identity places each input on this replica's device, which the collective needs)
    every = {name: ctx.all_gather(tf.identity(t), axis=1) for name, t in state.items()}
    # Order candidates by image then position, so top_k's ties go to the earlier image as in
    # a single-device scan.
    key = every["image"] * (height * width) + tf.cast(every["row"] * width + every["col"],
                                                      tf.int64)
    order = tf.argsort(key, axis=1, stable=True)
    every = {name: tf.gather(t, order, batch_dims=1) for name, t in every.items()}
    _, pick = tf.math.top_k(every["value"], k)
    return {name: tf.gather(t, pick, batch_dims=1) for name, t in every.items()}


# --------------------------------------------------------------------------------------------
# The result


class Scan(dict):
    """``{layer: {channel: [Unit, ...]}}`` from :func:`scan`, strongest first, with the crops.

    ``crops[layer][channel]`` holds each unit's input crop, ``origins[layer][channel]``
    where it starts ``(top, left)`` in its image; :meth:`project` and :meth:`patches`
    work from them alone. ``nonfinite[layer]`` counts NaN/Inf activations seen,
    ``n_images`` the images scanned.
    """

    def __init__(self, model, units, crops, origins, image_shape, nonfinite, n_images):
        super().__init__(units)
        self._model = weakref.ref(model)
        self.crops, self.origins = crops, origins
        self.image_shape, self.nonfinite, self.n_images = image_shape, nonfinite, n_images

    def patches(self, layer: str) -> dict[int, list[np.ndarray]]:
        """``{channel: [patch, ...]}``: the input under each unit's receptive field, clipped
        to the image - the same arrays as :func:`tbviz.methods.deconvnet.patches` on the whole images."""
        field = rf.receptive_field(self._model(), layer, self.image_shape[:2])
        result = {}
        for ch, units in self[layer].items():
            result[ch] = []
            for u, crop, (y0, x0) in zip(units, self.crops[layer][ch], self.origins[layer][ch]):
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
        (``max_batch`` crops per call, the deconvnet's default if None)."""
        from tbviz.methods.deconvnet import projector

        model = self._model()
        max_batch = positive_int("max_batch", max_batch or DEFAULT_MAX_BATCH)
        fn = projector(model, (layer,), check_rule(rule))._project_fn(
            layer, tuple(self.image_shape), crop=True)
        field = rf.receptive_field(model, layer, self.image_shape[:2])
        jumps = (field[0].jump, field[1].jump) if field is not None else (1, 1)
        result = {}
        for ch, units in self[layer].items():
            canvas = np.zeros((len(units),) + tuple(self.image_shape), np.float32)
            crops, origins = self.crops[layer][ch], self.origins[layer][ch]
            pos = np.array([(u.row - y0 // jumps[0], u.col - x0 // jumps[1], ch)
                            for u, (y0, x0) in zip(units, origins)], np.int32).reshape(-1, 3)
            for lo in range(0, len(units), max_batch):
                grads = backend.numpy(fn(crops[lo:lo + max_batch], pos[lo:lo + max_batch]))
                for i, g in enumerate(grads, lo):
                    y0, x0 = origins[i]
                    canvas[i, y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = g
            result[ch] = canvas
        return result


# --------------------------------------------------------------------------------------------
# The scan


def _strategy(model):
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


def scan(model, data, layers, k: int = 9, channels=None, limit: int | None = None,
         max_batch: int = 64, distinct: bool = True) -> Scan:
    """The ``k`` strongest units of each feature map of ``layers`` over all of ``data``.

    ``data`` is a NumPy array ``(N, H, W, C)``, a ``tf.data.Dataset`` of image
    batches or of ``(images, labels[, weights])`` tuples (labels are ignored), or
    any iterable of such batches; ``limit`` caps the images read (needed for an
    infinite dataset). ``channels`` restricts the feature maps: a list for every
    layer or ``{layer: list}``. With ``distinct``, a feature map keeps at most one
    unit per image. At most ``max_batch`` images go into one forward pass (per
    replica under a ``tf.distribute`` strategy).

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
    ds, image_shape = _image_dataset(model, data, limit)

    strategy = _strategy(model)
    scanner = _scanner(model, tuple(layers), image_shape, k, channels, distinct, strategy)
    replicas = strategy.num_replicas_in_sync
    ds = ds.enumerate().batch(max_batch * replicas).prefetch(2)
    if scanner.distributed:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
        ds = strategy.experimental_distribute_dataset(ds.with_options(options))
    carry = strategy.run(scanner.init)
    for index, images in ds:
        carry = scanner.step(carry, index, images)
    if scanner.distributed:
        state, total = strategy.experimental_local_results(scanner.merge(carry))[0]
        seen, bad = int(total[0]), total[1:].numpy()
    else:
        state, bad, seen = carry
        seen, bad = int(seen), bad.numpy()
    if seen == 0:
        raise ValueError("data yielded no images; give at least one")
    return _result(model, scanner.plan, state, bad, seen, image_shape, layers)


_SCANNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _chosen(channels, layer, n):
    """The feature maps of ``layer`` (``n`` of them) to scan: all where ``channels`` names none."""
    chosen = channels[layer]
    return list(range(n)) if chosen is None else checks.channels(list(chosen), n, layer)


def _scanner(model, layers, image_shape, k, channels, distinct, strategy):
    """The cached :class:`_Scanner` for these arguments: one scan per epoch traces once."""
    per_model = _SCANNERS.setdefault(model, {})
    chosen = {layer: None if (channels.get(layer) if isinstance(channels, Mapping) else channels)
              is None else tuple(channels.get(layer) if isinstance(channels, Mapping)
                                 else channels) for layer in layers}
    key = (layers, image_shape, k, tuple(chosen.items()), distinct, id(strategy))
    if key not in per_model:
        per_model[key] = _Scanner(model, layers, image_shape, k, chosen, distinct, strategy)
    return per_model[key]


class _Scanner:
    """The traced per-batch step and the cross-replica merge of one kind of scan."""

    def __init__(self, model, layers, image_shape, k, channels, distinct, strategy):
        self.forward = forward_to(model, layers)
        outs = tf.function(self.forward).get_concrete_function(
            tf.TensorSpec((None,) + image_shape, tf.float32)).structured_outputs
        self.plan = {}
        for layer in layers:
            shape = tuple(outs[layer].shape[1:])
            if len(shape) not in (1, 3):
                raise ValueError(f"layer {layer!r} outputs (N,) + {shape}; scan needs an "
                                 "(N, H, W, C) or (N, features) output")
            field = rf.receptive_field(model, layer, image_shape[:2]) if len(shape) == 3 \
                else None
            self.plan[layer] = (_chosen(channels, layer, shape[-1]),
                                _crop_axes(field, shape, image_shape))
        self.k, self.distinct, self.image_shape = k, distinct, image_shape
        self.strategy = strategy
        self.distributed = strategy.num_replicas_in_sync > 1 or isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.step = tf.function(self._step, reduce_retracing=True)
        self.merge = tf.function(self._merge)

    def init(self):
        state = {layer: _initial(len(ch), self.k, (axes[0][1], axes[1][1], self.image_shape[2]))
                 for layer, (ch, axes) in self.plan.items()}
        return state, tf.zeros([len(self.plan)], tf.int64), tf.zeros([], tf.int64)

    def _replica_step(self, carry, index, images):
        state, bad, seen = carry
        acts = self.forward(images)
        state, counts = dict(state), []
        for layer, (ch, axes) in self.plan.items():
            a = tf.gather(acts[layer], ch, axis=-1)
            merged, n_bad = _merge_batch(state[layer], a, index, images, self.k, self.distinct,
                                         axes)
            # A replica's share of the last batch can be empty: nothing to merge then.
            state[layer] = tf.cond(tf.shape(images)[0] > 0, lambda m=merged: m,
                                   lambda s=state[layer]: s)
            counts.append(n_bad)
        return state, bad + tf.stack(counts), seen + tf.shape(images, out_type=tf.int64)[0]

    def _step(self, carry, index, images):
        return self.strategy.run(self._replica_step, args=(carry, index, images))

    def _replica_merge(self, carry):
        state, bad, seen = carry
        state = {layer: _merge_replicas(state[layer], self.k, len(axes[0][0]), len(axes[1][0]))
                 for layer, (_, axes) in self.plan.items()}
        total = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.concat([tf.identity(seen)[None], bad], 0))
        return state, total

    def _merge(self, carry):
        return self.strategy.run(self._replica_merge, args=(carry,))


def _result(model, plan, state, bad, seen, image_shape, layers) -> Scan:
    units, crops, origins = {}, {}, {}
    for layer, (channels, axes) in plan.items():
        s = {name: t.numpy() for name, t in state[layer].items()}
        units[layer], crops[layer], origins[layer] = {}, {}, {}
        for j, ch in enumerate(channels):
            keep = np.isfinite(s["value"][j])
            units[layer][ch] = [Unit(int(i), int(r), int(c), ch, float(v)) for i, r, c, v in zip(
                s["image"][j][keep], s["row"][j][keep], s["col"][j][keep], s["value"][j][keep])]
            crops[layer][ch] = s["crop"][j][keep]
            origins[layer][ch] = [(int(axes[0][0][u.row]), int(axes[1][0][u.col]))
                                  for u in units[layer][ch]]
    nonfinite = {layer: int(n) for layer, n in zip(layers, bad)}
    if any(nonfinite.values()):
        warnings.warn("tbviz.deconvnet.scan: NaN or Inf activations were never chosen: "
                      + ", ".join(f"{n} in {layer!r}" for layer, n in nonfinite.items() if n),
                      RuntimeWarning, stacklevel=3)
    return Scan(model, units, crops, origins, image_shape, nonfinite, seen)
