"""A panel across steps as one animated image (GIF or APNG), put together with Pillow.

Pure functions, arrays in, bytes out; the plugin's ``/animation`` route reads the
tiles and calls them. One frame per step:

* a white strip :data:`LABEL_HEIGHT` pixels high on top, saying the step (and, for a
  layer whose convergence is marked, "settled" from that step on);
* under it the step's cells laid out by :func:`tbviz.summary.images.grid`, :data:`PAD`
  pixels apart, ``ceil(sqrt(n))`` per row, each centred in a cell of the largest
  cell's size over *all* frames, so that a feature map stays in place from frame to
  frame. A cell is one projection, or a projection and its input patch side by side.
  Cells smaller than :data:`MIN_CELL` are enlarged by the whole factor that brings the
  largest to it (every pixel repeated, as the tab shows small tiles pixelated).

Frames are never merged: the label differs from step to step, so a GIF or APNG of
``n`` steps has ``n`` frames (Pillow merges identical consecutive ones).

Bounded memory: the layout is planned from the tiles' sizes alone (:func:`layout`, from
:func:`cell_shape`), so a route can refuse a request before decoding a pixel, and then
make one frame at a time (:func:`frame`) for :func:`write`, which takes frames from any
iterable and writes to a file. The GIF encoder keeps each frame as 256 colours (1 byte a
pixel); APNG is written frame by frame (Pillow's single-frame PNGs, muxed), so nothing
but the file grows.

Example:
    >>> import io
    >>> tiles = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128)]
    >>> pictures = frames([[tiles[0]], [tiles[1]]], ["step 1", "step 2"])
    >>> gif = Image.open(io.BytesIO(encode(pictures, "gif")))
    >>> gif.n_frames, gif.size == pictures[0].shape[1::-1]
    (2, True)
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tbviz.summary import images

#: ``format`` parameter -> (Pillow format, MIME type, file suffix).
FORMATS = {"gif": ("GIF", "image/gif", ".gif"), "apng": ("PNG", "image/apng", ".png")}
#: Height of the step label above each frame's tiles (pixels).
LABEL_HEIGHT = 16
#: Gap between cells, and between a projection and its patch (pixels).
PAD = 4
#: Time each frame is shown (milliseconds), unless the request says otherwise.
FRAME_MS = 700
#: Cells are enlarged (a whole factor) until the largest is at least this many pixels.
MIN_CELL = 64
#: Smallest frame width, so the label always fits.
MIN_WIDTH = 120




def pairs(tiles: list, patches: bool = False) -> list:
    """The cells of one step as ``(tile, patch or None)`` indices: each tile that is not a
    patch (``role != "patch"``) in order, with, if ``patches``, the n-th patch beside the
    n-th projection (as the tab pairs them).

    >>> t = [{"role": "projection"}, {"role": "projection"}, {"role": "patch"}]
    >>> pairs(t), pairs(t, patches=True)
    ([(0, None), (1, None)], [(0, 2), (1, None)])
    """
    shown = [i for i, t in enumerate(tiles) if t.get("role") != "patch"]
    patch = [i for i, t in enumerate(tiles) if t.get("role") == "patch"] if patches else []
    return [(i, patch[n] if n < len(patch) else None) for n, i in enumerate(shown)]


def cell_shape(shape, patch: bool = False) -> tuple[int, int]:
    """``(height, width)`` of a cell whose projection is ``shape``: with its ``patch`` the
    patch is shown at the projection's size beside it.

    >>> cell_shape((4, 4)), cell_shape((4, 4), patch=True)
    ((4, 4), (4, 12))
    """
    return (shape[0], 2 * shape[1] + PAD) if patch else (shape[0], shape[1])


def cells(tiles: list, pictures, patches: bool = False) -> list:
    """The cells of one step (see :func:`pairs`); ``pictures[k]`` is tile ``k``'s ``uint8``
    RGB array (a list, or a dict holding at least the tiles the cells show). A patch is
    shown at its projection's size (nearest neighbour), as the tab enlarges it.

    >>> t = [{"role": "projection"}, {"role": "patch"}]
    >>> p = [np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)]
    >>> [c.shape for c in cells(t, p)], [c.shape for c in cells(t, p, patches=True)]
    ([(4, 4, 3)], [(4, 12, 3)])
    """
    out = []
    for i, k in pairs(tiles, patches):
        proj = pictures[i]
        if k is None:
            out.append(proj)
            continue
        side = pictures[k]
        if side.shape[:2] != proj.shape[:2]:
            side = np.asarray(Image.fromarray(side).resize(proj.shape[1::-1], Image.NEAREST))
        out.append(images.grid([proj, side], cols=2, pad=PAD))
    return out


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where an animation's cells go: ``cell`` (``(height, width)``, enlarged by ``factor``),
    ``cols`` a row, every frame ``height`` x ``width`` pixels."""

    cell: tuple
    factor: int
    cols: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        """Pixels of one frame."""
        return self.height * self.width


