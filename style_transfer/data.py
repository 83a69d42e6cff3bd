"""Training photos as a tf.data stream, and single images for probes and stylizing.

The training stream (:func:`training_dataset`) reads a COCO ``train2017/``
folder, any folder (searched recursively) or a glob of images:

* each pass over the files is shuffled with a stateless seed ``(seed, pass)``,
  and each crop is seeded by the file's position in the stream, so a stream
  restarted at position ``p`` (``start=p``) yields exactly what the first one
  yielded from ``p`` on: resuming continues where training stopped;
* TensorFlow's decoders read JPEG, PNG, GIF and BMP of any mode (grayscale,
  CMYK, RGBA, palette, 16-bit) straight to RGB float32 in ``[0, 255]``;
* the shorter side is resized to ``image_size`` (small images are upscaled)
  and a random ``image_size`` square is cropped;
* unreadable, truncated, empty and non-image files are skipped, never fatal.
  Each element carries its stream index, so the model counts the skipped ones
  exactly (``StyleTransferModel.skipped_files``) and the log reports them;
* batches with ``drop_remainder`` and prefetches.

Example:
    >>> from style_transfer import data
    >>> files, ignored = data.list_images(data.asset_path("photos"))
    >>> ds = data.training_dataset(files, image_size=32, batch_size=2)
    >>> images, index = next(iter(ds))
    >>> images.shape, index.shape
    (TensorShape([2, 32, 32, 3]), TensorShape([2]))
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from tbviz.core.checks import positive_int

#: What TensorFlow's ``decode_image`` reads; other files are left out of the stream.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")

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


def decode(contents):
    """Encoded JPEG/PNG/GIF/BMP bytes -> ``(H, W, 3)`` float32 RGB in ``[0, 255]`` (TF ops).

    Grayscale is repeated to 3 channels, alpha dropped, CMYK converted,
    16-bit scaled correctly, an animated GIF's first frame taken.

    >>> png = tf.io.encode_png(tf.zeros((2, 3, 1), tf.uint8))
    >>> decode(png).shape
    TensorShape([2, 3, 3])
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.float32, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    return image * 255.0


def resize_shorter(image, size: int):
    """Resize so the shorter side is ``size`` (up or down), keeping the aspect ratio.

    >>> resize_shorter(tf.zeros((10, 20, 3)), 5).shape
    TensorShape([5, 10, 3])
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32), size)
    resized = tf.image.resize(image, new, method="bilinear", antialias=True)
    # The antialiasing kernel's weights sum to 1 only up to float32 rounding: a white pixel
    # can come out at 255.00003, outside the pipeline's [0, 255] (a value range is a contract).
    return tf.clip_by_value(resized, 0.0, 255.0)


def random_square(image, size: int, seed):
    """Resize the shorter side to ``size`` and crop a ``size`` square at a seeded place.

    >>> random_square(tf.zeros((7, 9, 3)), 16, seed=[0, 1]).shape
    TensorShape([16, 16, 3])
    """
    image = resize_shorter(image, size)
    return tf.image.stateless_random_crop(image, [size, size, 3], seed=seed)


def center_square(image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and crop the central ``size`` square.

    >>> center_square(np.zeros((7, 9, 3), "float32"), 4).shape
    (4, 4, 3)
    """
    image = resize_shorter(tf.convert_to_tensor(image, tf.float32), size)
    h, w = int(image.shape[0]), int(image.shape[1])
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size].numpy()


def training_dataset(files, image_size: int = 256, batch_size: int = 4, seed: int = 0,
                     start: int = 0) -> tf.data.Dataset:
    """An endless stream of ``(images (B, S, S, 3), stream_index (B,))`` batches.

    ``start`` is the number of files already consumed (``model.data_position``
    of a checkpoint): the stream resumes there. Pass ``steps_per_epoch`` to
    ``fit``; epochs are counted in steps, not passes over the files.
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("training_dataset needs at least one file")
    image_size = positive_int("image_size", image_size)
    batch_size = positive_int("batch_size", batch_size)
    n = len(files)
    paths = tf.constant(files)

    def one_pass(k):
        positions = tf.range(n, dtype=tf.int64)
        pass_seed = tf.stack([tf.constant(seed, tf.int64), k])
        order = tf.random.experimental.stateless_shuffle(positions, seed=pass_seed)
        return tf.data.Dataset.from_tensor_slices((tf.gather(paths, order), k * n + positions))

    def load(path, index):
        image = decode(tf.io.read_file(path))
        crop_seed = tf.stack([tf.constant(seed, tf.int64), index])
        return random_square(image, image_size, crop_seed), index

    ds = tf.data.Dataset.range(start // n, 2**62).flat_map(one_pass).skip(start % n)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Dropped elements leave gaps in the stream index: that is how they are counted.
    ds = ds.ignore_errors(log_warning=False)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def scan_dataset(files, size: int, batch_size: int = 16) -> tf.data.Dataset:
    """Central ``size`` squares of ``files`` in batches, in file order, read as they are used
    (for :func:`tbviz.deconvnet.scan`; unreadable files are skipped).

    >>> ds = scan_dataset(bundled_photos()[:2], 32)
    >>> [tuple(b.shape) for b in ds]
    [(2, 32, 32, 3)]
    """
    def load(path):
        image = resize_shorter(decode(tf.io.read_file(path)), size)
        top = (tf.shape(image)[0] - size) // 2
        left = (tf.shape(image)[1] - size) // 2
        return tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])

    ds = tf.data.Dataset.from_tensor_slices([os.fspath(f) for f in files])
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=False).batch(batch_size).prefetch(1)


def check_readable(files, tries: int = 32) -> int:
    """Decode up to ``tries`` files; raise ``ValueError`` if none reads (returns the count read).

    Catches a folder of nothing but broken files before training spins on it.
    """
    ok = 0
    errors = []
    for path in list(files)[:tries]:
        try:
            decode(tf.io.read_file(path))
            ok += 1
        except (tf.errors.OpError, ValueError) as e:
            errors.append(f"{path}: {str(e).strip().splitlines()[-1][:80]}")
    if ok == 0:
        raise ValueError(f"none of the first {len(errors)} image files could be read, e.g. "
                         + "; ".join(errors[:3]))
    return ok


def read_image(path, max_size: int | None = None) -> np.ndarray:
    """Read any image Pillow opens as ``(H, W, 3)`` float32 RGB in ``[0, 255]``.

    EXIF orientation is applied (phone photos come out upright), 16-bit
    images are scaled to 8-bit range, alpha is dropped. ``max_size``: a caller
    that only needs that many pixels on the longer side gets a huge image
    decoded at a reduced size (never below ``2 * max_size``, so a later
    antialiased resize stays exact), which bounds memory. Raises ``ValueError``
    naming the file when it cannot be read, or is too large for Pillow to open
    safely.

    >>> read_image(asset_path("photos", "camera.jpg")).shape[-1]
    3
    """
    try:
        with Image.open(path) as im:
            if max_size and max(im.size) > 2 * max_size:
                im.draft(im.mode, (2 * max_size, 2 * max_size))  # JPEG: scaled decoding
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
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {e}") from None
    return np.clip(arr, 0, 255)


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
