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

A panel is served only when :func:`tbviz.plugin.validate.panel` accepts its metadata (a
version and kind this build reads, fields of the types the tab reads); any other is listed
under ``problems`` with the reason (e.g. written by a newer tbviz) and never drawn, and
every good panel of the run still is. Each step's header is checked
(:func:`tbviz.plugin.validate.header`): a step that cannot be drawn comes back from
``/frames`` with an ``error`` saying why, beside the good steps; ``/blob`` and
``/animation`` answer 422 naming the panel, step and tile. No malformed event file makes
a route answer 500: what no check foresaw is answered 422 too (and logged).

**Bounded work per request.** ``/blob`` serves stored bytes, their size read from the
image's header first; only ``/animation`` decodes, within a pixel budget checked before
any pixel is decoded (its layout is planned from the images' headers): each image at most
:data:`~tbviz.plugin.validate.MAX_IMAGE_SIDE` px a side, each frame at most
:data:`MAX_FRAME_PIXELS` and all frames together at most :data:`MAX_ANIMATION_PIXELS`
pixels (413 otherwise, saying the limit and the request's size). Frames are made one at a
time, and at most :data:`MAX_ANIMATIONS` animations at once (the others wait up to
:data:`ANIMATION_WAIT_S` seconds, then get 429). ``scripts/bench_plugin.py`` measures
what the largest allowed animation costs the server.

**Names.** Any run or tag name works on every route (downloads name the file with RFC
5987's ``filename*``), except where TensorBoard's own data server cannot read it: with the
default fast loading, images of a run or tag whose name holds ``"`` or ``\\`` cannot be
read (its blob keys fail, for TensorBoard's Images dashboard too); the routes then answer
422 naming ``--load_fast=false``, which reads them.

Every run, tag and step is looked up in what the data provider lists; nothing
in a request is ever used as a file path (the static files are the ones found at load). Lists are paged (``total`` and
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
import contextlib
import ctypes
import functools
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers, wsgi

from tbviz.plugin import animation, validate
from tbviz.summary import metadata
from tbviz.summary.metadata import PanelError

logger = logging.getLogger(__name__)

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
#: Most tiles one ``/animation`` may read (steps x tiles a step): 500 steps of an
#: evolution of 16 feature maps with their patches fit.
MAX_ANIMATION_TILES = 20_000
#: Most pixels of one frame of an ``/animation``, as laid out: a 2048 px probe photo, or
#: four of 1024 px, fit; so do 9 tiles of 256 px with their patches beside them.
MAX_FRAME_PIXELS = 5 * 2**20
#: Most pixels of one ``/animation``: frames x frame pixels. 500 steps of an evolution of 9
#: feature maps at 64 px fit (about 450 with their patches beside them); 500 steps of 9
#: tiles at 256 px do not. What the largest allowed animation costs the server is measured
#: by scripts/bench_plugin.py (worst case: tiles of noise, which do not compress).
MAX_ANIMATION_PIXELS = 40 * 2**20
#: Animations made at once; the others wait (see :data:`ANIMATION_WAIT_S`).
MAX_ANIMATIONS = 2
#: Longest wait (seconds) for a turn to make an animation before answering 429.
ANIMATION_WAIT_S = 300
_CONVERGENCE = re.compile("^" + re.escape(metadata.CONVERGENCE_TAG).replace(
    re.escape("{layer}"), "(?P<layer>.+)") + "$")
_SETTLED = re.compile("^" + re.escape(metadata.SETTLED_TAG).replace(
    re.escape("{layer}"), "(?P<layer>.+)") + "$")
#: Browser cache lifetime of a tile (seconds). Tiles of a step never change.
IMAGE_MAX_AGE = 24 * 3600
#: How long (seconds) a listed series answers tile requests before it is listed again.
SERIES_TTL = 2.0
#: An animation larger than this (bytes) is written to a temporary file, not memory.
SPOOL_BYTES = 8 * 2**20
#: Steps whose headers an animation's plan reads at once (and holds: no more).
PLAN_BATCH = 16
#: Decoded crop sources an animation keeps for the next steps (pixels): probe images
#: written once per run are then decoded once.
SOURCE_CACHE_PIXELS = 16 * 2**20

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="tbviz")
_ANIMATIONS = threading.BoundedSemaphore(MAX_ANIMATIONS)
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
_INT = re.compile(r"-?[0-9]{1,18}")
# The data server (Rust) parses its blob keys as borrowed JSON strings: an escaped
# character in a run or tag name makes every blob of it unreadable.
_FAST_UNSAFE = re.compile(r'["\\]')


class UnreadablePanelError(errors.PublicError):
    """A panel the event files hold that cannot be served as asked (malformed, or not
    readable by the data server): HTTP 422, the message names the panel and the reason."""

    http_code = 422


class TooLargeError(errors.PublicError):
    """A request over the work budget: HTTP 413, the message names the limit and the size."""

    http_code = 413


class BusyError(errors.PublicError):
    """Every animation slot is taken: HTTP 429 with ``Retry-After``."""

    http_code = 429

    def __init__(self, details, retry_after: int = 10):
        super().__init__(details)
        self.headers = [("Retry-After", str(retry_after))]


def _route(handler):
    """A route whose every failure is a 4xx saying why: the errors it raises on purpose,
    and anything else a malformed event file could still cause (logged with its
    traceback, answered 422), so that one bad panel never costs a 500."""

    @functools.wraps(handler)
    def guarded(self, request):
        try:
            return handler(self, request)
        except errors.PublicError:
            raise
        except PanelError as err:
            raise UnreadablePanelError(f"{_what(request)}: {err}") from None
        except Exception as err:  # noqa: BLE001 (the point: no 500, whatever the data)
            logger.warning("tbviz %s failed on %s", request.path, _what(request), exc_info=True)
            raise UnreadablePanelError(f"{_what(request)}: could not be served "
                                       f"({type(err).__name__}: {validate.short(err)})") from None

    return wrappers.Request.application(guarded)


def _what(request) -> str:
    """The panel a request is about, for its error message."""
    run, tag = request.args.get("run"), request.args.get("tag")
    return f"run {run!r}, tag {tag!r}" if run or tag else request.path


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
        apps = {route: _static(path, mime) for route, (path, mime) in static_files().items()}
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
    @_route
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

    @_route
    def _serve_steps(self, request):
        offset, limit = _page(request)
        data = self._series(request)
        items = [{"step": d.step, "wall_time": d.wall_time} for d in data[offset:offset + limit]]
        return _json(request, _paged(items, offset, len(data)))

    @_route
    def _serve_frames(self, request):
        raw = _arg(request, "steps")
        steps = raw.split(",")
        if len(steps) > MAX_FRAMES:
            raise errors.InvalidArgumentError(
                f"at most {MAX_FRAMES} steps per request, got {len(steps)}; ask in pages")
        steps = [_int("steps", s) for s in steps]
        run, tag = _arg(request, "run"), _arg(request, "tag")
        by_step = {d.step: d for d in self._series(request)}
        data = [_lookup(by_step, step) for step in steps]
        ctx, eid = _context(request)
        panel = self._panel(ctx, eid, run, tag)
        # One data-provider round trip per header: overlap them.
        headers = _POOL.map(lambda d: self._header(ctx, d, run, tag, panel), data)
        frames = [{"step": d.step, "wall_time": d.wall_time, **header}
                  for d, header in zip(data, headers)]
        return _json(request, {"frames": frames})

    @_route
    def _serve_blob(self, request):
        step = _int("step", _arg(request, "step"))
        index = _int("index", _arg(request, "index"))
        run, tag = _arg(request, "run"), _arg(request, "tag")
        datum = _lookup({d.step: d for d in self._series(request)}, step)
        if not 1 <= index < len(datum.values):
            raise errors.NotFoundError(
                f"step {step} has tiles 1..{len(datum.values) - 1}, not {index}"
                if len(datum.values) > 1 else f"step {step} has no images")
        ctx, _ = _context(request)
        image = self._read(ctx, datum.values[index], run, tag)
        try:
            validate.image_size(image)  # its header only: the browser decodes it
        except PanelError as err:
            raise UnreadablePanelError(
                f"run {run!r}, tag {tag!r}, step {step}, image {index}: {err}") from None
        return http_util.Respond(request, image, metadata.image_mime(image),
                                 expires=IMAGE_MAX_AGE)

    @_route
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
        by_step = {d.step: d for d in self._series(request)}
        raw = request.args.get("steps")
        steps = [_int("steps", s) for s in raw.split(",")] if raw else sorted(by_step)
        if len(steps) > MAX_ANIMATION_FRAMES:
            raise errors.InvalidArgumentError(
                f"at most {MAX_ANIMATION_FRAMES} steps per animation, got {len(steps)}")
        data = [_lookup(by_step, step) for step in steps]
        panel = self._panel(ctx, eid, run, tag)
        settled = self._settled_of(ctx, eid, run, panel)
        labels = [_label(d.step, settled, by_step) for d in data]
        # Made whole before answering (a failing step still gets its 4xx), into a file
        # that is then sent from: the animation itself never sits in the server's memory.
        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            with _animation_turn():
                try:
                    maker = _Animation(self, ctx, eid, run, tag, panel, patches)
                    animation.write(maker.frames(data, labels, maker.plan(data)), fmt, out,
                                    duration)
                finally:
                    maker = None
                    _give_memory_back()
        except BaseException:
            out.close()
            raise
        size = out.tell()
        out.seek(0)
        name = f"{run}-{tag}{animation.FORMATS[fmt][2]}"
        headers = [("Content-Length", str(size)), ("Content-Disposition", attachment(name)),
                   ("X-Content-Type-Options", "nosniff"),
                   ("Cache-Control", "no-cache, must-revalidate")]
        # wrap_file closes (and so deletes) the file once it is sent.
        return wrappers.Response(wsgi.wrap_file(request.environ, out),
                                 mimetype=animation.FORMATS[fmt][1], headers=headers,
                                 direct_passthrough=True)

    # -- data ---------------------------------------------------------------------------------
    def _read(self, ctx, blob, run: str, tag: str) -> bytes:
        """The bytes of ``blob`` (a blob reference of ``run``/``tag``), or a 422 saying why
        the data server could not read them."""
        try:
            return self._provider.read_blob(ctx, blob_key=blob.blob_key)
        except Exception as err:  # noqa: BLE001 (each provider raises its own kinds)
            if _FAST_UNSAFE.search(run) or _FAST_UNSAFE.search(tag):
                raise UnreadablePanelError(
                    f"run {run!r}, tag {tag!r}: TensorBoard's data server (the default fast "
                    'loading) cannot read images of a run or tag whose name holds " or \\ '
                    "(its Images dashboard cannot either); start tensorboard with "
                    "--load_fast=false to see them") from None
            raise UnreadablePanelError(f"run {run!r}, tag {tag!r}: the data server could not "
                                       f"read a blob ({validate.short(err)})") from None

    def _header(self, ctx, datum, run, tag, panel) -> dict:
        """The checked header of one step (:func:`tbviz.plugin.validate.header`)."""
        if not datum.values:
            return validate.header(None, 0, panel)
        blob = self._read(ctx, datum.values[0], run, tag)
        return validate.header(blob, len(datum.values) - 1, panel)

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
        """The checked content of one panel, as ``/panels`` lists it."""
        listing = self._provider.list_blob_sequences(
            ctx, experiment_id=eid, plugin_name=PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]))
        series = listing.get(run, {}).get(tag)
        if series is None:
            raise errors.NotFoundError(f"no tbviz panel {tag!r} in run {run!r}")
        try:
            return validate.panel(series.plugin_content)
        except PanelError as err:
            raise UnreadablePanelError(f"run {run!r}, tag {tag!r} not shown: {err}") from None

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


class _Animation:
    """One ``/animation`` of a panel: :meth:`plan` reads every step's header and its images'
    sizes (no pixel decoded) and checks the budget; :meth:`frames` then decodes one step
    at a time, crops cut from their sources (as the tab cuts them; see
    :mod:`tbviz.summary.metadata`)."""

    def __init__(self, plugin, ctx, eid, run, tag, panel, patches):
        self.plugin, self.ctx, self.eid, self.run, self.tag = plugin, ctx, eid, run, tag
        self.panel, self.patches = panel, patches
        self._by_step = {}  # sources tag -> {step: datum}
        self._shapes = {}  # (tag, step, index) of a crop source -> (height, width)
        self._sources = {}  # (tag, step, index) -> decoded crop source

    def plan(self, data) -> animation.Layout:
        """The layout of the animation of ``data`` (steps), or a 413 when it is over budget.
        Steps are read a batch at a time, their headers kept no longer than their batch."""
        shapes, n_tiles = [], 0
        for at in range(0, len(data), PLAN_BATCH):
            batch = data[at:at + PLAN_BATCH]
            headers = list(_POOL.map(self._checked_header, batch))
            n_tiles += sum(len(h["tiles"]) for h in headers)
            if n_tiles > MAX_ANIMATION_TILES:
                raise TooLargeError(
                    f"an animation reads at most {MAX_ANIMATION_TILES:,} tiles (steps x tiles "
                    f"a step); these {len(data)} steps hold more: ask fewer steps")
            shapes += _POOL.map(self._cell_shapes, batch, headers)
        try:
            plan = animation.layout(shapes)
        except ValueError as err:
            raise PanelError(str(err)) from None
        total = plan.pixels * len(data)
        if plan.pixels > MAX_FRAME_PIXELS or total > MAX_ANIMATION_PIXELS:
            raise TooLargeError(
                f"an animation may hold {MAX_ANIMATION_PIXELS:,} pixels (frames x frame "
                f"pixels), each frame at most {MAX_FRAME_PIXELS:,}; this one would be "
                f"{len(data)} frames of {plan.width}x{plan.height} = {total:,} pixels: ask "
                "fewer steps" + (", or leave out the patches" if self.patches else ""))
        return plan

    def frames(self, data, labels, plan):
        """The frames of :meth:`plan`'s steps, made one at a time."""
        for d, label in zip(data, labels):
            tiles = self._checked_header(d)["tiles"]
            cells = animation.pairs(tiles, self.patches)
            needed = [i for pair in cells for i in pair if i is not None]
            pictures = dict(zip(needed, _POOL.map(lambda i: self._picture(d, tiles, i), needed)))
            yield animation.frame(animation.cells(tiles, pictures, self.patches), label, plan)
            del pictures

    def _checked_header(self, datum) -> dict:
        header = self.plugin._header(self.ctx, datum, self.run, self.tag, self.panel)
        if header.get("error"):
            raise PanelError(f"step {datum.step}: {header['error']}")
        return header

    def _cell_shapes(self, datum, header) -> list:
        """``(height, width)`` of each cell of one step, from its images' headers."""
        tiles = header["tiles"]
        return [animation.cell_shape(self._shape(datum, tiles, i), k is not None)
                for i, k in animation.pairs(tiles, self.patches)]

    def _locate(self, datum, tiles, k):
        """``(tag, datum, index, crop, source_size)``: where tile ``k``'s image is (blob
        ``index`` of ``datum`` of ``tag``) and, for a crop, what to cut from it."""
        t = tiles[k]
        if "crop" not in t:
            index = sum(1 for x in tiles[:k + 1] if "crop" not in x)
            return self.tag, datum, index, None, None
        tag = t.get("sources") or self.panel.get("sources")
        step = t.get("source_step", datum.step)
        if tag not in self._by_step:
            try:
                series = self.plugin._series_of(self.ctx, self.eid, self.run, tag)
            except errors.NotFoundError:
                raise PanelError(f"step {datum.step}, tile {k}: its sources panel {tag!r} is "
                                 "not in this run") from None
            self._by_step[tag] = {d.step: d for d in series}
        source = self._by_step[tag].get(step)
        index = t["source"] + 1
        if source is None or not 1 <= index < len(source.values):
            raise PanelError(f"step {datum.step}, tile {k}: {tag} has no image {t['source']} "
                             f"at step {step}")
        return tag, source, index, t["crop"], t.get("source_size") or self.panel["source_size"]

    def _shape(self, datum, tiles, k) -> tuple[int, int]:
        """``(height, width)`` of tile ``k``, from its image's header."""
        return self._tile(datum, tiles, k, decode=False)

    def _picture(self, datum, tiles, k):
        """Tile ``k`` as a ``uint8`` RGB array."""
        return self._tile(datum, tiles, k, decode=True)

    def _tile(self, datum, tiles, k, decode: bool):
        tag, source, index, crop, size = self._locate(datum, tiles, k)
        read = validate.decode if decode else validate.image_size
        if crop is None:
            return self._image(tag, source, index, datum, k, read)
        # Crops share their sources (a probe image is cut for every layer): read each once.
        cache, key = (self._sources if decode else self._shapes), (tag, source.step, index)
        if key not in cache:
            if decode and sum(s.shape[0] * s.shape[1] for s in cache.values()) > \
                    SOURCE_CACHE_PIXELS:
                cache.clear()
            cache[key] = self._image(tag, source, index, datum, k, read)
        whole = cache[key]
        top, bottom, left, right = _crop_box(crop, size, whole.shape if decode else whole,
                                             datum.step, k)
        return whole[top:bottom, left:right] if decode else (bottom - top, right - left)

    def _image(self, tag, source, index, datum, k, read):
        blob = self.plugin._read(self.ctx, source.values[index], self.run, tag)
        try:
            return read(blob)
        except PanelError as err:
            raise PanelError(f"step {datum.step}, tile {k}: {err}") from None


def _crop_box(crop, size, shape, step, k):
    """``crop`` (in pixels of an image of ``size``) in the stored source of ``shape``, whose
    pixels may be of another size than the one crops are given in."""
    sy, sx = shape[0] / size[0], shape[1] / size[1]
    top, bottom = round(crop[0] * sy), round(crop[1] * sy)
    left, right = round(crop[2] * sx), round(crop[3] * sx)
    if bottom <= top or right <= left:
        raise PanelError(f"step {step}, tile {k}: crop {crop} of a {size[0]}x{size[1]} image "
                         f"is empty in the stored {shape[0]}x{shape[1]} image")
    return top, bottom, left, right


@contextlib.contextmanager
def _animation_turn():
    """One of the :data:`MAX_ANIMATIONS` turns to make an animation, or a 429 after
    :data:`ANIMATION_WAIT_S` seconds."""
    if not _ANIMATIONS.acquire(timeout=ANIMATION_WAIT_S):
        raise BusyError(f"{MAX_ANIMATIONS} animations are being made and this one waited "
                        f"{ANIMATION_WAIT_S} s for its turn: try again in a moment")
    try:
        yield
    finally:
        _ANIMATIONS.release()


def _give_memory_back():
    """Return the freed heap of an animation to the system: glibc keeps freed blocks of
    a thread's arena for reuse, which after a large animation is hundreds of MB."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def attachment(name: str) -> str:
    """The ``Content-Disposition`` of a download called ``name``: RFC 6266 with an ASCII
    ``filename`` for old clients and RFC 5987's ``filename*`` keeping every letter (an
    HTTP header holds Latin-1 only).

    >>> print(attachment("фото-tbviz/x.gif"))
    attachment; filename="_-tbviz_x.gif"; filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE-tbviz_x.gif
    """
    readable = re.sub(r"[^\w.-]+", "_", name)
    plain = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return (f'attachment; filename="{plain}"; '
            f"filename*=UTF-8''{urllib.parse.quote(readable, safe='')}")


def static_files() -> dict:
    """``{route: (path, MIME type)}`` of the tab's files: every ``.js`` and ``.css`` under
    ``static/`` (the shell ``index.js``, ``lib/``, ``views/``), found once at load.

    >>> sorted(static_files())[:2]
    ['/index.js', '/lib/dom.js']
    """
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
    out = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            mime = _STATIC_TYPES.get(os.path.splitext(name)[1])
            if mime:
                path = os.path.join(folder, name)
                out["/" + os.path.relpath(path, root).replace(os.sep, "/")] = (path, mime)
    return out


def _static(path, mime):
    @wrappers.Request.application
    def serve(request):
        with open(path, "rb") as f:
            return http_util.Respond(request, f.read(), mime)

    return serve


def _text(value) -> str:
    """A text event's string (a scalar, or the first cell of a text tensor)."""
    try:
        item = value.reshape(-1)[0] if getattr(value, "size", 0) else value
        item = item.item() if hasattr(item, "item") else item
    except (AttributeError, IndexError, ValueError):  # not a text tensor: no message in it
        return ""
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
    """Describe one run's panels. A tag this build cannot read (metadata that
    :func:`tbviz.plugin.validate.panel` refuses: unreadable, a newer panel version, an
    unknown kind, fields of the wrong type) is not drawn: it is listed under ``problems``
    with the reason, for the tab to say, and the run's other panels are listed as ever.
    A panel of a layer in ``watched`` (the run's convergence layers) carries its
    ``convergence`` entry."""
    panels, problems = [], []
    for tag, series in sorted(tags.items()):
        try:
            content = validate.panel(series.plugin_content)
            entry = {**content, "tag": tag, "max_step": series.max_step,
                     "description": series.description}
            if content.get("layer") is not None and watched:
                convergence = _convergence_entry(content, watched)
                if convergence:
                    entry["convergence"] = convergence
        except PanelError as err:
            problems.append({"tag": tag, "error": str(err)})
            continue
        except Exception as err:  # noqa: BLE001 (one panel's surprise must not hide the run)
            logger.warning("tbviz: panel %r not listed", tag, exc_info=True)
            problems.append({"tag": tag, "error": f"could not be read ({type(err).__name__}: "
                                                  f"{validate.short(err)})"})
            continue
        panels.append(entry)
    return {"panels": panels, "skipped": len(problems), "problems": problems}


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
