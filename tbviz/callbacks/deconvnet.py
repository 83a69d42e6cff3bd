"""Per-epoch deconvnet views of chosen layers (Zeiler & Fergus 2013) in TensorBoard.

At each trigger, for every layer, :class:`DeconvnetCallback` projects the
strongest activations over the probe images back to pixel space and writes
the tbviz tab's panels (see :mod:`tbviz.summary.metadata`):
``tbviz/deconvnet/<layer>/topk`` (the top-k projections beside the input
patches under them) and ``tbviz/deconvnet/<layer>/evolution`` (the strongest
unit of each of a fixed set of feature maps, chosen at train begin, so the
step slider shows how they change). Contrast is normalized per tile, as in
the paper. The input patches are crops of the probe images, which are written
once per trigger as ``tbviz/deconvnet/<model>/probes``. Each image is stored
once; two opt-in extras would each about double the event data (README,
"A light run"):

* ``image_grids=True``: the same tiles as grids for the stock Images dashboard,
  ``deconvnet/<layer>/projections`` (a 3x3 grid for k=9),
  ``deconvnet/<layer>/patches`` (same order) and ``deconvnet/<layer>/evolution``;
* ``raw=True``: raw data for later tools (plugin ``metadata.RAW_PLUGIN_NAME``,
  tensor summaries): ``deconvnet/<layer>/raw`` (float16 projections cut to each
  unit's receptive field) and ``deconvnet/<layer>/units`` (one row per raw
  tile, columns in :data:`UNIT_COLUMNS`).

Example:
    >>> import numpy as np, keras, tbviz
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
    ...     keras.layers.MaxPooling2D(name="pool1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> model.compile("adam", "mse")
    >>> x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    >>> cb = tbviz.DeconvnetCallback("/tmp/tbviz_doc", probe_images=x[:2],
    ...                              layers=["conv1", "conv2"], top_k=4)
    >>> _ = model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0, callbacks=[cb])
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tbviz import _probe, deconvnet
from tbviz.backward_rules import check_rule, plain_gradient_note
from tbviz.callbacks.base import VizCallback
from tbviz.checks import channels as check_channels
from tbviz.checks import positive_int
from tbviz.layers import check_images, check_layers, layer_paths
from tbviz.summary import images as tiles_lib
from tbviz.summary import metadata


#: Columns of ``deconvnet/<layer>/units``; ``set`` is 0 for top-k rows, 1 for evolution rows;
#: ``top, bottom, left, right`` is the receptive field (clipped to the image) the raw tile
#: covers, from its top-left corner.
UNIT_COLUMNS = ("set", "image_index", "row", "col", "channel", "value",
                "top", "bottom", "left", "right")
MIN_TILE = 64  # tiny tiles (a 5x5 field) are enlarged, nearest-neighbour, to at least this


class DeconvnetCallback(VizCallback):
    """Log deconvnet projections of the strongest activations of ``layers`` over training.

    Args:
        log_dir: run directory; summaries go to ``<log_dir>/train``.
        probe_images: ``(N, H, W, C)`` array, or a callable ``model -> array``
            evaluated at every trigger (e.g. "stylize these photos with the
            current transform net").
        layers: a layer path or a list (``"vgg19/block3_conv1"`` for nested models).
        top_k: how many strongest units per layer (9 gives the paper's 3x3 grid).
        every_n_epochs, every_n_steps: when to log (global step = optimizer steps).
        rule: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        max_batch: most units projected in one batch.
        probe_model: ``None`` (the model being trained), a ``keras.Model``, or a
            callable ``model -> keras.Model`` (e.g. the VGG19 of a loss model).
        distinct: top-k with at most one unit per (image, feature map) (default), so the
            grid shows k different patterns, not neighbouring positions of one;
            ``False``: the k strongest units, wherever they are.
        channels: feature maps whose evolution to show: a list (for every layer) or
            ``{layer: list}``; by default the ``top_k`` channels with the highest mean
            activation on the probe images at train begin.
        image_grids: also write the tiles as grids for the stock Images dashboard (a second
            copy of what the tbviz tab shows; for TensorBoard without tbviz installed).
        raw: also write the float16 projections and the unit table for later tools.
        strict: re-raise a failure instead of switching the deconvnet off.

    All arguments are checked here or at train begin, before any training step.
    """

    def __init__(self, log_dir, probe_images, layers, top_k: int = 9,
                 every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 rule: str = "deconvnet", max_batch: int = deconvnet.DEFAULT_MAX_BATCH,
                 probe_model=None, channels=None, distinct: bool = True,
                 image_grids: bool = False, raw: bool = False, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        self.distinct = bool(distinct)
        self.image_grids, self.raw = bool(image_grids), bool(raw)
        self.layers = [layers] if isinstance(layers, str) else list(layers or [])
        if not self.layers or not all(isinstance(p, str) and p for p in self.layers):
            raise ValueError(f"layers must be a layer path or a non-empty list of them, "
                             f"got {layers!r}")
        self.top_k = positive_int("top_k", top_k)
        self.max_batch = positive_int("max_batch", max_batch)
        self.rule = check_rule(rule)
        if not callable(probe_images):
            arr = np.asarray(probe_images)
            if arr.dtype == object or arr.ndim not in (3, 4):
                raise ValueError("probe_images must be an (N, H, W, C) array or a callable "
                                 f"model -> array, got {type(probe_images).__name__} of shape "
                                 f"{getattr(arr, 'shape', None)}")
        self.probe_images = probe_images
        if not (probe_model is None or isinstance(probe_model, keras.Model)
                or callable(probe_model)):
            raise ValueError("probe_model must be None, a keras.Model or a callable "
                             f"model -> keras.Model, got {type(probe_model).__name__}")
        self.probe_model = probe_model
        if channels is not None and not isinstance(channels, dict):
            channels = {path: channels for path in self.layers}
        self.channels = channels
        self._projector = None
        self._image_shape = None
        self._fixed: dict = {}
        self._layer_index: dict = {}
        self._plain_note = None

    # -- train begin ----------------------------------------------------------------------------
    def check(self):
        probe = self._resolve_probe_model()
        check_layers(probe, self.layers)
        if self.channels is not None:
            extra = [p for p in self.channels if p not in self.layers]
            if extra:
                raise ValueError(f"channels given for {', '.join(map(repr, extra))}, which "
                                 f"are not among layers: {', '.join(self.layers)}")
        if self._projector is not None and self._projector.model is not probe:
            self._fixed, self._image_shape = {}, None  # a new model: start afresh
        paths = layer_paths(probe)
        self._layer_index = {p: paths.index(p) for p in self.layers}
        images = self._images(probe, strict=True)
        self._image_shape = images.shape[1:]
        shapes = _check_projectable(probe, self._image_shape, self.layers)
        for path, chosen in (self.channels or {}).items():
            if path not in shapes:
                continue  # a layer that never runs: the projector says so at setup
            check_channels(chosen, shapes[path][-1], path)
        self._checked = probe, images

    def setup(self):
        probe, images = self._checked
        self._projector = deconvnet.projector(probe, self.layers, self.rule)
        self._projector.prepare(self._image_shape)  # every trace happens now, never later
        # A rule that met no activation computed the plain gradient: label it so.
        self._plain_note = plain_gradient_note(probe, self.rule)
        if self._plain_note:
            self._say_once("plain", self._plain_note)
        acts = self._projector.activations(images)
        for path in self.layers:
            chosen = (self.channels or {}).get(path)
            if chosen is None:
                if path in self._fixed:  # a later fit() of the same run keeps the same maps
                    continue
                chosen = deconvnet.top_channels(acts[path], k=self.top_k)
            self._fixed[path] = [int(c) for c in chosen]  # given ones: checked in check()

    def _resolve_probe_model(self):
        if self.probe_model is None:
            return self.model
        if isinstance(self.probe_model, keras.Model):
            return self.probe_model
        probe = self.probe_model(self.model)
        if not isinstance(probe, keras.Model):
            raise ValueError(f"probe_model(model) must return a keras.Model, got "
                             f"{type(probe).__name__}")
        return probe

    def _images(self, probe, strict: bool):
        """The probe images now; ``None`` (and a warning) when they cannot be used this time."""
        raw = self.probe_images(self.model) if callable(self.probe_images) else self.probe_images
        try:
            images = check_images(probe, raw, name="probe_images")
        except ValueError as err:
            if strict or "NaN or Inf" not in str(err):
                raise
            self._say_once("images", f"probe images contain NaN or Inf ({err}); skipping this "
                                      "deconvnet step")
            return None
        if self._image_shape is not None and images.shape[1:] != self._image_shape:
            raise ValueError(f"probe_images changed shape to {images.shape[1:]}; they must keep "
                             f"the shape they had at train begin, {self._image_shape}")
        return images

    def _say_once(self, key, message):
        self.warn_once(key, "tbviz.DeconvnetCallback: %s", message)

    # -- each trigger ---------------------------------------------------------------------------
    def write(self, step, logs):
        if not self.chief:
            return
        proj = self._projector
        images = self._images(proj.model, strict=False)
        if images is None:
            return
        acts = proj.activations(images)
        chosen = {}
        for path in self.layers:
            if not np.all(np.isfinite(acts[path])):
                self._say_once(("acts", path), f"layer {path!r} has NaN or Inf activations; "
                                "those units are left out of the deconvnet views")
            top = deconvnet.top_units(acts[path], k=self.top_k, distinct=self.distinct)
            evo = deconvnet.top_units(acts[path], channels=self._fixed[path])
            chosen[path] = (top, evo)
        # A unit both in the top-k and strongest of its map is projected once.
        unique = {p: list(dict.fromkeys(t + e)) for p, (t, e) in chosen.items()}
        projections = proj.project(images, unique, max_batch=self.max_batch)
        display = tiles_lib.for_display(images)
        with self.writer.as_default(step=step):
            self._write_probes(display)
            for path in self.layers:
                top, evo = chosen[path]
                units = top + evo
                if not units:
                    self._say_once(("none", path), f"layer {path!r}: no finite activation to "
                                    "project; nothing logged for it")
                    continue
                where = {u: i for i, u in enumerate(unique[path])}
                raw = projections[path][[where[u] for u in units]]
                if not np.all(np.isfinite(raw)):
                    self._say_once(("proj", path), f"layer {path!r}: NaN or Inf in the "
                                    "projections (non-finite weights?); shown as 0")
                    raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
                boxes = proj.windows(path, self._image_shape, units)
                if proj.field(path, self._image_shape) is None:
                    # No field from the layers (instance norm, custom layers): cut each tile
                    # to where its projection matters instead of showing the whole image.
                    boxes = [deconvnet.support_window(r) for r in raw]
                self._write_layer(path, top, evo, raw, boxes, display)

    def _computed_rule(self):
        """The rule the projections follow: the plain gradient where the rule met no activation."""
        return "gradient" if self._plain_note else self.rule

    @property
    def probes_tag(self) -> str:
        """Tag of the probe images the patches are cut from (one per probe model and run)."""
        return f"tbviz/deconvnet/{self._projector.model.name}/probes"

    def _write_probes(self, display):
        """The probe images of this step, once: every layer's patches are crops of them."""
        metadata.write_panel(
            self.probes_tag, metadata.PROBES, [metadata.encode_png(im) for im in display],
            tiles=[{"label": f"image {i}", "index": i} for i in range(len(display))],
            description=f"the probe images the deconvnet of {self._projector.model.name} looked "
                        "at; the input patches of its panels are cut from them",
            model=self._projector.model.name)

    def _write_layer(self, path, top, evo, raw, boxes, display):
        k = len(top)
        rule = self._computed_rule()
        scale = _scale_for(boxes)
        proj_tiles = [_enlarge(_tile(raw[i], b), scale) for i, b in enumerate(boxes)]
        note = (f"{rule} projections of the strongest activations of {path} over the probe "
                "images; contrast normalized per tile"
                + (f" ({self._plain_note})" if self._plain_note else ""))
        if self.image_grids:
            patch_tiles = [_enlarge(_cut(display[u.image_index], b), scale)
                           for u, b in zip(top + evo, boxes)]
            self._write_grids(path, top, evo, proj_tiles, patch_tiles, note)
        # "model" lets the dashboard group layers when two networks log into one run
        # (the style pipeline's transform-net and VGG19).
        content = {"layer": path, "layer_index": self._layer_index[path], "rule": rule,
                   "k": self.top_k, "model": self._projector.model.name,
                   "sources": self.probes_tag, "source_size": list(display.shape[1:3])}
        # A patch is its probe image cut to the unit's receptive field: stored once, in the
        # probes panel, and cut out by the dashboard.
        patches = [dict(_unit_json(u), role="patch", source=int(u.image_index),
                        crop=[int(v) for v in b]) for u, b in zip(top + evo, boxes)]
        if k:
            tiles = ([dict(_unit_json(u), role="projection", unit=i) for i, u in enumerate(top)]
                     + [dict(t, unit=i) for i, t in enumerate(patches[:k])])
            metadata.write_panel(f"tbviz/deconvnet/{path}/topk", metadata.TOPK,
                                 [metadata.encode_png(t) for t in proj_tiles[:k]], tiles,
                                 description=note, **content)
        if evo:
            # A unit also in the top-k shows that panel's tile (the whole of it), stored once.
            rank = {u: i for i, u in enumerate(top)}
            tiles, pngs = [], []
            for u, t in zip(evo, proj_tiles[k:]):
                tiles.append(dict(_unit_json(u), role="projection"))
                if u in rank:
                    tiles[-1].update(sources=f"tbviz/deconvnet/{path}/topk", source=rank[u],
                                     crop=[0, t.shape[0], 0, t.shape[1]],
                                     source_size=list(t.shape[:2]))
                else:
                    pngs.append(metadata.encode_png(t))
            metadata.write_panel(f"tbviz/deconvnet/{path}/evolution", metadata.EVOLUTION,
                                 pngs, tiles + patches[k:],
                                 description="strongest unit of each fixed feature map of "
                                             + path, **content)
        if self.raw:
            self._write_raw(path, top, evo, raw, boxes)

    def _write_grids(self, path, top, evo, proj_tiles, patch_tiles, note):
        """The opt-in copy of the tiles as grids for the stock Images dashboard."""
        k = len(top)
        if k:
            tf.summary.image(f"deconvnet/{path}/projections",
                             tiles_lib.grid(proj_tiles[:k])[None], max_outputs=1,
                             description=note + f"; top {k}, strongest first")
            tf.summary.image(f"deconvnet/{path}/patches",
                             tiles_lib.grid(patch_tiles[:k])[None], max_outputs=1,
                             description=f"input patches under the receptive fields of the top "
                                         f"{k} units of {path}, same order as projections")
        if evo:
            tf.summary.image(f"deconvnet/{path}/evolution",
                             tiles_lib.grid(proj_tiles[k:])[None], max_outputs=1,
                             description=note + "; one fixed feature map per tile, channels "
                                         + ", ".join(str(u.channel) for u in evo))

    def _write_raw(self, path, top, evo, raw, boxes):
        h, w = max(b[1] - b[0] for b in boxes), max(b[3] - b[2] for b in boxes)
        cut = np.zeros((len(boxes), h, w, raw.shape[-1]), np.float16)
        limit = float(np.finfo(np.float16).max)
        for i, (t, b, lft, r) in enumerate(boxes):
            cut[i, :b - t, :r - lft] = np.clip(raw[i, t:b, lft:r], -limit, limit)
        table = np.array([(0 if i < len(top) else 1, u.image_index, u.row, u.col, u.channel,
                           u.value) + tuple(box)
                          for i, (u, box) in enumerate(zip(top + evo, boxes))], np.float64)
        about = {"layer": path, "rule": self._computed_rule(), "columns": list(UNIT_COLUMNS)}
        tf.summary.write(f"deconvnet/{path}/raw", tf.constant(cut),
                         metadata=metadata.create_raw_metadata(
                             "raw projections (float16, clipped to the float16 range), each cut "
                             "to its unit's receptive field from the top-left corner; rows match "
                             f"deconvnet/{path}/units", **about))
        tf.summary.write(f"deconvnet/{path}/units", tf.constant(table),
                         metadata=metadata.create_raw_metadata(
                             "one row per raw tile: " + ", ".join(UNIT_COLUMNS), **about))


def _check_projectable(model, image_shape, layers) -> dict:
    """``{layer: output shape}``; a ``ValueError`` for a layer the deconvnet cannot project
    (a transformer's token sequence, say), naming the layers it can."""
    shapes = _probe.layer_output_shapes(model, image_shape)
    for path in layers:
        shape = shapes.get(path)
        if shape is not None and len(shape) not in (2, 4):
            fitting = [p for p, s in shapes.items() if len(s) == 4]
            kind = "tokens (a vision transformer's?)" if len(shape) == 3 else "values"
            raise ValueError(
                f"layer {path!r} outputs {kind} of shape (N,) + {shape[1:]}; the deconvnet "
                "projects units of a spatial feature map (N, H, W, C) or of a flat (N, features) "
                "layer back through the layers before it. Spatial layers of this model: "
                f"{', '.join(fitting) or '(none)'}")
    return shapes


# -- display helpers (no analysis here: just turning arrays into tiles) ---------------------------

def _cut(image, box):
    t, b, lft, r = box
    return image[t:b, lft:r]


def _tile(projection, box):
    return tiles_lib.to_rgb(tiles_lib.normalize(_cut(projection, box)[None]))[0]


def _scale_for(boxes):
    side = max(max(b[1] - b[0], b[3] - b[2]) for b in boxes)
    return max(1, math.ceil(MIN_TILE / side))


def _enlarge(tile, scale):
    return tile if scale == 1 else np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)


def _unit_json(u):
    value = float(u.value)
    return {"image_index": int(u.image_index), "row": int(u.row), "col": int(u.col),
            "channel": int(u.channel), "value": value if math.isfinite(value) else None}

