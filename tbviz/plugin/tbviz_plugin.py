"""HTTP side of the tbviz dashboard: JSON and image routes over TensorBoard's data provider.

The callbacks write *panels* (see :mod:`tbviz.summary.metadata`): blob-sequence
summaries whose blob 0 is a JSON header describing the tiles and whose blobs
1..n are the images (lossless WebP or PNG) of the tiles that are not crops of another
panel's images. This plugin lists and serves them; the page itself
is the static ES module ``static/index.js``.

Routes (under ``/data/plugin/tbviz/``), all read-only:

============== ======================================= ===================================
route          parameters                              answer
============== ======================================= ===================================
``/panels``    ``offset``, ``limit`` (over runs)       ``{"items": [{"run", "panels",
                                                       "problems"}]}``
``/steps``     ``run``, ``tag``, ``offset``, ``limit`` ``{"items": [{"step", "wall_time"}]}``
``/frames``    ``run``, ``tag``, ``steps=1,5,9``       ``{"frames": [{"step", "tiles", ...}]}``
``/blob``      ``run``, ``tag``, ``step``, ``index``   image ``index`` (1-based), WebP or PNG
``/animation`` ``run``, ``tag``, ``steps`` (default:   the panel across those steps as an
               all), ``format=gif|apng``,              animated image, one frame per step
               ``patches=0|1``, ``duration`` (ms)      (:mod:`tbviz.plugin.animation`)
============== ======================================= ===================================

A panel with a ``layer`` that ``ConvergenceCallback`` watched in the same run carries
``"convergence": {"layer", "rule", "settled": [{"step", "said_at"}, ...]}``: the watched
layer it matches (:func:`tbviz.summary.metadata.match_layer`), the rule in words (the
``vs_previous`` scalars' description) and the steps at which it settled, read from the
run's ``convergence/<layer>/settled`` text events (``settled`` is empty while it has
not). The tab marks that step in the layer's evolution, and so does ``/animation``.

A panel is served only when :func:`tbviz.summary.metadata.parse_panel_metadata` reads
its version and kind; any other is listed under ``problems`` with the reason (e.g.
written by a newer tbviz) and never drawn.

Every run, tag and step is looked up in what the data provider lists; nothing
in a request is ever used as a file path. Lists are paged (``total`` and
``next_offset`` tell the client whether to ask again) and ``/frames`` takes at
most :data:`MAX_FRAMES` steps per request.

Example:
    >>> from tensorboard import program, default
    >>> from tbviz.plugin.tbviz_plugin import TbvizLoader
    >>> tb = program.TensorBoard(plugins=default.get_plugins() + [TbvizLoader])
    >>> _ = tb.configure(logdir="runs")
    >>> tb.flags.samples_per_plugin["tbviz"]   # every logged step kept, up to 500
    500
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import time

import numpy as np
from PIL import Image
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tbviz.plugin import animation
from tbviz.summary import metadata

PLUGIN_NAME = metadata.PLUGIN_NAME
#: Steps kept per tbviz tag unless ``--samples_per_plugin tbviz=N`` says otherwise.
#: TensorBoard keeps 10 per tag of an unknown plugin, which would hide most epochs
#: of an evolution grid.
DEFAULT_SAMPLES = 500
#: Largest page of ``/panels`` (runs) and ``/steps`` (steps).
MAX_PAGE = 200
#: Most steps one ``/frames`` request may name.
MAX_FRAMES = 50
#: Most steps (frames) one ``/animation`` may hold: every step kept by default.
MAX_ANIMATION_FRAMES = DEFAULT_SAMPLES
_CONVERGENCE = re.compile("^" + re.escape(metadata.CONVERGENCE_TAG).replace(
    re.escape("{layer}"), "(?P<layer>.+)") + "$")
_SETTLED = re.compile("^" + re.escape(metadata.SETTLED_TAG).replace(
    re.escape("{layer}"), "(?P<layer>.+)") + "$")
#: Browser cache lifetime of a tile (seconds). Tiles of a step never change.
IMAGE_MAX_AGE = 24 * 3600
#: How long (seconds) a listed series answers tile requests before it is listed again.
SERIES_TTL = 2.0

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="tbviz")

_STATIC = {
    "/index.js": ("index.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_INT = re.compile(r"-?[0-9]{1,18}")


class TbvizLoader(base_plugin.TBLoader):
    """Loads :class:`TbvizPlugin`; keeps every logged step of tbviz panels by default."""

    def fix_flags(self, flags):
        # Runs before the data server starts, the only moment its sampling can be set.
        hints = getattr(flags, "samples_per_plugin", None)
        if isinstance(hints, dict):
            hints.setdefault(PLUGIN_NAME, DEFAULT_SAMPLES)

    def load(self, context):
        return TbvizPlugin(context)


class TbvizPlugin(base_plugin.TBPlugin):
    """The "tbviz" tab: Zeiler-Fergus panels, their evolution, stylized probes, attributions."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context):
        self._provider = context.data_provider
        hint = (context.sampling_hints or {}).get(PLUGIN_NAME, DEFAULT_SAMPLES)
        # 0 means "keep all" on the command line; the provider wants a number.
        self._downsample = hint if hint and hint > 0 else 10**9
        self._recent = {}  # (experiment, run, tag) -> (monotonic time, sorted series)

    def get_plugin_apps(self):
        apps = {route: self._static(name, mime) for route, (name, mime) in _STATIC.items()}
        apps.update({
            "/panels": self._serve_panels,
            "/steps": self._serve_steps,
            "/frames": self._serve_frames,
            "/blob": self._serve_blob,
            "/animation": self._serve_animation,
        })
        return apps

    def is_active(self):
        return False  # TensorBoard activates the tab when the provider lists "tbviz" data

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="tbviz",
                                            disable_reload=True)

    # -- routes -------------------------------------------------------------------------------
    def _static(self, name, mime):
        path = os.path.join(os.path.dirname(__file__), "static", name)

        @wrappers.Request.application
        def serve(request):
            with open(path, "rb") as f:
                return http_util.Respond(request, f.read(), mime)

        return serve

    @wrappers.Request.application
    def _serve_panels(self, request):
        offset, limit = _page(request)
        ctx, eid = _context(request)
        listing = self._provider.list_blob_sequences(ctx, experiment_id=eid,
                                                     plugin_name=PLUGIN_NAME)
        runs = sorted(listing)
        page = runs[offset:offset + limit]
        watched = self._convergence(ctx, eid, page)
        items = [{"run": run, **_panels(listing[run], watched.get(run, {}))} for run in page]
        return _json(request, _paged(items, offset, len(runs)))

    @wrappers.Request.application
    def _serve_steps(self, request):
        offset, limit = _page(request)
        data = self._series(request)
        items = [{"step": d.step, "wall_time": d.wall_time} for d in data[offset:offset + limit]]
        return _json(request, _paged(items, offset, len(data)))

    @wrappers.Request.application
    def _serve_frames(self, request):
        raw = _arg(request, "steps")
        steps = raw.split(",")
        if len(steps) > MAX_FRAMES:
            raise errors.InvalidArgumentError(
                f"at most {MAX_FRAMES} steps per request, got {len(steps)}; ask in pages")
        steps = [_int("steps", s) for s in steps]
        by_step = {d.step: d for d in self._series(request)}
        data = [_lookup(by_step, step) for step in steps]
        ctx, _ = _context(request)
        # One data-provider round trip per header: overlap them.
        blobs = _POOL.map(lambda d: self._provider.read_blob(ctx, blob_key=d.values[0].blob_key),
                          data)
        frames = [{"step": d.step, "wall_time": d.wall_time, **_header(blob, len(d.values) - 1)}
                  for d, blob in zip(data, blobs)]
        return _json(request, {"frames": frames})

    @wrappers.Request.application
    def _serve_blob(self, request):
        step = _int("step", _arg(request, "step"))
        index = _int("index", _arg(request, "index"))
        datum = _lookup({d.step: d for d in self._series(request)}, step)
        if not 1 <= index < len(datum.values):
            raise errors.NotFoundError(
                f"step {step} has tiles 1..{len(datum.values) - 1}, not {index}")
        ctx, _ = _context(request)
        image = self._provider.read_blob(ctx, blob_key=datum.values[index].blob_key)
        mime = metadata.image_mime(image)
        if mime == "image/png" and not image.startswith(b"\x89PNG\r\n\x1a\n"):
            raise errors.NotFoundError(f"tile {index} of step {step} is not a PNG or WebP image")
        return http_util.Respond(request, image, mime, expires=IMAGE_MAX_AGE)

    @wrappers.Request.application
    def _serve_animation(self, request):
        fmt = request.args.get("format", "gif")
        if fmt not in animation.FORMATS:
            raise errors.InvalidArgumentError(
                f"format must be one of {', '.join(animation.FORMATS)}, got {fmt!r}")
        duration = _int("duration", request.args.get("duration", str(animation.FRAME_MS)))
        if not 20 <= duration <= 10_000:
            raise errors.InvalidArgumentError(f"duration must be 20..10000 ms, got {duration}")
        patches = request.args.get("patches", "0") == "1"
        run, tag = _arg(request, "run"), _arg(request, "tag")
        ctx, eid = _context(request)
        series = self._series(request)
        by_step = {d.step: d for d in series}
        raw = request.args.get("steps")
        steps = [_int("steps", s) for s in raw.split(",")] if raw else sorted(by_step)
        if len(steps) > MAX_ANIMATION_FRAMES:
            raise errors.InvalidArgumentError(
                f"at most {MAX_ANIMATION_FRAMES} steps per animation, got {len(steps)}")
        data = [_lookup(by_step, step) for step in steps]
        panel = self._panel(ctx, eid, run, tag)
        settled = self._settled_of(ctx, eid, run, panel)
        tiles = _Tiles(self, ctx, eid, run, panel)
        per_step, labels = [], []
        for d in data:
            header = _header(self._provider.read_blob(ctx, blob_key=d.values[0].blob_key),
                             len(d.values) - 1)
            if header.get("error"):
                raise errors.NotFoundError(f"step {d.step} of {tag}: {header['error']}")
            pictures = list(_POOL.map(lambda k: tiles.picture(d, header["tiles"], k),
                                      range(len(header["tiles"]))))
            per_step.append(animation.cells(header["tiles"], pictures, patches))
            labels.append(_label(d.step, settled, by_step))
        body = animation.encode(animation.frames(per_step, labels), fmt, duration)
        name = re.sub(r"[^\w.-]+", "_", f"{run}-{tag}") + animation.FORMATS[fmt][2]
        return http_util.Respond(request, body, animation.FORMATS[fmt][1],
                                 headers=[("Content-Disposition",
                                           f'attachment; filename="{name}"')])

    # -- data ---------------------------------------------------------------------------------
    def _series(self, request):
        """The steps of the validated ``run`` and ``tag`` of a request, sorted by step."""
        run, tag = _arg(request, "run"), _arg(request, "tag")
        ctx, eid = _context(request)
        return self._series_of(ctx, eid, run, tag)

    def _series_of(self, ctx, eid, run, tag):
        # A page asks for dozens of tiles of one series at once; listing the series for each
        # would double every tile's cost. Kept briefly, so new steps still show on reload.
        key, now = (eid, run, tag), time.monotonic()
        hit = self._recent.get(key)
        if hit and now - hit[0] < SERIES_TTL:
            return hit[1]
        data = self._provider.read_blob_sequences(
            ctx, experiment_id=eid, plugin_name=PLUGIN_NAME, downsample=self._downsample,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]))
        series = data.get(run, {}).get(tag)
        if series is None:
            raise errors.NotFoundError(f"no tbviz panel {tag!r} in run {run!r}")
        series = sorted(series, key=lambda d: d.step)
        if len(self._recent) > 256:
            self._recent.clear()
        self._recent[key] = (now, series)
        return series

    def _panel(self, ctx, eid, run, tag) -> dict:
        """The parsed content of one panel, as ``/panels`` lists it."""
        listing = self._provider.list_blob_sequences(
            ctx, experiment_id=eid, plugin_name=PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]))
        series = listing.get(run, {}).get(tag)
        if series is None:
            raise errors.NotFoundError(f"no tbviz panel {tag!r} in run {run!r}")
        try:
            return metadata.parse_panel_metadata(series.plugin_content)
        except metadata.PanelError as err:
            raise errors.NotFoundError(f"{tag} not shown: {err}") from None

    def _convergence(self, ctx, eid, runs) -> dict:
        """``{run: {watched layer: {"rule", "settled": [{"step", "said_at"}]}}}`` from the
        runs' ``ConvergenceCallback`` scalars and settled text events."""
        if not runs:
            return {}
        only = provider.RunTagFilter(runs=list(runs))
        scalars = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name="scalars",
                                              run_tag_filter=only)
        out = {}
        for run, tags in scalars.items():
            for tag, series in tags.items():
                found = _CONVERGENCE.match(tag)
                if found:
                    out.setdefault(run, {})[found["layer"]] = {
                        "rule": series.description or None, "settled": []}
        if not out:
            return out
        texts = self._provider.list_tensors(ctx, experiment_id=eid, plugin_name="text",
                                            run_tag_filter=provider.RunTagFilter(runs=list(out)))
        wanted = {run: [t for t in tags if _SETTLED.match(t)] for run, tags in texts.items()}
        tags = sorted({t for ts in wanted.values() for t in ts})
        if not tags:
            return out
        events = self._provider.read_tensors(
            ctx, experiment_id=eid, plugin_name="text", downsample=self._downsample,
            run_tag_filter=provider.RunTagFilter(runs=list(wanted), tags=tags))
        for run, by_tag in events.items():
            for tag, data in by_tag.items():
                for d in sorted(data, key=lambda d: d.step):
                    said = metadata.parse_settled(_text(d.numpy))
                    layer = _SETTLED.match(tag)["layer"]
                    if said and said[0] == layer and layer in out.get(run, {}):
                        out[run][layer]["settled"].append({"step": said[1], "said_at": d.step})
        return out

    def _settled_of(self, ctx, eid, run, panel):
        """The convergence entry of ``panel``'s layer in ``run`` (see ``/panels``), or None."""
        if panel.get("layer") is None:
            return None
        watched = self._convergence(ctx, eid, [run]).get(run, {})
        return _convergence_entry(panel, watched)


