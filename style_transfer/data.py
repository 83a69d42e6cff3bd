"""Training photos as a stream of batches, and single images for probes and stylizing.

Pillow and NumPy only: the same loader feeds ``fit`` on every Keras backend, and nothing
here imports TensorFlow, JAX or PyTorch.

The training stream (:func:`training_batches`) reads a COCO ``train2017/`` folder, any
folder (searched recursively) or a glob of images:

* each pass over the files is shuffled with NumPy's generator seeded by ``(seed,
  pass)``, and each crop is placed by a generator seeded by ``(seed, position of the
  file in the stream)``, so a stream restarted at position ``p`` (``start=p``) yields
  exactly what the first one yielded from ``p`` on: resuming continues where training
  stopped;
* Pillow reads JPEG, PNG, GIF and BMP of any mode (grayscale, CMYK, RGBA, palette,
  16-bit) as RGB float32 in ``[0, 255]``, phone photos upright (EXIF orientation);
* the shorter side is resized to ``image_size`` (small images are upscaled;
  antialiased bilinear) and a random ``image_size`` square is cropped;
* unreadable, truncated, empty and non-image files are skipped, never fatal. Each
  image of a batch carries ``(stream position after its batch, files its batch
  skipped)``, so the model counts the skipped ones exactly
  (``StyleTransferModel.skipped_files``) although the loader runs ahead of training;
* a pool of threads decodes ``workers`` files at a time, in stream order, a few batches
  ahead (Pillow releases the GIL while it decodes and resizes).

Example:
    >>> from style_transfer import data
    >>> files, ignored = data.list_images(data.asset_path("photos"))
    >>> batches = data.training_batches(files, image_size=32, batch_size=2)
    >>> images, stream = next(batches)
    >>> images.shape, images.dtype, stream.tolist()
    ((2, 32, 32, 3), dtype('float32'), [[2, 0], [2, 0]])
    >>> batches.close()
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import itertools
import math
import os

import numpy as np
from PIL import Image, ImageOps

from tbviz.core.checks import positive_int

#: The image files the pipeline reads; other files are left out of the stream.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")

#: Pillow's filters for :func:`resize`: "area" averages (downscaling), "bilinear" and
#: "bicubic" interpolate; each is antialiased when it downscales.
FILTERS = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC}

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def asset_path(*parts: str) -> str:
    """Path of a bundled asset, e.g. ``asset_path("styles", "wave.jpg")``.

    >>> os.path.isfile(asset_path("styles", "wave.jpg"))
    True
    """
    return os.path.join(_ASSETS, *parts)


def list_images(source) -> tuple[list[str], int]:
    """``(image files, number of other files ignored)`` under a folder, a glob, or a file.

    Folders are searched recursively; hidden files are ignored. Raises
    ``ValueError`` when nothing matches.

    >>> files, ignored = list_images(asset_path("photos"))
    >>> len(files) >= 4, ignored
    (True, 0)
    """
    source = os.fspath(source)
    if not glob.has_magic(source) and not os.path.exists(source):
        raise ValueError(f"{source!r}: no such file or folder")
    if os.path.isdir(source):
        candidates = []
        for root, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    elif os.path.isfile(source):
        candidates = [source]
    else:
        candidates = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    files = [p for p in candidates if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {source!r}"
                         + (f"; {len(candidates)} other file(s) there" if candidates else ""))
    return files, len(candidates) - len(files)


# -- single images ------------------------------------------------------------------------------

def read_image(path, max_size: int | None = None, min_size: int | None = None) -> np.ndarray:
    """Read any image Pillow opens as ``(H, W, 3)`` float32 RGB in ``[0, 255]``.

    EXIF orientation is applied (phone photos come out upright), 16-bit
    images are scaled to 8-bit range, alpha is dropped, an animated GIF's first frame
    is taken. ``max_size``: a caller that only needs that many pixels on the longer side
    gets a huge image decoded at a reduced size (never below ``2 * max_size``, so a later
    antialiased resize stays exact), which bounds memory. ``min_size``: the same for a
    caller that needs that many pixels on the *shorter* side (a JPEG is decoded at the
    smallest scale that keeps ``2 * min_size`` there). Raises ``ValueError`` naming the
    file when it cannot be read, or is too large for Pillow to open safely.

    >>> read_image(asset_path("photos", "camera.jpg")).shape[-1]
    3
    """
    try:
        with Image.open(path) as im:
            if max_size and max(im.size) > 2 * max_size:
                im.draft(im.mode, (2 * max_size, 2 * max_size))  # JPEG: scaled decoding
            elif min_size:
                w, h = im.size
                short = 2 * min_size
                im.draft(im.mode, (max(short, math.ceil(w * short / min(w, h))),
                                   max(short, math.ceil(h * short / min(w, h)))))
            im = ImageOps.exif_transpose(im)
            factor = max(im.size) // (2 * max_size) if max_size else 1
            if factor >= 2:
                im = im.reduce(factor)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / 257.0 if arr.max(initial=0) > 255 or im.mode.startswith("I;16") else arr
                arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {os.fspath(path)!r} is too large to open safely ({e}); "
                         "downscale it first, e.g. to 4096 px on the longer side") from None
    except (OSError, ValueError, SyntaxError) as e:  # SyntaxError: Pillow's broken headers
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {e}") from None
    return np.clip(arr, 0, 255)


def resize(image, size, method: str = "bilinear") -> np.ndarray:
    """``(H, W, C)`` float image resized to ``size = (height, width)`` by Pillow's
    ``method`` (one of :data:`FILTERS`), channel by channel in float32, clipped to
    ``[0, 255]``.

    >>> resize(np.full((4, 6, 3), 255.0, "float32"), (2, 3), "area")[..., 0].tolist()
    [[255.0, 255.0, 255.0], [255.0, 255.0, 255.0]]
    """
    if method not in FILTERS:
        raise ValueError(f"unknown resize method {method!r}; choose from {', '.join(FILTERS)}")
    image = np.asarray(image, np.float32)
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image.copy()
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "F")
                           .resize((w, h), FILTERS[method]))
                for c in range(image.shape[-1])]
    # The filters' weights sum to 1 only up to float32 rounding: a white pixel can come out
    # at 255.00003, outside the pipeline's [0, 255] (a value range is a contract).
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0)


def resize_shorter(image, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (up or down), keeping the aspect ratio.

    >>> resize_shorter(np.zeros((10, 20, 3), "float32"), 5).shape
    (5, 10, 3)
    """
    h, w = np.shape(image)[:2]
    scale = size / min(h, w)
    new = (max(math.ceil(h * scale - 1e-3), size), max(math.ceil(w * scale - 1e-3), size))
    return resize(image, new, "bilinear")


