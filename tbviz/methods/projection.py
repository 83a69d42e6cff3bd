"""The deconvnet's machinery: :class:`Projector` and the functions built on it.

Users reach all of it as :mod:`tbviz.deconvnet` (:mod:`tbviz.methods.deconvnet`, which
also names the dataset scan); the projection lives here, on its own, so that the scan
(:mod:`tbviz.methods.scan`) can project its units with a :class:`Projector` without the
two modules importing each other. How a projection works, and its example, are in
:mod:`tbviz.methods.deconvnet`.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.methods import projection
    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(2, 3, activation="relu", name="conv")])
    >>> images = np.ones((1, 8, 8, 3), "float32")
    >>> p = projection.projector(model, ["conv"])
    >>> p.project(images, {"conv": [(0, 2, 2, 0)]})["conv"].shape
    (1, 8, 8, 3)
"""

from __future__ import annotations

import logging
import weakref
from typing import Iterable, Mapping, Sequence

import numpy as np

from tbviz import backend
from tbviz.core import probes, tokens
from tbviz.core import receptive_field as rf
from tbviz.core.backward_rules import backward_rule, check_rule
from tbviz.core.checks import positive_int
from tbviz.core.layers import check_images, check_layers, forward_to
from tbviz.methods.units import (DEFAULT_MAX_BATCH, Unit, project_rows,  # noqa: F401
                                 project_shared, top_channels, top_units, unit_table)