class _Tiles:
    """Tile pictures of one panel as ``uint8`` RGB arrays, crops cut from their sources
    (as the tab cuts them; see :mod:`tbviz.summary.metadata`)."""

    def __init__(self, plugin, ctx, eid, run, panel):
        self.plugin, self.ctx, self.eid, self.run, self.panel = plugin, ctx, eid, run, panel
        self._sources = {}  # (tag, step, index) -> decoded picture

    def picture(self, datum, tiles, k):
        t = tiles[k]
        if not (isinstance(t, dict) and "crop" in t):
            index = sum(1 for x in tiles[:k + 1] if not (isinstance(x, dict) and "crop" in x))
            return _decode(self.plugin._provider.read_blob(
                self.ctx, blob_key=datum.values[index].blob_key))
        tag = t.get("sources") or self.panel.get("sources")
        size = t.get("source_size") or self.panel.get("source_size")
        step = t.get("source_step", datum.step)
        source = self._source(tag, step, int(t["source"]) + 1)
        top, bottom, left, right = (int(v) for v in t["crop"])
        # The source's stored pixels may be of another size than the one crops are given in.
        sy, sx = source.shape[0] / size[0], source.shape[1] / size[1]
        return source[round(top * sy):round(bottom * sy), round(left * sx):round(right * sx)]

    def _source(self, tag, step, index):
        key = (tag, step, index)
        if key not in self._sources:
            series = self.plugin._series_of(self.ctx, self.eid, self.run, tag)
            datum = _lookup({d.step: d for d in series}, step)
            if not 1 <= index < len(datum.values):
                raise errors.NotFoundError(f"{tag} at step {step} has no image {index}")
            self._sources[key] = _decode(self.plugin._provider.read_blob(
                self.ctx, blob_key=datum.values[index].blob_key))
        return self._sources[key]


