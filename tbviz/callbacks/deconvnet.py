"""Per-epoch deconvnet views of chosen layers (Zeiler & Fergus 2013) in TensorBoard.

At each trigger, for every layer, :class:`DeconvnetCallback` projects the
strongest activations over the probe images back to pixel space and writes
the tbviz tab's panels (see :mod:`tbviz.summary.metadata`):
``tbviz/deconvnet/<layer>/topk`` (the top-k projections beside the input
patches under them) and ``tbviz/deconvnet/<layer>/evolution`` (the strongest
unit of each of a fixed set of feature maps, chosen at train begin, so the
step slider shows how they change) and ``tbviz/deconvnet/<layer>/perimage``
(each probe image's strongest unit). Contrast is normalized per tile, as in
the paper. The input patches are crops of the probe images, which are written
as ``tbviz/deconvnet/<model>/probes`` (a fixed array once per run, images that
change at every trigger), unless another callback's panel already holds them
(``probes_panel``: the style pipeline's VGG19 cuts its patches from the stylized
photos of ``tbviz/stylized/probes``).

With ``scan_data`` (Zeiler & Fergus' Figs. 2 and 3 over a whole dataset, see
:func:`tbviz.methods.deconvnet.scan`) it also writes ``tbviz/deconvnet/<layer>/featuremaps``
(per fixed feature map, its top-k projections beside their input patches, over
all the scanned images), and the evolution shows each fixed map's strongest
unit over the scanned data. Those patches come from the dataset, not from the
probe images, so they are stored as tiles of their own.

A vision transformer's token layers ``(N, T, D)`` are shown the same way: a unit is a
token channel at one cell of the patch grid (:mod:`tbviz.core.tokens`; ``token_grid=``
and ``class_token=`` say the grid where the token count cannot), its input patch is the
image region of its token, and it is projected with the plain gradient (the panels'
``rule`` says ``"gradient"``), cut to where the projection matters. See
:mod:`tbviz.methods.deconvnet`.

Each image is stored once; two opt-in extras would each about double the event
data (README, "A light run"):

* ``image_grids=True``: the same tiles as grids for the stock Images dashboard,
  ``deconvnet/<layer>/projections`` (a 3x3 grid for k=9),
  ``deconvnet/<layer>/patches`` (same order), ``deconvnet/<layer>/evolution``
  and, with scan data, ``deconvnet/<layer>/featuremaps``;
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
import os

import keras
import numpy as np

from tbviz.core import probes, tokens
from tbviz.methods import deconvnet
from tbviz.core.backward_rules import check_rule, plain_gradient_note
from tbviz.callbacks.base import VizCallback
from tbviz.core.checks import channels as check_channels
from tbviz.core.checks import positive_int
from tbviz.core.layers import check_images, check_layers, layer_paths
from tbviz.summary import images as tiles_lib
from tbviz.summary import metadata
from tbviz.summary import events


#: Columns of ``deconvnet/<layer>/units``; ``set`` is 0 for top-k rows, 1 for evolution rows,
#: 2 for the feature-map rows of a scan (each map's units strongest first; ``image_index``
#: counts images in the order the scan data yields them, as do evolution rows with scan
#: data); ``top, bottom, left, right`` is the receptive field (clipped to the image) the raw
#: tile covers, from its top-left corner.
UNIT_COLUMNS = ("set", "image_index", "row", "col", "channel", "value",
                "top", "bottom", "left", "right")
MIN_TILE = 64  # tiny tiles (a 5x5 field) are enlarged, nearest-neighbour, to at least this
SCAN_CHANNELS = 16  # feature maps per layer followed with scan data, unless told otherwise
FIRING_IMAGES = 512  # images scanned at train begin to see which feature maps fire


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
        channels: the fixed feature maps (evolution, and with scan data the feature-map
            view): a list (for every layer), ``{layer: list}``, or an int, that many maps
            per layer chosen once at train begin. The default is 16 with ``scan_data``
            (spread at random, ``seed``, over the maps that fire on the first scanned
            images), else the ``top_k`` channels with the highest mean activation on the
            probe images (an int sets that count).
        image_grids: also write the tiles as grids for the stock Images dashboard (a second
            copy of what the tbviz tab shows; for TensorBoard without tbviz installed).
        raw: also write the float16 projections and the unit table for later tools.
        scan_data: images to scan at each trigger (NumPy array, ``tf.data.Dataset`` of
            image batches or ``(images, labels)`` batches, any iterable of batches; see
            :func:`tbviz.methods.deconvnet.scan`), or a callable ``model -> such data`` evaluated
            at every trigger (e.g. the photos stylized by the current transform-net);
            then ``probe_images`` is optional.
        scan_limit: most images scanned per trigger (needed for an infinite dataset).
        seed: the random choice of an int ``channels`` among firing maps.
        run: the run sub-directory written to (``"train"``); another name keeps two views
            of the same layers apart (VGG19 on stylized outputs and on the photos, say).
        vectorize: at layers whose field covers about the whole image, project the units of
            one image through one shared forward pass, their backward passes vectorized
            (:class:`tbviz.methods.deconvnet.Projector`): faster per log, for one more trace per such
            layer at train begin (DenseNet121 at 96x96 on 2 loaded cores: 46 s more at train
            begin, 1.1 s less per log). Worth it for a run that logs many times (every few
            steps); off by default, as the first epoch is where the setup is paid.
        probes_panel: tag of a tbviz panel of this run that another callback, earlier in
            the callback list, writes at every step this one logs, whose image i is probe
            image i as this step's ``probe_images`` gives it (e.g. ``StylizedProbes``'
            ``tbviz/stylized/probes`` with ``probe_images=that_callback.stylized``). The
            patches are cut from it and no probes panel of this callback's own is written:
            the same pixels are stored once. ``None``: write ``tbviz/deconvnet/<model>/probes``.
        token_grid / class_token: a vision transformer's patch grid ``(h, w)`` and its leading
            tokens (``True``: a class token, ``False``: none, or a count: 2 for DeiT), where
            they cannot be found from the token count and the image shape.
        strict: re-raise a failure instead of switching the deconvnet off.

    All arguments are checked here or at train begin, before any training step.
    """

    def __init__(self, log_dir, probe_images=None, layers=None, top_k: int = 9,
                 every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 rule: str = "deconvnet", max_batch: int = deconvnet.DEFAULT_MAX_BATCH,
                 probe_model=None, channels=None, distinct: bool = True,
                 image_grids: bool = False, raw: bool = False, scan_data=None,
                 scan_limit: int | None = None, seed: int = 0, run: str = "train",
                 vectorize: bool = False, probes_panel: str | None = None,
                 token_grid=None, class_token=None, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        if not isinstance(run, str) or not run or os.sep in run:
            raise ValueError(f"run must be a folder name such as 'train', got {run!r}")
        self.run = run
        if probes_panel is not None and not (isinstance(probes_panel, str)
                                             and probes_panel.startswith("tbviz/")):
            raise ValueError("probes_panel must be None or the tag of a tbviz panel holding the "
                             f"probe images, such as 'tbviz/stylized/probes'; got {probes_panel!r}")
        if probes_panel is not None and probe_images is None:
            raise ValueError("probes_panel names where the probe images are shown; give "
                             "probe_images too")
        self.probes_panel = probes_panel
        self.distinct = bool(distinct)
        self.image_grids, self.raw = bool(image_grids), bool(raw)
        if probe_images is None and scan_data is None:
            raise ValueError("give probe_images, scan_data or both")
        self.scan_data = scan_data
        self.scan_limit = positive_int("scan_limit", scan_limit, allow_none=True)
        self.seed = int(seed)
        self.vectorize = bool(vectorize)
        self.token_grid, self.class_token = token_grid, class_token
        self.layers = [layers] if isinstance(layers, str) else list(layers or [])
        if not self.layers or not all(isinstance(p, str) and p for p in self.layers):
            raise ValueError(f"layers must be a layer path or a non-empty list of them, "
                             f"got {layers!r}")
        self.top_k = positive_int("top_k", top_k)
        self.max_batch = positive_int("max_batch", max_batch)
        self.rule = check_rule(rule)
        if probe_images is not None and not callable(probe_images):
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
        if channels is None and scan_data is not None:
            channels = SCAN_CHANNELS
        if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
            self.n_channels, channels = positive_int("channels", channels), None
        else:
            self.n_channels = self.top_k
        if channels is not None and not isinstance(channels, dict):
            channels = {path: channels for path in self.layers}
        self.channels = channels
        self._projector = None
        self._image_shape = None
        self._scan_shape = None
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
        images = None
        if self.probe_images is not None:
            images = self._images(probe, strict=True)
            self._image_shape = images.shape[1:]
        firing = None
        if self.scan_data is not None:
            # Which maps fire (and the image size) from a first look at the scan data; the
            # scan also checks the data against the model, before any training step.
            limit = min(self.scan_limit or FIRING_IMAGES, FIRING_IMAGES)
            look = deconvnet.scan(probe, self._scan_data(), self.layers, k=1, limit=limit,
                                  token_grid=self.token_grid, class_token=self.class_token)
            self._scan_shape = look.image_shape
            firing = {path: [c for c, units in look[path].items()
                             if units and units[0].value > 0] for path in self.layers}
        shapes = _check_projectable(probe, self._image_shape or self._scan_shape, self.layers,
                                    self.token_grid, self.class_token)
        for path, chosen in (self.channels or {}).items():
            if path in shapes:  # a layer that never runs: the projector says so at setup
                check_channels(chosen, shapes[path][-1], path)
        self._checked = probe, images, firing

    def setup(self):
        # The step whose probes panel holds the probe images. A fixed array is written once
        # per run (the largest part of a logged step otherwise, the same pixels every time);
        # the patches name that step.
        self._probes_step = None
        probe, images, firing = self._checked
        self._projector = deconvnet.projector(probe, self.layers, self.rule, self.vectorize,
                                              self.token_grid, self.class_token)
        if images is not None:
            self._projector.prepare(self._image_shape)  # every trace happens now, never later
            acts = self._projector.activations(images)
        # A rule that met no activation computed the plain gradient: label it so.
        self._plain_note = plain_gradient_note(probe, self.rule)
        if self._plain_note:
            self._say_once("plain", self._plain_note)
        shapes = self._projector.output_shapes(self._image_shape or self._scan_shape)
        for path in self.layers:
            n_ch = shapes[path][-1]
            chosen = (self.channels or {}).get(path)
            if chosen is None:
                if path in self._fixed:  # a later fit() of the same run keeps the same maps
                    continue
                if firing is not None:
                    chosen = _spread(firing[path], n_ch, self.n_channels, self.seed)
                else:
                    chosen = deconvnet.top_channels(acts[path], k=self.n_channels)
            self._fixed[path] = check_channels(chosen, n_ch, path)

    def _scan_data(self):
        return self.scan_data(self.model) if callable(self.scan_data) else self.scan_data

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

    # -- each trigger ----------------------------------------------------------------------------
    def write(self, step, logs):
        found = None
        if self.scan_data is not None:
            # Every worker scans its shard (the merge is a collective); the chief writes.
            found = deconvnet.scan(self._projector.model, self._scan_data(), self.layers,
                                   k=self.top_k, channels=self._fixed, limit=self.scan_limit,
                                   distinct=self.distinct, token_grid=self.token_grid,
                                   class_token=self.class_token)
        if not self.chief:
            return
        # per layer: the units of each set (0 top-k, 1 evolution, 2 feature maps) and, in
        # that order, their projections, receptive-field boxes and input patches, each patch
        # (uint8 tile, index of the probe image it is a crop of, or None: a tile of its own)
        views = {path: {"sets": ([], [], []), "raw": [], "boxes": [], "patches": []}
                 for path in self.layers}
        display = None
        if self.probe_images is not None:
            display = self._probe_views(views, with_evolution=found is None)
            if display is None:
                return
        if found is not None:
            self._scan_views(views, found)
        with self.writer.as_default(step=step):
            if display is not None and self.probes_panel is None and (
                    self._probes_step is None or callable(self.probe_images)):
                self._write_probes(display)
                self._probes_step = step
            for path, view in views.items():
                if not any(view["sets"]):
                    self._say_once(("none", path), f"layer {path!r}: no finite activation to "
                                    "project; nothing logged for it")
                    continue
                raw = np.concatenate(view["raw"])
                if not np.all(np.isfinite(raw)):
                    self._say_once(("proj", path), f"layer {path!r}: NaN or Inf in the "
                                    "projections (non-finite weights?); shown as 0")
                    raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
                self._write_layer(path, view["sets"], raw, view["boxes"], view["patches"],
                                  display, view.get("per_image"))

    def _patch_boxes(self, path, image_shape, units, boxes):
        """Where each unit's input patch is: its receptive field (``boxes``), or for a token
        layer the image region of its token."""
        if self._projector.token_grid_of(path, image_shape) is None:
            return boxes
        return self._projector.windows(path, image_shape, units)

    def _boxes(self, path, image_shape, units, raw):
        if self._projector.field(path, image_shape) is None:
            # No field from the layers (instance norm, custom layers): cut each tile
            # to where its projection matters instead of showing the whole image.
            return [deconvnet.support_window(r) for r in raw]
        return self._projector.windows(path, image_shape, units)

    def _probe_views(self, views, with_evolution: bool):
        """Top-k (and evolution) over the probe images into ``views``; returns the probe
        images for display, or None: skip this step."""
        proj = self._projector
        images = self._images(proj.model, strict=False)
        if images is None:
            return None
        acts = proj.activations(images)
        chosen = {}
        for path in self.layers:
            if not np.all(np.isfinite(acts[path])):
                self._say_once(("acts", path), f"layer {path!r} has NaN or Inf activations; "
                                "those units are left out of the deconvnet views")
            top = deconvnet.top_units(acts[path], k=self.top_k, distinct=self.distinct)
            evo = (deconvnet.top_units(acts[path], channels=self._fixed[path])
                   if with_evolution else [])  # with scan data it comes from the scan
            chosen[path] = (top, evo)
        # Each probe image's strongest unit per layer: the image followed through the layers.
        per_image = {path: [u._replace(image_index=i) for i in range(len(images))
                            for u in deconvnet.top_units(acts[path][i:i + 1], k=1)]
                     for path in self.layers}
        # A unit in more than one view is projected once.
        unique = {p: list(dict.fromkeys(t + e + per_image[p])) for p, (t, e) in chosen.items()}
        projections = proj.project(images, unique, max_batch=self.max_batch)
        display = tiles_lib.for_display(images)
        for path, (top, evo) in chosen.items():
            units = top + evo
            where = {u: i for i, u in enumerate(unique[path])}
            raw = projections[path][[where[u] for u in units]]
            boxes = self._boxes(path, self._image_shape, units, raw)
            view = views[path]
            view["sets"][0].extend(top)
            view["sets"][1].extend(evo)
            view["raw"].append(raw)
            view["boxes"].extend(boxes)
            view["patches"].extend((_cut(display[u.image_index], b), int(u.image_index), b)
                                   for u, b in zip(units, self._patch_boxes(
                                       path, self._image_shape, units, boxes)))
            own = projections[path][[where[u] for u in per_image[path]]]
            view["per_image"] = (per_image[path], own,
                                 self._boxes(path, self._image_shape, per_image[path], own))
        return display

    def _scan_views(self, views, found):
        """The evolution (each fixed map's strongest unit) and the feature-map view of a scan."""
        shape = found.image_shape
        for path in self.layers:
            channels = [c for c in self._fixed[path] if found[path][c]]
            maps = [u for c in channels for u in found[path][c]]
            if not maps:
                continue
            projected = found.project(path, rule=self._rule_of(path, shape),
                                      max_batch=self.max_batch)
            raw = np.concatenate([projected[c] for c in channels])
            evo_at = np.cumsum([0] + [len(found[path][c]) for c in channels])[:-1]
            boxes = self._boxes(path, shape, maps, raw)
            patches = found.patches(path)
            crops = [p for c in channels for p in patches[c]]
            if self._projector.field(path, shape) is None and not found.grids.get(path):
                crops = [_cut(p, b) for p, b in zip(crops, boxes)]  # the patch: the image
            # Dataset images are not among the probe images: each patch is a tile of its own.
            display = [(p, None, None) for p in _display_patches(crops)]
            view = views[path]
            view["sets"][1].extend(maps[i] for i in evo_at)
            view["sets"][2].extend(maps)
            view["raw"] += [raw[evo_at], raw]
            view["boxes"] += [boxes[i] for i in evo_at] + boxes
            view["patches"] += [display[i] for i in evo_at] + display

    def _write_per_image(self, path, units, raw, boxes, scale, in_topk):
        """Panel ``perimage``: each probe image's strongest unit of ``path`` (Liu et al.'s
        Fig. 2 puts these side by side, layer after layer)."""
        raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
        tiles, pngs = self._projection_tiles(
            path, units, [_enlarge(_tile(r, b), scale) for r, b in zip(raw, boxes)], in_topk)
        rule = self._computed_rule(path)
        metadata.write_panel(
            f"tbviz/deconvnet/{path}/perimage", metadata.PERIMAGE, pngs, tiles,
            description=f"{rule} projection of each probe image's strongest unit of {path}"
                        + self._rule_note(path),
            layer=path, layer_index=self._layer_index[path], rule=rule,
            model=self._projector.model.name)

    def _rule_of(self, path, image_shape):
        return self._projector.rule_of(path, image_shape)

    def _computed_rule(self, path):
        """The rule the projections of ``path`` follow: the plain gradient for a token layer
        and where the rule met no activation."""
        shape = self._image_shape or self._scan_shape
        return "gradient" if self._plain_note else self._rule_of(path, shape)

    def _rule_note(self, path) -> str:
        """Why a layer's projections are the plain gradient, for its panels' descriptions."""
        if self._plain_note:
            return f" ({self._plain_note})"
        shape = self._image_shape or self._scan_shape
        if self.rule != "gradient" and self._rule_of(path, shape) == "gradient":
            return (f" (a token layer: projected with the plain gradient, not the {self.rule} "
                    "rule; patches are the image regions of the tokens)")
        return ""

    @property
    def probes_tag(self) -> str:
        """Tag of the probe images the patches are cut from: ``probes_panel``, else this
        callback's own (one per probe model and run)."""
        return self.probes_panel or f"tbviz/deconvnet/{self._projector.model.name}/probes"

    def _write_probes(self, display):
        """The probe images of this step, once: every layer's patches are crops of them."""
        metadata.write_panel(
            self.probes_tag, metadata.PROBES, [metadata.encode_image(im) for im in display],
            tiles=[{"label": f"image {i}", "index": i} for i in range(len(display))],
            description=f"the probe images the deconvnet of {self._projector.model.name} looked "
                        "at; the input patches of its panels are cut from them",
            model=self._projector.model.name)

    def _projection_tiles(self, path, units, tiles, in_topk):
        """Tile JSON and the PNGs of ``units`` ' projection ``tiles``; a unit also in the top-k
        (``in_topk``: unit -> its tile there) shows that panel's tile, the whole of it, stored
        once."""
        json_tiles, pngs = [], []
        for u, t in zip(units, tiles):
            json_tiles.append(dict(_unit_json(u), role="projection"))
            if u in in_topk:
                i, shape = in_topk[u]
                json_tiles[-1].update(sources=f"tbviz/deconvnet/{path}/topk", source=i,
                                      crop=[0, shape[0], 0, shape[1]], source_size=list(shape))
            else:
                pngs.append(metadata.encode_image(t))
        return json_tiles, pngs

    def _write_layer(self, path, sets, raw, boxes, patches, display, per_image=None):
        top, evo, maps = sets
        k, n_evo = len(top), len(evo)
        rule = self._computed_rule(path)
        scale = _scale_for(boxes)
        proj_tiles = [_enlarge(_tile(raw[i], b), scale) for i, b in enumerate(boxes)]
        source = "the scanned images" if self.scan_data is not None else "the probe images"
        note = (f"{rule} projections of the strongest activations of {path} over the probe "
                "images; contrast normalized per tile" + self._rule_note(path))
        # (a probe image's patch needs a tile of its own only in the Images-dashboard grids)
        patch_tiles = [_enlarge(p, scale) if self.image_grids or at is None else None
                       for p, at, _ in patches]
        if self.image_grids:
            self._write_grids(path, top, evo, proj_tiles, patch_tiles, note, source)
        # "model" lets the dashboard group layers when two networks log into one run
        # (the style pipeline's transform-net and VGG19).
        content = {"layer": path, "layer_index": self._layer_index[path], "rule": rule,
                   "k": self.top_k, "model": self._projector.model.name}
        if display is not None:
            content.update(sources=self.probes_tag, source_size=list(display.shape[1:3]))
        # A patch of a probe image is that image cut to the unit's receptive field: stored
        # once, in the probes panel, and cut out by the dashboard. A scanned patch is a tile
        # of its own (its dataset image is not stored).
        patch_json, patch_pngs = [], []
        for u, (_, at, b), t in zip(top + evo + maps, patches, patch_tiles):
            patch_json.append(dict(_unit_json(u), role="patch"))
            if at is not None:  # (a probes_panel holds this step's images: no source_step)
                patch_json[-1].update(source=at, crop=[int(v) for v in b])
                if self.probes_panel is None:
                    patch_json[-1]["source_step"] = self._probes_step
            else:
                patch_pngs.append(metadata.encode_image(t))
        own = [i for i, t in enumerate(patch_json) if "crop" not in t]
        png_of = dict(zip(own, patch_pngs))
        if k:
            tiles = ([dict(_unit_json(u), role="projection", unit=i) for i, u in enumerate(top)]
                     + [dict(t, unit=i) for i, t in enumerate(patch_json[:k])])
            metadata.write_panel(f"tbviz/deconvnet/{path}/topk", metadata.TOPK,
                                 [metadata.encode_image(t) for t in proj_tiles[:k]]
                                 + [png_of[i] for i in range(k) if i in png_of], tiles,
                                 description=note, **content)
        in_topk = {u: (i, proj_tiles[i].shape[:2]) for i, u in enumerate(top)}
        if evo:
            # Evolution units of a scan are units of the scanned images, never of the top-k.
            tiles, pngs = self._projection_tiles(path, evo, proj_tiles[k:k + n_evo],
                                                 {} if maps else in_topk)
            at = range(k, k + n_evo)
            metadata.write_panel(f"tbviz/deconvnet/{path}/evolution", metadata.EVOLUTION,
                                 pngs + [png_of[i] for i in at if i in png_of],
                                 tiles + patch_json[k:k + n_evo],
                                 description=f"strongest unit over {source} of each fixed "
                                             f"feature map of {path}", **content)
        if maps:
            at = range(k + n_evo, len(boxes))
            self._write_feature_maps(path, maps, proj_tiles[k + n_evo:],
                                     patch_tiles[k + n_evo:], [png_of[i] for i in at],
                                     patch_json[k + n_evo:], content, rule)
        if self.raw:
            self._write_raw(path, sets, raw, boxes)
        if per_image:
            self._write_per_image(path, *per_image, scale, in_topk)

    def _write_grids(self, path, top, evo, proj_tiles, patch_tiles, note, source):
        """The opt-in copy of the tiles as grids for the stock Images dashboard."""
        k, n_evo = len(top), len(evo)
        if k:
            events.image(f"deconvnet/{path}/projections",
                             tiles_lib.grid(proj_tiles[:k])[None], max_outputs=1,
                             description=note + f"; top {k}, strongest first")
            events.image(f"deconvnet/{path}/patches",
                             tiles_lib.grid(patch_tiles[:k])[None], max_outputs=1,
                             description=f"input patches under the receptive fields of the top "
                                         f"{k} units of {path}, same order as projections")
        if evo:
            events.image(f"deconvnet/{path}/evolution",
                             tiles_lib.grid(proj_tiles[k:k + n_evo])[None], max_outputs=1,
                             description=f"{self._computed_rule(path)} projection of the strongest "
                                         f"unit over {source} of each fixed feature map of "
                                         f"{path}, channels "
                                         + ", ".join(str(u.channel) for u in evo))

    def _write_feature_maps(self, path, maps, proj_tiles, patch_tiles, patch_pngs, patch_json,
                            content, rule):
        """Zeiler & Fergus' Fig. 2: per feature map its top-k projections beside their patches."""
        by_map: dict = {}
        for i, u in enumerate(maps):
            by_map.setdefault(u.channel, []).append(i)
        if self.image_grids:
            blocks, cols = [], math.ceil(math.sqrt(self.top_k))  # 3x3 for the paper's 9
            for ks in by_map.values():
                left = tiles_lib.grid([proj_tiles[i] for i in ks], cols=cols)
                right = tiles_lib.grid([patch_tiles[i] for i in ks], cols=cols)
                gap = np.full((max(len(left), len(right)), 6, 3), 255, np.uint8)
                blocks.append(tiles_lib.grid([left, gap, right], cols=3, pad=0))
            events.image(f"deconvnet/{path}/featuremaps",
                             tiles_lib.grid(blocks, pad=12)[None], max_outputs=1,
                             description=f"{rule} projections of the top {self.top_k} units of "
                                         f"each of {len(by_map)} feature maps of {path} over "
                                         "the scanned images (left) beside their input patches "
                                         "(right); channels " + ", ".join(map(str, by_map)))
        tiles = ([dict(_unit_json(u), role="projection", unit=i) for i, u in enumerate(maps)]
                 + [dict(t, unit=i) for i, t in enumerate(patch_json)])
        groups = [{"channel": int(c), "units": ks} for c, ks in by_map.items()]
        metadata.write_panel(f"tbviz/deconvnet/{path}/featuremaps", metadata.FEATUREMAPS,
                             [metadata.encode_image(t) for t in proj_tiles] + patch_pngs, tiles,
                             groups=groups,
                             description=f"top {self.top_k} units of each fixed feature map of "
                                         f"{path} over the scanned images", **content)

    def _write_raw(self, path, sets, raw, boxes):
        h, w = max(b[1] - b[0] for b in boxes), max(b[3] - b[2] for b in boxes)
        cut = np.zeros((len(boxes), h, w, raw.shape[-1]), np.float16)
        limit = float(np.finfo(np.float16).max)
        for i, (t, b, lft, r) in enumerate(boxes):
            cut[i, :b - t, :r - lft] = np.clip(raw[i, t:b, lft:r], -limit, limit)
        units = [(n, u) for n, units in enumerate(sets) for u in units]
        table = np.array([(n, u.image_index, u.row, u.col, u.channel, u.value) + tuple(box)
                          for (n, u), box in zip(units, boxes)], np.float64)
        about = {"layer": path, "rule": self._computed_rule(path), "columns": list(UNIT_COLUMNS)}
        events.tensor(f"deconvnet/{path}/raw", cut,
                         metadata=metadata.create_raw_metadata(
                             "raw projections (float16, clipped to the float16 range), each cut "
                             "to its unit's receptive field from the top-left corner; rows match "
                             f"deconvnet/{path}/units", **about))
        events.tensor(f"deconvnet/{path}/units", table,
                         metadata=metadata.create_raw_metadata(
                             "one row per raw tile: " + ", ".join(UNIT_COLUMNS), **about))


def _check_projectable(model, image_shape, layers, token_grid=None, class_token=None) -> dict:
    """``{layer: output shape}`` (a token layer's on its grid); a ``ValueError`` for a layer
    the deconvnet cannot project (a 3-D output that is no token grid, say), naming the
    layers it can."""
    shapes = dict(probes.layer_output_shapes(model, image_shape))
    grids = tokens.token_layers(shapes, image_shape, token_grid, class_token)
    for path in layers:
        shape = shapes.get(path)
        if shape is None or len(shape) in (2, 4):
            continue
        if path in grids:
            h, w, _ = grids[path]
            shapes[path] = (shape[0], h, w, shape[-1])
            continue
        fitting = [p for p, s in shapes.items() if len(s) == 4] + list(grids)
        if len(shape) == 3:
            told = "" if token_grid is None else f" with token_grid={tuple(token_grid)}"
            raise ValueError(
                f"layer {path!r} outputs {shape[1]} tokens of {shape[2]} channels, which form no "
                f"grid of patch tokens for images of {tuple(image_shape[:2])}{told} (T = h*w at "
                "the image's aspect ratio, after a class token or none); say the grid with "
                "token_grid=(h, w) and class_token=. Spatial and token layers of this model: "
                f"{', '.join(fitting) or '(none)'}")
        raise ValueError(
            f"layer {path!r} outputs values of shape (N,) + {shape[1:]}; the deconvnet projects "
            "units of a spatial feature map (N, H, W, C), of a vision transformer's patch "
            "tokens (N, T, D) or of a flat (N, features) layer back through the layers before "
            f"it. Spatial and token layers of this model: {', '.join(fitting) or '(none)'}")
    return shapes


# -- display helpers (no analysis here: just turning arrays into tiles) ---------------------------

def _display_patches(patches):
    """Scanned input patches as uint8 RGB by the rule of :func:`tiles_lib.for_display`,
    applied to all of them at once (a dark crop of a [0, 255] image alone could pass for
    a [0, 1] one)."""
    flat = tiles_lib.for_display(np.concatenate(
        [p.reshape(1, 1, -1, p.shape[-1]) for p in patches], axis=2))[0, 0]
    ends = np.cumsum([p.shape[0] * p.shape[1] for p in patches])[:-1]
    return [f.reshape(p.shape[:2] + (3,)) for f, p in zip(np.split(flat, ends), patches)]


def _spread(firing, n_channels, n, seed):
    """``n`` feature maps drawn at random (``seed``) among those that fire, sorted; maps that
    do not fire fill up where too few do."""
    rng = np.random.default_rng(seed)
    rest = sorted(set(range(n_channels)) - set(firing))
    fill = max(n - len(firing), 0)
    pick = list(rng.permutation(firing)[:n]) + list(rng.permutation(rest)[:fill])
    return sorted(int(c) for c in pick)


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