def layout(steps_shapes: list) -> Layout:
    """The layout of the frames whose cells have ``steps_shapes[i]`` (``(height, width)``
    each, see :func:`cell_shape`) at step ``i``: no pixel needed.

    >>> layout([[(20, 12)], [(20, 12), (8, 8)]])
    Layout(cell=(80, 48), factor=4, cols=2, height=96, width=120)
    """
    if not any(steps_shapes):
        raise ValueError("an animation needs at least one step with at least one tile")
    cell = (max(s[0] for ss in steps_shapes for s in ss),
            max(s[1] for ss in steps_shapes for s in ss))
    factor = enlargement(cell)
    cell = (cell[0] * factor, cell[1] * factor)
    cols = math.ceil(math.sqrt(max(len(ss) for ss in steps_shapes)))
    rows = max(max(1, math.ceil(len(ss) / cols)) for ss in steps_shapes)
    return Layout(cell, factor, cols, LABEL_HEIGHT + rows * (cell[0] + PAD) - PAD,
                  max(MIN_WIDTH, cols * (cell[1] + PAD) - PAD))


def frame(step_cells: list, label: str, plan: Layout) -> Image.Image:
    """One RGB frame of ``plan``: ``label`` above the grid of ``step_cells`` (arrays no
    larger than ``plan.cell`` before enlargement)."""
    canvas = np.full((plan.height, plan.width, 3), 255, np.uint8)
    if step_cells:
        if plan.factor > 1:
            step_cells = [c.repeat(plan.factor, 0).repeat(plan.factor, 1) for c in step_cells]
        grid = images.grid(step_cells, cols=plan.cols, pad=PAD, cell=plan.cell)
        canvas[LABEL_HEIGHT:LABEL_HEIGHT + grid.shape[0], :grid.shape[1]] = grid
        del grid, step_cells  # before the frame's copy below: one frame's worth at a time
    picture = Image.fromarray(canvas)
    ImageDraw.Draw(picture).text((2, 2), label, fill=(33, 33, 33), font=_font())
    return picture


@functools.cache
def _font():
    return ImageFont.load_default(size=LABEL_HEIGHT - 5)


def frames(steps_cells: list, labels: list) -> list:
    """One ``uint8`` RGB frame per step, all of one size: ``labels[i]`` above the grid
    of ``steps_cells[i]`` (see the module docstring for the layout)."""
    plan = layout([[c.shape[:2] for c in cs] for cs in steps_cells])
    return [np.asarray(frame(cs, label, plan)) for cs, label in zip(steps_cells, labels)]


