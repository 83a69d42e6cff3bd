"""What the dashboard accepts from event files, checked before any route uses it.

Event files come from many runs, versions and people; a panel that is malformed (by a
bug, an old or new writer, or on purpose) must answer a 4xx that names the panel and
the reason, never a 500, and never cost more than the limits below. Pure functions, no
TensorBoard: bytes in, checked values out, or :class:`~tbviz.summary.metadata.PanelError`
whose message says what is wrong and what is allowed.

=========================== ===================================================== =========
limit                       what it bounds                                        value
=========================== ===================================================== =========
:data:`MAX_CONTENT_BYTES`   a panel's metadata (static content) JSON              64 KiB
:data:`MAX_HEADER_BYTES`    a step's header (blob 0) JSON                         512 KiB
:data:`MAX_DEPTH`           nesting of either (tbviz writes 3 levels)             16
:data:`MAX_TILES`           tiles (and groups) of one step                        2048
:data:`MAX_IMAGE_SIDE`      each side of a stored image (tile or crop source)     2048 px
=========================== ===================================================== =========

:func:`panel` checks a panel's metadata, :func:`header` a step's header against its
images, :func:`image_size` and :func:`decode` the images themselves (the size read from
the image's own header, before any pixel is decoded).

Example:
    >>> panel(b'{"version": 3, "kind": "topk", "layer": "conv1", "tag": "forged"}')
    {'version': 3, 'kind': 'topk', 'layer': 'conv1'}
    >>> try:
    ...     panel(b'{"version": 3, "kind": "topk", "layer": 5}')
    ... except PanelError as err:
    ...     print(err)
    panel metadata field 'layer' must be a string, got 5
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
from PIL import Image

from tbviz.summary import metadata
from tbviz.summary.metadata import PanelError

MAX_CONTENT_BYTES = 64 * 1024
MAX_HEADER_BYTES = 512 * 1024
MAX_DEPTH = 16
MAX_TILES = 2048
MAX_IMAGE_SIDE = 2048
#: Image formats a panel may store (see :func:`tbviz.summary.metadata.image_mime`).
IMAGE_FORMATS = ("PNG", "WEBP")

#: Fields of a ``/panels`` entry that the server sets; a panel's content cannot.
SERVER_FIELDS = ("tag", "max_step", "description", "convergence")
_STR, _INT = (str,), (int,)
#: Types of the content fields the dashboard reads (any of them may be absent or null).
CONTENT_FIELDS = {"layer": _STR, "model": _STR, "rule": _STR, "sources": _STR,
                  "method": _STR, "name": _STR, "layer_index": _INT, "k": _INT}
#: Types of the tile fields the server reads (the others are only shown, as text).
TILE_FIELDS = {"role": _STR, "sources": _STR, "source": _INT, "source_step": _INT}


def loads(data, what: str, max_bytes: int):
    """``data`` (bytes or str) parsed as JSON, at most ``max_bytes`` long and
    :data:`MAX_DEPTH` deep; ``what`` names it in the error.

    >>> loads(b'[[1]]', "header", 100)
    [[1]]
    >>> try:
    ...     loads(b'[' * 100000, "header", 10**6)
    ... except PanelError as err:
    ...     print(err)
    header nests deeper than 16 levels
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, (bytes, bytearray)):
        raise PanelError(f"{what} is not bytes (got {type(data).__name__})")
    if len(data) > max_bytes:
        raise PanelError(f"{what} is {len(data):,} bytes, more than the {max_bytes:,} allowed")
    if _bracket_depth(data) > MAX_DEPTH:
        raise PanelError(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PanelError(f"unreadable {what} (not JSON)") from None


def _bracket_depth(data: bytes) -> int:
    """An upper bound of the nesting of JSON ``data`` (brackets in strings count too, so a
    string full of brackets may be refused; tbviz never writes one)."""
    depth = deepest = 0
    for c in data.translate(None, _NOT_BRACKETS):
        depth += 1 if c in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def panel(content) -> dict:
    """A panel's metadata content, checked: JSON of :data:`MAX_CONTENT_BYTES` at most, a
    version and kind this build reads (:func:`tbviz.summary.metadata.parse_panel_metadata`),
    :data:`CONTENT_FIELDS` of their types, ``source_size`` a :func:`size`. The
    :data:`SERVER_FIELDS` are dropped: the server sets them.

    >>> panel(b'{"version": 3, "kind": "stylized", "source_size": [64, 48]}')["source_size"]
    [64, 48]
    >>> try:
    ...     panel(b'{"version": 3, "kind": "topk", "source_size": [0, 0]}')
    ... except PanelError as err:
    ...     print(err)
    panel metadata field 'source_size' must be [height, width], whole numbers 1..2048, got [0, 0]
    """
    loads(content, "panel metadata", MAX_CONTENT_BYTES)  # size and depth, before parsing
    data = metadata.parse_panel_metadata(content)
    for field, types in CONTENT_FIELDS.items():
        _check_type(data.get(field), types, f"panel metadata field {field!r}")
    if data.get("source_size") is not None:
        size(data["source_size"], "panel metadata field 'source_size'")
    return {k: v for k, v in data.items() if k not in SERVER_FIELDS}


def size(value, what: str) -> tuple[int, int]:
    """``[height, width]`` of an image, whole numbers ``1..MAX_IMAGE_SIDE``.

    >>> size([64, 32], "source_size")
    (64, 32)
    """
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)
            and all(1 <= v <= MAX_IMAGE_SIDE for v in value)):
        raise PanelError(f"{what} must be [height, width], whole numbers 1..{MAX_IMAGE_SIDE}, "
                         f"got {short(value)}")
    return value[0], value[1]


