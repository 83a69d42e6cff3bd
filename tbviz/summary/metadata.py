"""The contract between tbviz's callbacks (writers) and its dashboard (reader).

Like TensorBoard's own plugins (``tensorboard/plugins/scalar/metadata.py``), writer
and reader agree through summary metadata alone, and this module is the one place
that names what they agree on: the plugin names, the panel kinds and the version.

Two plugin names are written:

* :data:`PLUGIN_NAME` (``"tbviz"``): *panels*, drawn by the tbviz tab;
* :data:`RAW_PLUGIN_NAME` (``"tbviz_raw"``): raw tensors for later tools (opt-in,
  e.g. ``DeconvnetCallback(raw=True)``); no dashboard draws them.

A panel summary is written with

* ``plugin_data.plugin_name == PLUGIN_NAME``,
* ``data_class == DATA_CLASS_BLOB_SEQUENCE`` (so TensorBoard's data provider
  serves each image lazily, as it does for the Images dashboard),
* ``plugin_data.content`` = JSON of what does not change over steps:
  ``{"version": VERSION, "kind": ..., "layer": ..., "layer_index": ..., ...}``
  (``layer_index``: the layer's position in its network, for the dashboard's layer
  picker; optional ``model``: that network's name, so layers of two networks logged
  in one run, e.g. a transform-net and VGG19, are listed apart),
* a 1-D string tensor per step: ``[json_bytes, image_1, ..., image_n]``. Blob 0 is
  JSON describing this step's tiles (``{"tiles": [{...}, ...], "groups": [...]}``);
  blobs 1..n are images of the tiles (lossless WebP, see :func:`encode_image`, or
  PNG; a reader tells them apart by their first bytes, :func:`image_mime`), in the
  order the JSON lists them, except the tiles that carry a ``crop`` (version 2): those
  have no image of their own, the dashboard cuts them out of image ``source`` of the
  panel named by the content's ``sources`` tag (blob ``source + 1`` of a PROBES
  panel, or of any panel whose image i is image i of what was looked at, such as the
  STYLIZED panel the style pipeline's VGG19 looks at) at the tile's ``source_step``
  (a fixed array of probe images is written once per run, at its first step) or, without
  one, at the same step:
  ``"crop": [top, bottom, left, right]`` in the pixels of that image, whose size is
  the content's ``source_size``, ``[height, width]``. So an input patch is stored
  once, as part of its probe image, however many units and layers show it. A tile
  may name its own ``sources`` and ``source_size`` instead (an evolution tile that is
  also a top-k tile is the whole of that top-k panel's image ``source``).

Kinds written today (tags under ``tbviz/``):

============= ========================================== ===============================
kind          tag                                        tiles
============= ========================================== ===============================
TOPK          ``tbviz/deconvnet/<layer>/topk``           k projections then k patches
EVOLUTION     ``tbviz/deconvnet/<layer>/evolution``      fixed feature maps' strongest
FEATUREMAPS   ``tbviz/deconvnet/<layer>/featuremaps``    per fixed map (a group): its
                                                         top-k projections, then patches
PERIMAGE      ``tbviz/deconvnet/<layer>/perimage``       each probe image's strongest
STYLIZED      ``tbviz/stylized/<name>``                  stylized probe photos
ATTRIBUTION   ``tbviz/attribution/<method>``             heatmaps over the probe images
PROBES        ``tbviz/deconvnet/<model>/probes``         the images a deconvnet looked at
============= ========================================== ===============================

**Read beside the panels:** :class:`~tbviz.callbacks.convergence.ConvergenceCallback`'s
scalars ``convergence/<layer>/vs_previous`` (whose description states the rule) and its
text events ``convergence/<layer>/settled``, written by :func:`settled_message` and read
back by :func:`parse_settled`: the tab marks the step at which each layer settled in that
layer's evolution (:func:`match_layer` pairs a panel's layer with a watched layer).

**Adding a kind** takes two lines: a constant here (``SALIENCY_GRID = "saliency_grid"``,
added to :data:`KINDS`), and one row in ``VIEWS`` of ``tbviz/plugin/static/index.js``
(``{kind: "saliency_grid", label: ..., layered: ..., steps: ..., draw: ...}``) naming
its renderer (a module of ``static/views/``) and whether it is per layer. The callback then writes it with
:func:`write_panel`. A panel of a kind without a row is listed by the tab as not shown.

**The version** is that of the panel format (content and blob layout), not of tbviz.
Bump :data:`VERSION` only when an older dashboard would mis-draw the new panels; the
dashboard's server reads versions 1..VERSION and reports any other as written by a
newer tbviz (see :func:`parse_panel_metadata`) instead of drawing it.

Example:
    >>> import tempfile, numpy as np
    >>> from tbviz.summary import metadata
    >>> from tbviz.summary.events import EventWriter
    >>> w = EventWriter.open(tempfile.mkdtemp())
    >>> image = metadata.encode_image(np.zeros((4, 4, 3), np.uint8))
    >>> with w.as_default(step=1):
    ...     _ = metadata.write_panel("tbviz/stylized/probes", metadata.STYLIZED, [image],
    ...                              tiles=[{"label": "photo 0"}])
    >>> md = metadata.create_panel_metadata(metadata.TOPK, layer="conv1")
    >>> metadata.parse_panel_metadata(md.plugin_data.content)["layer"]
    'conv1'
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
from PIL import Image
from tensorboard.compat.proto import summary_pb2

#: Plugin name of the panels the tbviz tab draws.
PLUGIN_NAME = "tbviz"
#: Plugin name of raw tensors for later tools (no dashboard draws them).
RAW_PLUGIN_NAME = "tbviz_raw"
#: Version of the panel format this build writes, and the newest it reads. 2: tiles may
#: be crops of a PROBES panel's images instead of images of their own. 3: tile images may
#: be lossless WebP (a version-2 dashboard serves PNGs only).
VERSION = 3

#: Panel kinds: one constant each, and one row in ``VIEWS`` of ``static/index.js``.
TOPK = "topk"
EVOLUTION = "evolution"
STYLIZED = "stylized"
ATTRIBUTION = "attribution"
PROBES = "probes"
FEATUREMAPS = "featuremaps"
PERIMAGE = "perimage"
KINDS = (TOPK, EVOLUTION, STYLIZED, ATTRIBUTION, PROBES, FEATUREMAPS, PERIMAGE)

#: ConvergenceCallback's tags (``{layer}`` is the layer's path), read by the tab.
CONVERGENCE_TAG = "convergence/{layer}/vs_previous"
SETTLED_TAG = "convergence/{layer}/settled"
_SETTLED = re.compile(r"layer (?P<layer>.+) settled at step (?P<step>-?[0-9]+)")

#: zlib level of :func:`encode_png`. 6 (PNG's usual) is 8-9% smaller than 1 on the style
#: pipeline's deconvnet tiles for a few ms more per tile; 9 saves 1% more at four times that.
PNG_COMPRESS_LEVEL = 6

#: Pillow options of :func:`encode_image`: lossless WebP, every pixel kept. On the style
#: pipeline's tiles at 256 px it is 21% smaller than PNG level 6, on its photos 13%
#: (README, "A light run"); ``method=4, quality=50`` (the encoder's effort) keeps it near
#: PNG's speed on tiles (1 ms a tile, 0.1 s a 256 px photo); more effort saves under 1%.
#: ``{"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL}`` writes PNGs instead.
IMAGE_OPTIONS = {"format": "WEBP", "lossless": True, "method": 4, "quality": 50}


class PanelError(ValueError):
    """A summary under :data:`PLUGIN_NAME` that this build cannot read; the message says why."""


def encode_png(image) -> bytes:
    """PNG bytes of a ``uint8`` ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` array.

    >>> encode_png(np.zeros((2, 2, 3), np.uint8))[:4]
    b'\\x89PNG'
    """
    return _encode(image, "encode_png", {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL})


def encode_image(image) -> bytes:
    """A panel tile's bytes (:data:`IMAGE_OPTIONS`: lossless WebP) of a ``uint8`` ``(H, W)``,
    ``(H, W, 1)`` or ``(H, W, 3)`` array; decoded, it gives back every pixel (gray as RGB).

    >>> tile = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    >>> data = encode_image(tile)
    >>> image_mime(data), np.array_equal(np.asarray(Image.open(io.BytesIO(data))), tile)
    ('image/webp', True)
    """
    arr = np.asarray(image)
    if IMAGE_OPTIONS.get("format") == "WEBP" and (arr.ndim == 2 or arr.shape[-1:] == (1,)):
        arr = np.repeat(arr.reshape(arr.shape[:2] + (1,)), 3, axis=-1)  # WebP has no gray
    return _encode(arr, "encode_image", IMAGE_OPTIONS)


def image_mime(data: bytes) -> str:
    """The MIME type of a panel image's bytes: ``"image/webp"`` or ``"image/png"``.

    >>> image_mime(encode_png(np.zeros((2, 2), np.uint8)))
    'image/png'
    """
    return "image/webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else "image/png"


def _encode(image, name, options) -> bytes:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} needs uint8, got {arr.dtype}; normalize first")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, **options)
    return buf.getvalue()


def create_panel_metadata(kind: str, description: str = "",
                          **content) -> summary_pb2.SummaryMetadata:
    """Summary metadata of a panel of ``kind`` whose static ``content`` is JSON-able.

    >>> create_panel_metadata("histogram")
    Traceback (most recent call last):
    ...
    ValueError: unknown panel kind 'histogram'; choose one of topk, evolution, stylized, attribution, probes, featuremaps, perimage
    """
    if kind not in KINDS:
        raise ValueError(f"unknown panel kind {kind!r}; choose one of {', '.join(KINDS)}")
    payload = {"version": VERSION, "kind": kind, **content}
    return _metadata(PLUGIN_NAME, summary_pb2.DATA_CLASS_BLOB_SEQUENCE, payload, description)


def parse_panel_metadata(content: bytes) -> dict:
    """The content written by :func:`create_panel_metadata`, checked for the reader.

    Raises :class:`PanelError` saying why when the content is not JSON, names no
    known kind, or carries a version this build does not read (a newer tbviz wrote it).

    >>> try:
    ...     parse_panel_metadata(b'{"version": 9, "kind": "topk"}')
    ... except PanelError as err:
    ...     print(err)
    panel format version 9 is newer than this tbviz reads (3); upgrade tbviz to see it
    """
    try:
        data = json.loads(content.decode("utf-8") if isinstance(content, bytes) else content)
    except (UnicodeDecodeError, ValueError, RecursionError):  # (deep nesting: RecursionError)
        raise PanelError("unreadable panel metadata (not JSON)") from None
    if not isinstance(data, dict):
        raise PanelError("unreadable panel metadata (not a JSON object)")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PanelError(f"panel metadata has no valid version (got {version!r})")
    if version > VERSION:
        raise PanelError(f"panel format version {version} is newer than this tbviz reads "
                         f"({VERSION}); upgrade tbviz to see it")
    if data.get("kind") not in KINDS:
        raise PanelError(f"unknown panel kind {data.get('kind')!r} (this tbviz knows "
                         f"{', '.join(KINDS)}); upgrade tbviz to see it")
    return data


def parse_header(blob: bytes) -> dict:
    """Inverse of blob 0 of a panel step: ``{"tiles": [...], "groups": [...]}``."""
    return json.loads(blob.decode("utf-8"))


def write_panel(tag: str, kind: str, pngs, tiles, step=None, description: str = "",
                groups=None, **content):
    """Write one panel step: ``tiles`` (list of dicts) describe ``pngs`` (encoded images,
    :func:`encode_image`) one to one, except tiles with a ``crop``, which are cut from
    the ``sources`` panel (see above).

    Must run under a default writer (``with writer.as_default(step=...)``).
    Returns False without a default writer.
    """
    # Imported here, not at the top: the dashboard imports this module inside the
    # TensorBoard server, which needs none of the writing side.
    from tbviz.summary import events

    pngs = list(pngs)
    own = [t for t in tiles if "crop" not in t]
    if len(pngs) != len(own):
        raise ValueError(f"{len(pngs)} images but {len(own)} tile descriptions without a crop")
    if any("sources" not in t for t in tiles if "crop" in t) and "sources" not in content:
        raise ValueError("tiles with a crop need the sources tag they are cut from "
                         "(sources=..., source_size=[height, width])")
    header = json.dumps({"tiles": list(tiles), "groups": groups or []}, default=_jsonable)
    blobs = [header.encode("utf-8")] + pngs
    return events.tensor(tag, blobs, step=step,
                         metadata=create_panel_metadata(kind, description, **content))


def settled_message(layer: str, step: int) -> str:
    """The text of a ``convergence/<layer>/settled`` event: ``layer`` settled at ``step``.

    >>> settled_message("block/conv", 40)
    'layer block/conv settled at step 40'
    >>> parse_settled(settled_message("block/conv", 40))
    ('block/conv', 40)
    """
    return f"layer {layer} settled at step {int(step)}"


def parse_settled(message) -> tuple[str, int] | None:
    """``(layer, step)`` of a :func:`settled_message`; None for any other text."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    found = _SETTLED.fullmatch(str(message).strip())
    return (found["layer"], int(found["step"])) if found else None


def match_layer(layer: str, model: str | None, watched) -> str | None:
    """The watched (convergence) layer path that is a panel's ``layer`` of network ``model``.

    Paths differ when the two callbacks see the layer from different networks, e.g. the
    deconvnet on a VGG19 nested in the trained model (``block1_conv1`` of ``vgg19``) and
    the convergence scalars on the trained model (``vgg19/block1_conv1``). Tried in
    order: the same path; ``model/layer``; the one watched path that ends with the
    panel's (or whose path the panel's ends with) at a ``/``. None when nothing or
    several paths fit.

    >>> match_layer("block1_conv1", "vgg19", ["vgg19/block1_conv1", "vgg19/block2_conv1"])
    'vgg19/block1_conv1'
    >>> match_layer("transform_net/res1/conv", None, ["res1/conv"])
    'res1/conv'
    >>> match_layer("conv", None, ["a/conv", "b/conv"]) is None  # two fit: say none
    True
    """
    watched = list(watched)
    if layer in watched:
        return layer
    if model and f"{model}/{layer}" in watched:
        return f"{model}/{layer}"
    fits = [w for w in watched if w.endswith("/" + layer) or layer.endswith("/" + w)]
    return fits[0] if len(fits) == 1 else None


def create_raw_metadata(description: str = "", **content) -> summary_pb2.SummaryMetadata:
    """Summary metadata of a raw tensor (plugin :data:`RAW_PLUGIN_NAME`) with JSON ``content``.

    >>> md = create_raw_metadata("float16 projections", layer="conv1")
    >>> md.plugin_data.plugin_name, parse_raw_metadata(md.plugin_data.content)["layer"]
    ('tbviz_raw', 'conv1')
    """
    payload = {"version": VERSION, **content}
    return _metadata(RAW_PLUGIN_NAME, summary_pb2.DATA_CLASS_TENSOR, payload, description)


def parse_raw_metadata(content: bytes) -> dict:
    """The content written by :func:`create_raw_metadata` (``{}`` plus ``version`` if empty)."""
    data = json.loads(content.decode("utf-8") if isinstance(content, bytes) else content)
    if not isinstance(data, dict):
        raise PanelError("unreadable raw-tensor metadata (not a JSON object)")
    return data


def _metadata(plugin_name, data_class, payload, description):
    md = summary_pb2.SummaryMetadata(summary_description=description, data_class=data_class)
    md.plugin_data.plugin_name = plugin_name
    md.plugin_data.content = json.dumps(payload, sort_keys=True).encode("utf-8")
    return md


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