def _decode(png: bytes):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _text(value) -> str:
    """A text event's string (a scalar, or the first cell of a text tensor)."""
    item = value.reshape(-1)[0] if getattr(value, "size", 0) else value
    item = item.item() if hasattr(item, "item") else item
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _label(step: int, settled, logged) -> str:
    """A frame's label: its step, and whether the panel's layer had settled by then. As in
    the tab, the frame marked "settled" is the first ``logged`` step at or after it.

    >>> entry = {"settled": [{"step": 3, "said_at": 5}]}
    >>> [_label(s, entry, [2, 4, 6]) for s in (2, 4, 6)]
    ['step 2', 'step 4 · settled', 'step 6 · settled since step 3']
    """
    since = [s["step"] for s in (settled or {}).get("settled", []) if s["step"] <= step]
    if not since:
        return f"step {step}"
    first = min((s for s in logged if s >= since[-1]), default=None)
    return f"step {step} · settled" if first == step else \
        f"step {step} · settled since step {since[-1]}"


def _convergence_entry(panel: dict, watched: dict):
    layer = metadata.match_layer(panel["layer"], panel.get("model"), watched)
    return None if layer is None else {"layer": layer, **watched[layer]}


def _panels(tags: dict, watched: dict) -> dict:
    """Describe one run's panels. A tag this build cannot read (unreadable metadata, a newer
    panel version or an unknown kind) is not drawn: it is listed under ``problems`` with
    the reason, for the tab to say. A panel of a layer in ``watched`` (the run's
    convergence layers) carries its ``convergence`` entry."""
    panels, problems = [], []
    for tag, series in sorted(tags.items()):
        try:
            content = metadata.parse_panel_metadata(series.plugin_content)
        except metadata.PanelError as err:
            problems.append({"tag": tag, "error": str(err)})
            continue
        panels.append({"tag": tag, **content, "max_step": series.max_step,
                       "description": series.description})
        if content.get("layer") is not None and watched:
            entry = _convergence_entry(content, watched)
            if entry:
                panels[-1]["convergence"] = entry
    return {"panels": panels, "skipped": len(problems), "problems": problems}