def header(blob, n_images: int, content: dict) -> dict:
    """Blob 0 of a step (None: the step has no blobs), checked against the step's ``n_images`` images and the panel's
    ``content`` (:func:`panel`): ``{"tiles", "groups", "images"}``, and ``"error"`` saying
    what is wrong when something is. Never raises: a step that cannot be drawn says why.

    ``tiles`` is a list of at most :data:`MAX_TILES` objects; a tile with a ``crop`` is
    cut from image ``source`` of its (or the panel's) ``sources`` panel, whose
    ``source_size`` the crop must lie in; the tiles without one match the images one to
    one (when there are more, ``tiles`` stops at the last that has an image). ``groups``
    are objects whose ``units`` index the step's projections. Nothing else of the header
    is kept: the step, its time and the counts are the server's.

    >>> header(b'{"tiles": [{"label": "a"}], "step": 999}', 1, {})
    {'tiles': [{'label': 'a'}], 'groups': [], 'images': 1}
    >>> content = {"sources": "tbviz/deconvnet/net/probes", "source_size": [8, 8]}
    >>> print(header(b'{"tiles": [{"crop": "abc", "source": 0}]}', 0, content)["error"])
    ... # doctest: +ELLIPSIS
    tile 0: crop must be [top, bottom, left, right], whole numbers with 0 <= top < ... got 'abc'
    """
    try:
        if blob is None:
            raise PanelError("the step holds no blobs (a panel step is its header, then its "
                             "images)")
        data = loads(blob, "header", MAX_HEADER_BYTES)
        if not isinstance(data, dict):
            raise PanelError("header is not a JSON object")
        tiles = _list(data.get("tiles"), "tiles")
        groups = _list(data.get("groups"), "groups")
        own = [i for i, t in enumerate(tiles) if _check_tile(t, i, content)]
        _check_groups(groups, sum(1 for t in tiles if t.get("role") != "patch"))
    except PanelError as err:
        return {"tiles": [], "groups": [], "images": n_images, "error": str(err)}
    out = {"tiles": tiles, "groups": groups, "images": n_images}
    if len(own) != n_images:
        out["error"] = f"header lists {len(own)} tiles with images for {n_images} images"
        if len(own) > n_images:
            out["tiles"] = tiles[:own[n_images]]
    return out


def _list(value, name):
    if value is None and name == "groups":
        return []
    if not isinstance(value, list):
        raise PanelError(f"header field {name!r} must be a list, got {short(value)}")
    if len(value) > MAX_TILES:
        raise PanelError(f"header lists {len(value):,} {name}, more than the {MAX_TILES} "
                         "allowed in one step")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise PanelError(f"{name[:-1]} {i} must be a JSON object, got {short(item)}")
    return value


