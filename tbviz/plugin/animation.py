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

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> tiles = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128)]
    >>> pictures = frames([[tiles[0]], [tiles[1]]], ["step 1", "step 2"])
    >>> gif = Image.open(io.BytesIO(encode(pictures, "gif")))
    >>> gif.n_frames, gif.size == pictures[0].shape[1::-1]
    (2, True)
"""

from __future__ import annotations

import io
import math

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


def cells(tiles: list, pictures: list, patches: bool = False) -> list:
    """The cells of one step: each tile that is not a patch (``role != "patch"``) in order,
    with, if ``patches``, the n-th patch beside the n-th projection (as the tab pairs them).

    ``pictures[k]`` is tile ``k``'s ``uint8`` RGB array. A patch is shown at its
    projection's size (nearest neighbour), as the tab enlarges it.

    >>> t = [{"role": "projection"}, {"role": "patch"}]
    >>> p = [np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)]
    >>> [c.shape for c in cells(t, p)], [c.shape for c in cells(t, p, patches=True)]
    ([(4, 4, 3)], [(4, 12, 3)])
    """
    shown = [p for t, p in zip(tiles, pictures) if t.get("role") != "patch"]
    if not patches:
        return shown
    patch = [p for t, p in zip(tiles, pictures) if t.get("role") == "patch"]
    out = []
    for n, proj in enumerate(shown):
        if n >= len(patch):
            out.append(proj)
            continue
        side = patch[n]
        if side.shape[:2] != proj.shape[:2]:
            side = np.asarray(Image.fromarray(side).resize(proj.shape[1::-1], Image.NEAREST))
        out.append(images.grid([proj, side], cols=2, pad=PAD))
    return out


def frames(steps_cells: list, labels: list) -> list:
    """One ``uint8`` RGB frame per step, all of one size: ``labels[i]`` above the grid
    of ``steps_cells[i]`` (see the module docstring for the layout)."""
    if not steps_cells or not any(steps_cells):
        raise ValueError("an animation needs at least one step with at least one tile")
    cell = (max(c.shape[0] for cs in steps_cells for c in cs),
            max(c.shape[1] for cs in steps_cells for c in cs))
    factor = enlargement(cell)
    if factor > 1:
        steps_cells = [[c.repeat(factor, 0).repeat(factor, 1) for c in cs] for cs in steps_cells]
        cell = (cell[0] * factor, cell[1] * factor)
    cols = math.ceil(math.sqrt(max(len(cs) for cs in steps_cells)))
    grids = [images.grid(cs, cols=cols, pad=PAD, cell=cell) if cs else
             np.full((*cell, 3), 255, np.uint8) for cs in steps_cells]
    height = LABEL_HEIGHT + max(g.shape[0] for g in grids)
    width = max(MIN_WIDTH, *(g.shape[1] for g in grids))
    font = ImageFont.load_default(size=LABEL_HEIGHT - 5)
    out = []
    for grid, label in zip(grids, labels):
        frame = np.full((height, width, 3), 255, np.uint8)
        frame[LABEL_HEIGHT:LABEL_HEIGHT + grid.shape[0], :grid.shape[1]] = grid
        picture = Image.fromarray(frame)
        ImageDraw.Draw(picture).text((2, 2), label, fill=(33, 33, 33), font=font)
        out.append(np.asarray(picture))
    return out


def enlargement(cell) -> int:
    """The whole factor that brings the largest cell ``(height, width)`` to :data:`MIN_CELL`.

    >>> enlargement((20, 12)), enlargement((64, 64)), enlargement((100, 30))
    (4, 1, 1)
    """
    return max(1, -(-MIN_CELL // max(cell)))


def encode(pictures: list, fmt: str, duration_ms: int = FRAME_MS) -> bytes:
    """``pictures`` (same-size ``uint8`` RGB frames) as an endlessly looping animated
    image of ``fmt`` (a key of :data:`FORMATS`: ``"gif"``, 256 colours a frame, or
    ``"apng"``, lossless)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown animation format {fmt!r}; choose one of {', '.join(FORMATS)}")
    first, *rest = [Image.fromarray(p) for p in pictures]
    buf = io.BytesIO()
    first.save(buf, format=FORMATS[fmt][0], save_all=True, append_images=rest,
               duration=duration_ms, loop=0)
    return buf.getvalue()
