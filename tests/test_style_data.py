"""The training-image loader: odd and broken files, counting skips, resuming the stream.

Pillow and NumPy on every backend (no tf.data): all backend-neutral.
"""

import io
import itertools
import os

import numpy as np
import pytest
from PIL import Image

from style_transfer import data

pytestmark = pytest.mark.backends


def take(batches, n):
    """The first ``n`` batches of a training stream, its threads stopped."""
    try:
        return list(itertools.islice(batches, n))
    finally:
        batches.close()


def photo(rng, h=20, w=30):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def odd_folder(tmp_path, rng):
    """Every kind of file a user's photo folder holds, good and bad."""
    good = {}

    def save(name, image, expected, **kw):
        image.save(tmp_path / name, **kw)
        good[name] = expected

    rgb = photo(rng)
    save("rgb.png", Image.fromarray(rgb), rgb)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    save("gray.png", Image.fromarray(gray), np.repeat(gray[..., None], 3, -1))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full((20, 30), 7, np.uint8)]), "RGBA"), rgb)
    pal = Image.fromarray(rgb).convert("P")
    save("palette.png", pal, np.asarray(pal.convert("RGB")))
    g16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    save("gray16.png", Image.fromarray(g16), np.repeat((g16 / 257.0)[..., None], 3, -1))
    smooth = np.broadcast_to(np.linspace(30, 220, 30)[None, :, None], (20, 30, 3)).astype(np.uint8)
    cmyk = Image.fromarray(smooth).convert("CMYK")
    save("cmyk.jpg", cmyk, np.asarray(cmyk.convert("RGB")), quality=95)
    save("gray.jpg", Image.fromarray(smooth[..., 0]), smooth, quality=95)
    save("tiny.bmp", Image.fromarray(rgb[:3, :2]), rgb[:3, :2])  # smaller than the crop
    save("anim.gif", Image.fromarray(rgb).convert("P"), None)
    bad = []
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image at all")
    bad += ["truncated.jpg", "empty.jpg", "notes.png"]
    (tmp_path / "README.txt").write_text("ignored: not an image extension")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    return tmp_path, good, bad


def test_list_images_finds_images_and_counts_the_rest(odd_folder):
    folder, good, bad = odd_folder
    files, ignored = data.list_images(folder)
    assert sorted(os.path.basename(f) for f in files) == sorted(list(good) + bad)
    assert ignored == 1  # README.txt; hidden files are not counted
    glob_files, _ = data.list_images(str(folder / "*.png"))
    assert all(f.endswith(".png") for f in glob_files) and len(glob_files) == 6
    with pytest.raises(ValueError, match="no images"):
        data.list_images(folder / "*.tif")


def test_read_image_reads_every_mode_as_rgb(odd_folder):
    folder, good, _ = odd_folder
    for name, expected in good.items():
        image = data.read_image(folder / name)
        assert image.dtype == np.float32 and image.shape[-1] == 3, name
        if expected is None:
            continue
        tol = 3.0 if name.endswith(".jpg") else 0.01  # JPEG decoders differ by a level or two
        assert np.abs(image - expected).mean() < tol, name