__all__ = ["Unit", "Projector", "projector", "strongest", "top_units", "top_channels",
           "unit_table", "crops", "batch_plan", "project", "patches", "windows", "support_window",
           "token_window"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Where units are projected from (pure NumPy)


def crops(table, field, image_size) -> tuple[np.ndarray, np.ndarray]:
    """The input crop each unit of ``table`` is projected from, and where the unit is in it.

    ``table`` is a :func:`unit_table`; ``field`` the layer's receptive field
    ``(rows, cols)`` (see :func:`tbviz.core.receptive_field.receptive_field`), or
    ``None`` for whole images; ``image_size`` is ``(height, width)``. Returns
    ``boxes`` ``(K, 4)``: top, height, left and width of each crop, and
    ``positions`` ``(K, 3)``: the unit's row, col and channel in the layer output
    computed from its crop.

    Along an axis where one crop length reproduces any unit exactly
    (:func:`~tbviz.core.receptive_field.crop_plan`) every unit gets that length, so
    units batch together. Where the field is about as large as the image, units
    of one image get the union of their own crops
    (:func:`~tbviz.core.receptive_field.unit_crop`), so that they share one forward
    pass (see :func:`batch_plan`). Crops start at multiples of the layer's stride.

    >>> from tbviz.core.receptive_field import Axis
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


def token_window(row: int, col: int, grid, image_size) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the image region of the token at ``row, col`` of
    ``grid`` (``(h, w, skip)`` of :func:`tbviz.core.tokens.token_grid`), the image cut into
    ``h x w`` cells (a patch embedding's patches, or the regions a hierarchical model's
    merged tokens stand for).

    >>> token_window(1, 2, (4, 4, 1), (32, 32))   # 8-pixel patches
    (8, 16, 16, 24)
    """
    h, w = grid[:2]
    height, width = image_size[:2]
    return (round(row * height / h), round((row + 1) * height / h),
            round(col * width / w), round((col + 1) * width / w))


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
    >>> _ = p.project(x, {"c": [(0, 3, 3, 1), (0, 0, 0, 0)]})  # two units of one image
    >>> traces = p.trace_count
    >>> _ = p.project(x, {"c": [(0, 1, 1, 1), (0, 4, 4, 0)]})
    >>> from tbviz import backend  # eager PyTorch compiles nothing: it counts every run
    >>> p.trace_count == traces or backend.name == "torch"
    True
    """

    def __init__(self, model, layers: Iterable[str], rule: str = "deconvnet",
                 vectorize: bool = True, token_grid=None, class_token=None):
        self._model = weakref.ref(model)  # the cache is keyed by the model: no cycle
        self.model_name = model.name
        self.layers = tuple(check_layers(model, layers))
        if not self.layers:
            raise ValueError("give at least one layer")
        self.rule = check_rule(rule)
        self.vectorize = bool(vectorize)
        self.token_grid = None if token_grid is None else tuple(int(g) for g in token_grid)
        self.class_token = class_token
        self.trace_count = 0
        self._grids: dict = {}  # (layer, image shape) -> (h, w, skip) of a token layer
        self._shapes: dict = {}  # image shape -> output_shapes()
        self._prepared: set = set()  # image shapes prepare() has traced for
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
    def unit_view(self, layer: str, out, image_shape):
        """``layer``'s output ``out`` (a tensor) as units (:func:`tbviz.core.tokens.as_units`:
        a token layer's ``(N, T, D)`` on its ``(N, h, w, D)`` grid, other outputs as they are),
        the grid recorded for :meth:`token_grid_of`. Every traced function of this projector
        sees a layer through it."""
        image_shape = tuple(int(d) for d in image_shape)
        units, grid = tokens.as_units(out, image_shape, self.token_grid, self.class_token,
                                      layer)
        if grid is not None:
            self._grids[(layer, image_shape)] = grid
        return units

    def token_grid_of(self, layer: str, image_shape):
        """``(h, w, skip)`` where ``layer`` outputs tokens for images of ``image_shape``, else
        ``None`` (traces the activations first if needed)."""
        image_shape = tuple(int(d) for d in image_shape)
        self.output_shapes(image_shape)
        return self._grids.get((layer, image_shape))

    def rule_of(self, layer: str, image_shape) -> str:
        """The rule ``layer``'s projections follow: ``"gradient"`` for a token layer, else the
        projector's rule."""
        return "gradient" if self.token_grid_of(layer, image_shape) is not None else self.rule

    def _acts_fn(self, image_shape):
        fn = self._acts.get(image_shape)
        if fn is None:
            def acts(x):
                self.trace_count += 1
                seen = self._forward(self.layers)(x)
                for path in self.layers:
                    self._check_output(path, seen)
                return {path: self.unit_view(path, seen[path], image_shape)
                        for path in self.layers}

            fn = self._acts[image_shape] = probes.function(self.model, acts,
                                                           (None,) + image_shape)
        return fn

    def _forward(self, layers: tuple):
        """``x -> {layer: output}`` stopping at the deepest of ``layers`` where the model's
        graph allows (:func:`tbviz.core.layers.forward_to`), so a trace covers only the layers a
        projection goes through; built once per set of layers."""
        if layers not in self._forwards:
            self._forwards[layers] = forward_to(self.model, layers)
        return self._forwards[layers]

    def _check_output(self, path, seen):
        if path not in seen:
            raise ValueError(f"layer {path!r} did not run when model {self.model_name!r} was "
                             "called on images; choose a layer on the path from the image input")
        out = seen[path]
        if not hasattr(out, "shape") or len(out.shape) not in (2, 3, 4):
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"layer {path!r} outputs {shape}; projections need an (N, H, W, C), "
                             "(N, tokens, D) or (N, features) output")

    def _check_rows(self, path, out, n):
        """A ``ValueError`` unless ``path`` gave one output row per image (a layer fed by
        something else, a constant branch, has nothing to project back to the image)."""
        if out.shape[0] != n:
            raise ValueError(f"layer {path!r} does not depend on the image input of model "
                             f"{self.model_name!r} (it gave {out.shape[0]} rows for {n} images); "
                             "choose a layer downstream of it")

    def output_shapes(self, image_shape) -> dict[str, tuple]:
        """Each layer's output shape without batch for images of ``image_shape`` (traces once)."""
        image_shape = tuple(int(d) for d in image_shape)
        if image_shape not in self._shapes:  # (a trace on JAX and a call on PyTorch: once)
            outs = self._acts_fn(image_shape).trace(backend.Spec((None,) + image_shape))
            self._shapes[image_shape] = {path: tuple(outs[path][1:]) for path in self.layers}
        return self._shapes[image_shape]

    def activations(self, images) -> dict[str, np.ndarray]:
        """``{layer: activations}`` of every layer for ``images`` (inference mode)."""
        images = self.check_images(images)
        out = probes.numpy(self._acts_fn(images.shape[1:])(images))
        for path in self.layers:
            self._check_rows(path, out[path], len(images))
        return {path: out[path] for path in self.layers}

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
            # A token's output depends on every token before it (attention): the whole image.
            tokens_out = len(image_shape) == 3 and self.token_grid_of(layer, image_shape)
            self._fields[key] = None if tokens_out else rf.receptive_field(
                self.model, layer, image_shape[:2])
        return self._fields[key]

    def windows(self, layer: str, image_shape, units) -> list[tuple[int, int, int, int]]:
        """``(top, bottom, left, right)`` of each unit's field clipped to the image; for a
        token layer, the image region of each unit's token (:func:`token_window`)."""
        table = self.unit_table(layer, image_shape, units)
        grid = self.token_grid_of(layer, image_shape)
        if grid is not None:
            return [token_window(r, c, grid, image_shape) for _, r, c, _ in table]
        f = self.field(layer, image_shape)
        if f is None:
            return [(0, image_shape[0], 0, image_shape[1])] * len(table)
        return [f[0].window(r, clip=True) + f[1].window(c, clip=True) for _, r, c, _ in table]

    # -- projections ----------------------------------------------------------------------------
    def _specs(self, image_shape, crop: bool, shared: bool = False):
        spatial = (None, None) if crop else tuple(image_shape[:2])
        return (backend.Spec((1 if shared else None,) + spatial + tuple(image_shape[2:])),
                backend.Spec((None, 3), "int32"))

    def _project_fn(self, layer, image_shape, crop: bool, shared: bool = False):
        """Compiled projection of a batch of rows (``shared``: of several units of one row)."""
        key = (layer, None if crop else image_shape, shared)
        fn = self._project.get(key)
        if fn is None:
            rule = self.rule_of(layer, image_shape)

            def forward(x):
                with backward_rule(rule, self.model):
                    out = self._forward((layer,))(x)[layer]
                return self.unit_view(layer, out, image_shape)

            def project(x, pos):
                self.trace_count += 1
                return (project_shared if shared else project_rows)(forward, x, pos)

            fn = self._project[key] = backend.function(
                project, models=[self.model], signature=self._specs(image_shape, crop, shared))
        return fn

    def _crops_work(self, layer, image_shape) -> bool:
        """Whether ``layer`` is projected from crops: its field is known and the model
        traces on crops of any size (tracing it here if not done yet)."""
        if (layer, image_shape) in self._whole or self.field(layer, image_shape) is None:
            return False
        try:
            self._project_fn(layer, image_shape, crop=True).trace(
                *self._specs(image_shape, crop=True))
        except Exception as err:  # e.g. a layer that needs a fixed input size
            self._fall_back(layer, image_shape, err)
            return False
        return True

    def _shares(self, layer, image_shape, crop: bool) -> bool:
        """Whether units of one row share a forward pass: pfor vectorizes every op of the
        backward pass (traced here if not done yet)."""
        key = (layer, None if crop else image_shape, True)
        if key in self._unshared or not backend.CAN_BATCH_PULLBACKS:
            return False
        # Known refusals are read off the one-row function (compiled already), rather than
        # paying a whole vectorized trace to see it fail.
        refused = backend.batch_refusals(self._project_fn(layer, image_shape, crop),
                                         self._specs(image_shape, crop))
        if refused:
            log.info("tbviz.deconvnet: layer %r: units of one image are projected one row each "
                     "(the backend cannot vectorize %s)", layer, ", ".join(refused))
            self._unshared.add(key)
            return False
        try:
            self._project_fn(layer, image_shape, crop, shared=True).trace(
                *self._specs(image_shape, crop, shared=True))
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
        if image_shape in self._prepared:  # a later fit(): everything is traced already
            return self
        self.output_shapes(image_shape)
        for layer in self.layers:
            crop = self._crops_work(layer, image_shape)
            self._project_fn(layer, image_shape, crop).trace(*self._specs(image_shape, crop))
            if self.vectorize and self._image_wide(layer, image_shape, crop):
                self._shares(layer, image_shape, crop)
        self._prepared.add(image_shape)
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
                grads = probes.numpy(fn(x, positions[ks].astype(np.int32)))
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


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def projector(model, layers: Iterable[str], rule: str = "deconvnet",
              vectorize: bool = True, token_grid=None, class_token=None) -> Projector:
    """The cached :class:`Projector` of ``model`` for ``layers`` and ``rule`` (and the
    ``token_grid`` / ``class_token`` of its token layers, where given).

    Repeated calls with the same arguments return the same object, so its
    traced functions are reused (no retracing across epochs or calls).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="c")])
    >>> projector(m, ["c"]) is projector(m, ("c",)), projector(m, "c", "guided").rule
    (True, 'guided')
    """
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    per_model = _CACHE.setdefault(model, {})
    grid = None if token_grid is None else tuple(int(g) for g in token_grid)
    key = (layers, rule, bool(vectorize), grid, class_token)
    if key not in per_model:
        per_model[key] = Projector(model, layers, rule, vectorize, grid, class_token)
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