def _check_tile(t: dict, i: int, content: dict) -> bool:
    """Whether tile ``t`` has an image of its own; raises when it cannot be drawn."""
    for field, types in TILE_FIELDS.items():
        _check_type(t.get(field), types, f"tile {i}: field {field!r}")
    if "crop" not in t:
        return True
    if t.get("sources", content.get("sources")) is None:
        raise PanelError(f"tile {i} has a crop but no sources tag to cut it from")
    if not _is_int(t.get("source")) or t["source"] < 0:
        raise PanelError(f"tile {i}: source must be the index (0, 1, ...) of the image it is "
                         f"cut from, got {short(t.get('source'))}")
    raw = t.get("source_size", content.get("source_size"))
    height, width = size(raw, f"tile {i}: source_size")
    crop = t["crop"]
    if not (isinstance(crop, list) and len(crop) == 4 and all(_is_int(v) for v in crop)
            and 0 <= crop[0] < crop[1] <= height and 0 <= crop[2] < crop[3] <= width):
        raise PanelError(f"tile {i}: crop must be [top, bottom, left, right], whole numbers "
                         f"with 0 <= top < bottom <= {height} and 0 <= left < right <= "
                         f"{width}, got {short(crop)}")
    return False


def _check_groups(groups: list, n_projections: int):
    for i, g in enumerate(groups):
        units = g.get("units", [])
        if not (isinstance(units, list)
                and all(_is_int(u) and 0 <= u < n_projections for u in units)):
            raise PanelError(f"group {i}: units must be a list of projection indices "
                             f"0..{n_projections - 1}, got {short(units)}")


def image_size(data) -> tuple[int, int]:
    """``(height, width)`` of a panel image, read from its header (no pixel decoded; a
    PNG's chunk checksums are checked, which finds it truncated).

    Raises :class:`PanelError` when ``data`` is not a PNG or WebP image, is truncated, or
    a side is over :data:`MAX_IMAGE_SIDE`.

    >>> image_size(metadata.encode_image(np.zeros((3, 5, 3), np.uint8)))
    (3, 5)
    >>> try:
    ...     image_size(metadata.encode_png(np.zeros((1, 4096), np.uint8)))
    ... except PanelError as err:
    ...     print(err)
    image of 1x4096 px: a side is over the 2048 px allowed
    """
    with _opened(data) as image:
        size = _checked_size(image)
        try:
            image.verify()
        except (OSError, ValueError, SyntaxError) as err:
            raise PanelError(f"image is truncated or corrupt ({err})") from None
        return size


def decode(data) -> np.ndarray:
    """A panel image as a ``uint8`` RGB array, its size checked (:func:`image_size`) before
    its pixels are decoded; a truncated or corrupt image raises :class:`PanelError`.

    >>> decode(metadata.encode_image(np.full((2, 2, 3), 7, np.uint8)))[0, 0].tolist()
    [7, 7, 7]
    """
    with _opened(data) as image:
        _checked_size(image)
        try:
            return np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:
            raise PanelError(f"image could not be decoded (truncated or corrupt: {err})") \
                from None


class _opened:
    """``with _opened(data) as image``: a lazily opened PNG or WebP, or a PanelError."""

    def __init__(self, data):
        self.data = data

    def __enter__(self):
        if not isinstance(self.data, (bytes, bytearray)) or not self.data:
            raise PanelError("image blob is empty or not bytes")
        try:
            with warnings.catch_warnings():
                # Pillow warns (or raises) on huge sizes; the side limit below says more.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.image = Image.open(io.BytesIO(self.data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise PanelError(f"image is larger than {MAX_IMAGE_SIDE} px a side") from None
        except Exception:  # Pillow raises many kinds on garbage; all mean the same here
            raise PanelError("image blob is not a PNG or WebP image") from None
        return self.image

    def __exit__(self, *exc):
        self.image.close()


def _checked_size(image) -> tuple[int, int]:
    width, height = image.size
    if max(width, height) > MAX_IMAGE_SIDE:
        raise PanelError(f"image of {height}x{width} px: a side is over the "
                         f"{MAX_IMAGE_SIDE} px allowed")
    return height, width


def _check_type(value, types, what):
    if value is None:
        return
    if not isinstance(value, types) or isinstance(value, bool):
        names = " or ".join("a string" if t is str else "a whole number" for t in types)
        raise PanelError(f"{what} must be {names}, got {short(value)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def short(value, limit: int = 60) -> str:
    """``repr(value)`` (an exception's message), cut to ``limit`` characters, for errors.

    >>> short("x" * 100, 10)
    "'xxxxxx..."
    """
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