def random_square(image, size: int, seed) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop a ``size`` square at a place drawn
    from NumPy's generator seeded by ``seed``.

    >>> random_square(np.zeros((7, 9, 3), "float32"), 16, seed=[0, 1]).shape
    (16, 16, 3)
    """
    image = resize_shorter(image, size)
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    return image[top:top + size, left:left + size]


def center_square(image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop the central ``size`` square.

    >>> center_square(np.zeros((7, 9, 3), "float32"), 4).shape
    (4, 4, 3)
    """
    image = resize_shorter(image, size)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


# -- the training stream ------------------------------------------------------------------------

def stream_order(n: int, seed: int, start: int = 0):
    """The endless stream of ``(stream position, file index)`` from ``start`` on: pass
    ``k`` visits the ``n`` files in the order of NumPy's permutation seeded ``(seed, k)``.

    >>> [p for p, _ in itertools.islice(stream_order(3, seed=0, start=2), 3)]
    [2, 3, 4]
    >>> sorted(i for _, i in itertools.islice(stream_order(3, seed=0), 3))  # every file once
    [0, 1, 2]
    """
    for k in itertools.count(start // n):
        order = np.random.default_rng([seed, k]).permutation(n)
        for offset in range(start % n if k == start // n else 0, n):
            yield k * n + offset, int(order[offset])


def _crop(path, size, seed, position):
    return random_square(read_image(path, min_size=size), size, [seed, position])


def default_workers() -> int:
    """Decoding threads: the CPU cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def training_batches(files, image_size: int = 256, batch_size: int = 4, seed: int = 0,
                     start: int = 0, workers: int | None = None):
    """An endless generator of ``(images (B, S, S, 3) float32, stream (B, 2) int32)``
    batches; see the module docstring. ``stream[i]`` is ``(position after the batch,
    files the batch skipped)``, the same for every image of the batch.

    ``start`` is the number of files already consumed (``model.data_position`` of a
    checkpoint): the stream resumes there. Pass ``steps_per_epoch`` to ``fit``; epochs
    are counted in steps, not passes over the files. ``workers``: decoding threads
    (default :func:`default_workers`). ``close()`` the generator to stop its threads.
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("training_batches needs at least one file")
    image_size = positive_int("image_size", image_size)
    batch_size = positive_int("batch_size", batch_size)
    workers = positive_int("workers", workers or default_workers())
    return _batches(files, image_size, batch_size, seed, int(start), workers)


def _batches(files, size, batch_size, seed, start, workers):
    order = stream_order(len(files), seed, start)
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="style_data")
    ahead = collections.deque()

    def submit():
        position, index = next(order)
        ahead.append((position, pool.submit(_crop, files[index], size, seed, position)))

    try:
        for _ in range(max(2 * batch_size, 2 * workers)):  # decoding this far ahead
            submit()
        images, skipped = [], 0
        while True:
            position, future = ahead.popleft()
            submit()
            try:
                images.append(future.result())
            except ValueError:  # unreadable: left out of the stream, counted
                skipped += 1
                continue
            if len(images) == batch_size:
                stream = np.tile(np.array([[position + 1, skipped]], np.int32), (batch_size, 1))
                yield np.stack(images), stream
                images, skipped = [], 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def scan_batches(files, size: int, batch_size: int = 16):
    """Central ``size`` squares of ``files`` in batches, in file order, read as they are
    used (for :func:`tbviz.deconvnet.scan`; unreadable files are skipped). Iterable again
    and again.

    >>> [b.shape for b in scan_batches(bundled_photos()[:2], 32)]
    [(2, 32, 32, 3)]
    """
    return _ScanBatches([os.fspath(f) for f in files], size, batch_size)


class _ScanBatches:
    def __init__(self, files, size, batch_size):
        self.files, self.size, self.batch_size = files, size, batch_size

    def __iter__(self):
        batch = []
        for path in self.files:
            try:
                batch.append(center_square(read_image(path, min_size=self.size), self.size))
            except ValueError:
                continue
            if len(batch) == self.batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


def check_readable(files, tries: int = 32) -> int:
    """Decode up to ``tries`` files; raise ``ValueError`` if none reads (returns the count read).

    Catches a folder of nothing but broken files before training spins on it.
    """
    ok = 0
    errors = []
    for path in list(files)[:tries]:
        try:
            read_image(path)
            ok += 1
        except ValueError as e:
            errors.append(f"{path}: {str(e).strip().splitlines()[-1][-80:]}")
    if ok == 0:
        raise ValueError(f"none of the first {len(errors)} image files could be read, e.g. "
                         + "; ".join(errors[:3]))
    return ok


def load_probe_photos(paths, size: int) -> tuple[np.ndarray, list[str]]:
    """``(photos (N, size, size, 3), names)``: central squares of ``paths``, named by file stem.

    >>> photos, names = load_probe_photos([asset_path("photos", "coffee.jpg")], 32)
    >>> photos.shape, names
    ((1, 32, 32, 3), ['coffee'])
    """
    photos = [center_square(read_image(p), size) for p in paths]
    names = [os.path.splitext(os.path.basename(os.fspath(p)))[0] for p in paths]
    return np.stack(photos).astype(np.float32), names


def bundled_photos() -> list[str]:
    """The bundled public-domain photographs (see ``assets/ATTRIBUTION.md``)."""
    return list_images(asset_path("photos"))[0]
