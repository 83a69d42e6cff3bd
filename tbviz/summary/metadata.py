"""The contract between tbviz's callbacks (writers) and its dashboard (reader).

Like TensorBoard's own plugins, writer and reader agree through summary
metadata alone. A tbviz *panel* summary is written with

* ``plugin_data.plugin_name == "tbviz"``,
* ``data_class == DATA_CLASS_BLOB_SEQUENCE`` (so TensorBoard's data provider
  serves each image lazily, as it does for the Images dashboard),
* ``plugin_data.content`` = JSON of what does not change over steps:
  ``{"version": 1, "kind": ..., "layer": ..., "layer_index": ..., ...}``
  (``layer_index``: the layer's position in its network, for the dashboard's layer
  picker; optional ``model``: that network's name, so layers of two networks logged
  in one run, e.g. a transform-net and VGG19, are listed apart),
* a 1-D string tensor per step: ``[json_bytes, png_1, ..., png_n]``. Blob 0 is
  JSON describing this step's tiles (``{"tiles": [{...}, ...], "groups": [...]}``);
  blobs 1..n are PNG images in the order the JSON lists them.

Kinds written today (tags under ``tbviz/``):

========== =============================================== ===========================
kind       tag                                             tiles
========== =============================================== ===========================
topk       ``tbviz/deconvnet/<layer>/topk``                k projections then k patches
evolution  ``tbviz/deconvnet/<layer>/evolution``           fixed feature maps' strongest
featuremaps ``tbviz/deconvnet/<layer>/featuremaps``        per fixed map (a group): its
                                                           top-k projections, then patches
perimage   ``tbviz/deconvnet/<layer>/perimage``            each probe image's strongest
stylized   ``tbviz/stylized/<name>``                       stylized probe photos
attribution ``tbviz/attribution/<method>``                 heatmaps over the probe images
========== =============================================== ===========================

Example:
    >>> import tempfile, numpy as np, tensorflow as tf
    >>> from tbviz.summary import metadata
    >>> w = tf.summary.create_file_writer(tempfile.mkdtemp())
    >>> png = metadata.encode_png(np.zeros((4, 4, 3), np.uint8))
    >>> with w.as_default(step=1):
    ...     _ = metadata.write_panel("tbviz/stylized/probes", "stylized", [png],
    ...                              tiles=[{"label": "photo 0"}])
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "tbviz"
VERSION = 1
KINDS = ("topk", "evolution", "featuremaps", "perimage", "stylized", "attribution")


def encode_png(image) -> bytes:
    """PNG bytes of a ``uint8`` ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8, got {arr.dtype}; normalize first")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def panel_metadata(kind: str, description: str = "", **content) -> summary_pb2.SummaryMetadata:
    """Summary metadata for a tbviz panel of ``kind`` with static ``content``."""
    if kind not in KINDS:
        raise ValueError(f"unknown panel kind {kind!r}; choose one of {', '.join(KINDS)}")
    payload = {"version": VERSION, "kind": kind, **content}
    md = summary_pb2.SummaryMetadata(
        summary_description=description,
        data_class=summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
    )
    md.plugin_data.plugin_name = PLUGIN_NAME
    md.plugin_data.content = json.dumps(payload, sort_keys=True).encode("utf-8")
    return md


def write_panel(tag: str, kind: str, pngs, tiles, step=None, description: str = "",
                groups=None, **content):
    """Write one panel step: ``tiles`` (list of dicts) describe ``pngs`` one to one.

    Must run under a default writer (``with writer.as_default(step=...)``).
    Returns what ``tf.summary.write`` returns (False without a default writer).
    """
    # Imported here, not at the top: the dashboard imports this module inside the
    # TensorBoard server, which does not load TensorFlow (seconds and memory saved).
    import tensorflow as tf

    pngs = list(pngs)
    if len(pngs) != len(tiles):
        raise ValueError(f"{len(pngs)} images but {len(tiles)} tile descriptions")
    header = json.dumps({"tiles": list(tiles), "groups": groups or []}, default=_jsonable)
    blobs = tf.constant([header.encode("utf-8")] + pngs, dtype=tf.string)
    return tf.summary.write(tag, blobs, step=step,
                            metadata=panel_metadata(kind, description, **content))


def parse_content(content: bytes) -> dict:
    """Inverse of the JSON written by :func:`panel_metadata` (for the dashboard)."""
    data = json.loads(content.decode("utf-8") if isinstance(content, bytes) else content)
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise ValueError("not a tbviz panel")
    return data


def parse_header(blob: bytes) -> dict:
    """Inverse of blob 0 of a panel step: ``{"tiles": [...], "groups": [...]}``."""
    return json.loads(blob.decode("utf-8"))


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
