"""``style-transfer stylize``: a trained transform-net applied to image files, any size.

Outputs keep their input's file name and size. Photos with a longer side than
``max_size`` are stylized downscaled, then scaled back (bounds memory), and it
says so; photos smaller than the transform-net's minimum are stylized upscaled.
Unreadable inputs are skipped, said and counted, never fatal.

Example::

    >>> from style_transfer.stylize import stylize
    >>> stylize("runs/demo/transform_net.keras", ["photo.jpg", "photos/"], "out")  # doctest: +SKIP
    (7, 0)
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
from keras import ops
from PIL import Image

from style_transfer import data
from style_transfer.folders import check_creatable, unique_path
from style_transfer.transform_net import MIN_SIZE, load_transform_net
from tbviz import backend
from tbviz.summary.images import to_uint8


def save_image(array, path: str) -> None:
    """Write an ``(H, W, 3)`` image in ``[0, 255]``; an extension Pillow cannot write
    becomes a PNG of the same stem."""
    image = Image.fromarray(to_uint8(array))
    ext = os.path.splitext(path)[1].lower()
    options = {"quality": 95} if ext in (".jpg", ".jpeg") else {}
    try:
        image.save(path, **options)
    except (KeyError, ValueError, OSError):
        image.save(os.path.splitext(path)[0] + ".png")


def _expand(inputs) -> list:
    """Files of ``inputs`` (folders searched recursively); ``None`` for each one missing."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            try:
                files += data.list_images(item)[0]
            except ValueError as e:  # a folder with no images: said, counted, not fatal
                print(f"skipped {item}: {e}", file=sys.stderr)
                files.append(None)
        elif os.path.isfile(item):
            files.append(item)
        else:
            print(f"skipped {item}: no such file or folder", file=sys.stderr)
            files.append(None)
    return files


def stylize(model_path, inputs, output_dir, *, max_size: int = 2048) -> tuple[int, int]:
    """Stylize image files and folders ``inputs`` into ``output_dir``;
    returns ``(stylized, failed)``. ``max_size`` 0: no limit."""
    if not os.path.isfile(model_path):
        raise ValueError(f"--model {model_path!r}: no such file (the .keras file train saved)")
    if max_size and max_size < MIN_SIZE:
        raise ValueError(f"--max-size must be 0 (no limit) or at least {MIN_SIZE}")
    created = check_creatable(output_dir, "--output-dir")
    files = _expand(inputs)
    try:
        net = load_transform_net(model_path)
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None

    def stylized(x):
        return ops.clip(ops.cast(net(x, training=False), "float32"), 0.0, 255.0)

    # Compiled once (TensorFlow: for any size; JAX: per size; PyTorch runs eagerly).
    run = backend.function(stylized, models=[net], signature=[backend.Spec((None, None, None, 3))])

    os.makedirs(output_dir, exist_ok=True)
    taken, failed, done = set(), 0, 0
    for path in files:
        if path is None:
            failed += 1
            continue
        try:
            image = data.read_image(path)
        except ValueError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        h, w = image.shape[:2]
        scale = 1.0
        if max_size and max(h, w) > max_size:
            scale = max_size / max(h, w)
        if min(h, w) * scale < MIN_SIZE:
            scale = MIN_SIZE / min(h, w)
        work = image
        if scale != 1.0:
            size = (max(MIN_SIZE, round(h * scale)), max(MIN_SIZE, round(w * scale)))
            print(f"{path}: {w}x{h} stylized at {size[1]}x{size[0]} (--max-size {max_size}),"
                  " then scaled back", flush=True)
            work = data.resize(image, size, "area" if scale < 1 else "bilinear")
        t0 = time.perf_counter()
        out = backend.numpy(run(work[None]))[0]
        if out.shape[:2] != (h, w):
            out = data.resize(out, (h, w), "bicubic")
        target = unique_path(output_dir, os.path.basename(path), taken)
        save_image(np.asarray(out), target)
        done += 1
        print(f"{path} -> {target} ({w}x{h}, {time.perf_counter() - t0:.2f} s)", flush=True)
    if not done:  # leave no empty output folder behind
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
    print(f"stylized {done} image(s)" + (f", {failed} failed" if failed else ""), flush=True)
    return done, failed