def test_stream_skips_broken_files_and_the_model_counts_them(odd_folder):
    folder, good, bad = odd_folder
    files, _ = data.list_images(folder)
    n = len(files)
    batches = take(data.training_batches(files, image_size=16, batch_size=3, seed=5,
                                         workers=2), 6)  # 18 images: more than one pass
    for images, _ in batches:
        assert images.shape == (3, 16, 16, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
    positions = [int(stream[0, 0]) for _, stream in batches]
    assert np.all(np.diff(positions) > 0)  # in stream order
    # Each batch's skipped files are exactly the broken files of the stream slots it
    # consumed, in each pass's shuffled order.
    start = 0
    for (_, stream), end in zip(batches, positions):
        assert (stream == stream[0]).all()  # every image of a batch carries the same
        slots = range(start, end)
        broken = [s for s in slots if os.path.basename(
            files[np.random.default_rng([5, s // n]).permutation(n)[s % n]]) in bad]
        assert int(stream[0, 1]) == len(broken) == len(slots) - 3
        start = end
    # The model's counters agree (fed each batch's stream, as a training step does).
    import keras

    from style_transfer.model import StyleTransferModel

    class Counter:  # the counting half of the model, without building VGG19
        data_position = keras.Variable(0, dtype="int", trainable=False)
        skipped_files = keras.Variable(0, dtype="int", trainable=False)
        _track_stream = StyleTransferModel._track_stream

    c = Counter()
    for _, stream in batches:
        c._track_stream(stream)
    position = int(keras.ops.convert_to_numpy(c.data_position))
    skipped = int(keras.ops.convert_to_numpy(c.skipped_files))
    assert position == positions[-1] and skipped == position - 18
    assert skipped >= len(bad)  # a whole pass was read


def test_stream_restarted_at_a_position_continues_identically(odd_folder):
    folder, _, _ = odd_folder
    files, _ = data.list_images(folder)
    full = take(data.training_batches(files, 12, 2, seed=1), 8)
    cut = 3
    position = int(full[cut - 1][1][0, 0])
    resumed = take(data.training_batches(files, 12, 2, seed=1, start=position), 8 - cut)
    for (a, sa), (b, sb) in zip(full[cut:], resumed):
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(a, b)


def test_each_pass_is_shuffled_differently(tmp_path):
    # File i is a flat 8x8 image of gray level 10*i, so each crop names its file.
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    files, _ = data.list_images(tmp_path)
    seen = [int(round(float(images[0, 0, 0, 0]) / 10))
            for images, _ in take(data.training_batches(files, 8, 1, seed=0), 24)]
    first, second = seen[:12], seen[12:]
    assert sorted(first) == sorted(second) == list(range(12))  # every file once per pass
    assert first != second and first != list(range(12))


def test_scan_batches_skip_broken_files_and_read_again(odd_folder):
    folder, good, bad = odd_folder
    files, _ = data.list_images(folder)
    scan = data.scan_batches(files, 8, batch_size=4)
    first = list(scan)
    assert sum(len(b) for b in first) == len(good)  # the broken files left out
    assert all(b.shape[1:] == (8, 8, 3) and b.dtype == np.float32 for b in first)
    for a, b in zip(first, scan):  # iterable again, the same photos
        np.testing.assert_array_equal(a, b)


def test_check_readable_rejects_a_folder_of_broken_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    files, _ = data.list_images(tmp_path)
    with pytest.raises(ValueError, match="could be read"):
        data.check_readable(files)


def test_read_image_handles_16_bit_exif_and_errors(tmp_path, rng):
    g16 = np.full((4, 6), 65535, np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(data.read_image(tmp_path / "g16.png"), 255.0)
    # EXIF orientation 6 (rotate 90 degrees clockwise): a 4x6 file is shown 6x4.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(rng, 4, 6)).save(tmp_path / "rotated.jpg", exif=exif)
    assert data.read_image(tmp_path / "rotated.jpg").shape == (6, 4, 3)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(ValueError, match="bad.jpg"):
        data.read_image(tmp_path / "bad.jpg")


def test_bundled_assets_are_small_real_photos():
    photos = data.bundled_photos()
    assert len(photos) >= 4
    sizes = [os.path.getsize(p) for p in photos]
    total = sum(os.path.getsize(os.path.join(root, f))
                for root, _, names in os.walk(data.asset_path()) for f in names)
    assert total < 2 * 2**20 and min(sizes) > 5000
    arrays, names = data.load_probe_photos(photos[:2], 32)
    assert arrays.shape == (2, 32, 32, 3) and arrays.std() > 10
    assert os.path.isfile(data.asset_path("ATTRIBUTION.md"))


def test_resized_photos_stay_in_the_pipelines_range():
    # Antialiased resizing rounds a white pixel up to 255.00003 on some sizes; probes of the
    # bundled photos at 256 px were refused for it ("must be in [0, 255]").
    white = np.full((300, 451, 3), 255, np.float32)
    for size in (64, 256):
        square = data.center_square(white, size)
        assert square.min() >= 0 and square.max() <= 255
        np.testing.assert_allclose(square, 255, rtol=1e-6)  # still white, to float32 rounding
    photos, _ = data.load_probe_photos(data.list_images(data.asset_path("photos"))[0], 256)
    assert photos.min() >= 0 and photos.max() <= 255