def _header(blob: bytes, n_images: int) -> dict:
    """Blob 0 of a step, checked against the number of images it describes."""
    try:
        header = metadata.parse_header(blob)
        tiles, groups = list(header["tiles"]), list(header.get("groups") or [])
    except (ValueError, KeyError, TypeError):
        return {"tiles": [], "groups": [], "images": n_images, "error": "unreadable header"}
    extra = {k: v for k, v in header.items() if k not in ("tiles", "groups")}
    out = {**extra, "tiles": tiles, "groups": groups, "images": n_images}
    # Tiles with a crop are cut from the panel's sources; the others are its images, in order.
    own = [i for i, t in enumerate(tiles) if not (isinstance(t, dict) and "crop" in t)]
    if len(own) != n_images:
        out["error"] = f"header lists {len(own)} tiles with images for {n_images} images"
        if len(own) > n_images:
            out["tiles"] = tiles[:own[n_images]]
    return out


def _lookup(by_step: dict, step: int):
    if step not in by_step:
        raise errors.NotFoundError(f"no step {step}; logged steps are listed by /steps")
    return by_step[step]


def _context(request):
    return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)


def _arg(request, name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise errors.InvalidArgumentError(f"missing query parameter {name!r}")
    return value


def _int(name: str, value: str) -> int:
    if not _INT.fullmatch(value):
        raise errors.InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _page(request) -> tuple[int, int]:
    offset = _int("offset", request.args.get("offset", "0"))
    limit = _int("limit", request.args.get("limit", str(MAX_PAGE)))
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise errors.InvalidArgumentError(
            f"need offset >= 0 and 1 <= limit <= {MAX_PAGE}, got offset={offset}, limit={limit}")
    return offset, limit


def _paged(items: list, offset: int, total: int) -> dict:
    end = offset + len(items)
    return {"items": items, "offset": offset, "total": total,
            "next_offset": end if end < total else None}


def _json(request, payload):
    # Respond cleanses NaN/Infinity (which a header may hold) into JSON-safe strings.
    return http_util.Respond(request, payload, "application/json")