def enlargement(cell) -> int:
    """The whole factor that brings the largest cell ``(height, width)`` to :data:`MIN_CELL`.

    >>> enlargement((20, 12)), enlargement((64, 64)), enlargement((100, 30))
    (4, 1, 1)
    """
    return max(1, -(-MIN_CELL // max(cell)))


def encode(pictures, fmt: str, duration_ms: int = FRAME_MS) -> bytes:
    """:func:`write` into bytes."""
    out = io.BytesIO()
    write(pictures, fmt, out, duration_ms)
    return out.getvalue()


def write(pictures, fmt: str, out, duration_ms: int = FRAME_MS):
    """Write ``pictures`` (an iterable of same-size RGB frames: ``uint8`` arrays or Pillow
    images, taken one at a time) to the seekable binary file ``out`` as an endlessly
    looping animated image of ``fmt`` (a key of :data:`FORMATS`: ``"gif"``, 256 colours a
    frame, or ``"apng"``, lossless)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown animation format {fmt!r}; choose one of {', '.join(FORMATS)}")
    pictures = (p if isinstance(p, Image.Image) else Image.fromarray(p) for p in pictures)
    if fmt == "apng":
        return _apng(pictures, duration_ms, out)
    # Fast octree: a frame's 256 colours in linear time and memory (Pillow's default, median
    # cut, takes seconds and hundreds of MB on a frame of many colours).
    pictures = (p.quantize(256, method=Image.Quantize.FASTOCTREE) for p in pictures)
    first = next(pictures, None)
    if first is None:
        raise ValueError("an animation needs at least one frame")
    first.save(out, format="GIF", save_all=True, append_images=pictures, duration=duration_ms,
               loop=0)


_PNG = b"\x89PNG\r\n\x1a\n"


def _apng(pictures, duration_ms: int, out):
    """Write an APNG of ``pictures`` to ``out``, one frame at a time: Pillow's own APNG
    writer keeps every frame (4 bytes a pixel) and reads its frames twice. Each frame is
    Pillow's PNG of it, its image data moved into the animation (APNG: IDAT for the first
    frame, fdAT for the others, each after its fcTL; all frames full size, none blended).

    >>> stills = [Image.new("RGB", (3, 2), c) for c in ("red", "blue")]
    >>> out = io.BytesIO()
    >>> _apng(iter(stills), 250, out)
    >>> back = Image.open(out)
    >>> back.n_frames, back.info["duration"], back.info["loop"]
    (2, 250.0, 0)
    >>> back.seek(1); back.convert("RGB").getpixel((0, 0))
    (0, 0, 255)
    """
    out.write(_PNG)
    n = seq = 0
    for picture in pictures:
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        png = buf.getbuffer()
        if n == 0:
            _chunk(out, b"IHDR", next(d for kind, d in _chunks(png) if kind == b"IHDR"))
            actl = out.tell()
            _chunk(out, b"acTL", struct.pack(">II", 0, 0))  # the frame count, set below
        width, height = picture.size
        _chunk(out, b"fcTL", struct.pack(">IIIIIHHBB", seq, width, height, 0, 0, duration_ms,
                                         1000, 0, 0))
        seq += 1
        for kind, data in _chunks(png):
            if kind == b"IDAT" and n == 0:
                _chunk(out, b"IDAT", data)
            elif kind == b"IDAT":
                _chunk(out, b"fdAT", data, prefix=struct.pack(">I", seq))
                seq += 1
        del png, data
        n += 1
    if n == 0:
        raise ValueError("an animation needs at least one frame")
    _chunk(out, b"IEND", b"")
    end = out.tell()
    out.seek(actl)
    _chunk(out, b"acTL", struct.pack(">II", n, 0))  # n frames, looping forever
    out.seek(end)


def _chunks(png):
    """``(type, data)`` of each chunk of a PNG (a bytes-like object; data are views of it)."""
    png, at = memoryview(png), len(_PNG)
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        yield kind, png[at + 8:at + 8 + length]
        at += 12 + length


def _chunk(out, kind: bytes, data, prefix: bytes = b""):
    """Write one PNG chunk of ``kind`` holding ``prefix`` then ``data``."""
    crc = zlib.crc32(data, zlib.crc32(prefix, zlib.crc32(kind)))
    out.write(struct.pack(">I", len(prefix) + len(data)) + kind + prefix)
    out.write(data)
    out.write(struct.pack(">I", crc))
