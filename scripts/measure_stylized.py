"""Do stylized photos look like the painting? Clipped pixels and colour statistics.

    python scripts/measure_stylized.py --painting style_transfer/assets/styles/wave.jpg \
        --photos style_transfer/assets/photos --stylized runs/demo/stylized

For every stylized photo (matched to its original by file name) it prints

* ``clipped``: the fraction of pixel values at 0 or 255 (blown-out or crushed
  regions; a well-behaved transform-net keeps this near the painting's own),
* the per-channel mean and standard deviation (R, G, B) of the stylized photo,
  of the painting and of the original photo,
* ``palette distance`` to the painting and to the photo: the per-channel
  Wasserstein-1 distance between pixel-value distributions (mean absolute
  difference of their quantiles), averaged over R, G, B, in 0..255 levels.
  A stylized photo that took the painting's palette is closer to the painting
  than to its photo.

The last line sums it up over all photos. ``--sheet out.jpg`` also writes the
pictures side by side: the painting, then each photo above its stylized version.
Nothing here trains or needs TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

QUANTILES = np.linspace(0.0, 1.0, 101)


def read_rgb(path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def clipped_fraction(image) -> float:
    """Fraction of the pixel values of a uint8 image that are 0 or 255.

    >>> clipped_fraction(np.array([[[0, 128, 255]]], np.uint8))
    0.6666666666666666
    """
    image = np.asarray(image)
    return float(np.mean((image == 0) | (image == 255)))


def channel_stats(image) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (R, G, B) of an ``(H, W, 3)`` image."""
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    return pixels.mean(axis=0), pixels.std(axis=0)


def palette_distance(a, b) -> float:
    """Mean over R, G, B of the Wasserstein-1 distance between the two images' value
    distributions, in 0..255 levels (0: the same palette, whatever the layout).

    >>> gray, white = np.full((4, 4, 3), 100, np.uint8), np.full((2, 2, 3), 255, np.uint8)
    >>> palette_distance(gray, white)
    155.0
    """
    qa = np.quantile(np.asarray(a, np.float64).reshape(-1, 3), QUANTILES, axis=0)
    qb = np.quantile(np.asarray(b, np.float64).reshape(-1, 3), QUANTILES, axis=0)
    return float(np.mean(np.abs(qa - qb)))


def _fmt(values) -> str:
    return "/".join(f"{v:5.1f}" for v in values)


def measure(painting_path, photos_dir, stylized_dir, out=sys.stdout) -> dict:
    """Print the table and return ``{name: {clipped, to_painting, to_photo}}``."""
    painting = read_rgb(painting_path)
    p_mean, p_std = channel_stats(painting)
    print(f"painting {os.path.basename(painting_path)}: mean {_fmt(p_mean)}  std {_fmt(p_std)}"
          f"  clipped {clipped_fraction(painting):.2%}", file=out)
    print(f"{'photo':18s} {'clipped':>8s}  {'mean R/G/B':>17s}  {'std R/G/B':>17s}  "
          f"{'to painting':>11s}  {'to photo':>8s}  {'photo mean':>17s}", file=out)
    results = {}
    for name in sorted(os.listdir(stylized_dir)):
        original = os.path.join(photos_dir, name)
        if not os.path.isfile(original):
            continue
        styl, photo = read_rgb(os.path.join(stylized_dir, name)), read_rgb(original)
        mean, std = channel_stats(styl)
        row = dict(clipped=clipped_fraction(styl), to_painting=palette_distance(styl, painting),
                   to_photo=palette_distance(styl, photo))
        results[name] = row
        print(f"{name:18s} {row['clipped']:8.2%}  {_fmt(mean):>17s}  {_fmt(std):>17s}  "
              f"{row['to_painting']:11.1f}  {row['to_photo']:8.1f}  "
              f"{_fmt(channel_stats(photo)[0]):>17s}", file=out)
    if not results:
        raise SystemExit(f"no file of {stylized_dir} has an original of the same name in "
                         f"{photos_dir}")
    rows = list(results.values())
    closer = sum(r["to_painting"] < r["to_photo"] for r in rows)
    print(f"all {len(rows)}: clipped {np.mean([r['clipped'] for r in rows]):.2%} (worst "
          f"{max(r['clipped'] for r in rows):.2%}), palette distance to the painting "
          f"{np.mean([r['to_painting'] for r in rows]):.1f}, to the photos "
          f"{np.mean([r['to_photo'] for r in rows]):.1f}; {closer}/{len(rows)} closer to the "
          "painting", file=out)
    return results


def contact_sheet(painting_path, photos_dir, stylized_dir, path, tile: int = 160) -> None:
    """The painting, then each original photo above its stylized version, ``tile`` px high."""
    names = [n for n in sorted(os.listdir(stylized_dir))
             if os.path.isfile(os.path.join(photos_dir, n))]

    def fit(im):
        return im.convert("RGB").resize((round(im.width * tile / im.height), tile),
                                        Image.LANCZOS)

    columns = [[fit(Image.open(painting_path))]]
    columns += [[fit(Image.open(os.path.join(photos_dir, n))),
                 fit(Image.open(os.path.join(stylized_dir, n)))] for n in names]
    sheet = Image.new("RGB", (sum(c[0].width for c in columns) + 4 * len(columns), 2 * tile + 4),
                      "white")
    x = 0
    for column in columns:
        for row, im in enumerate(column):
            sheet.paste(im, (x, row * (tile + 4) + (tile + 4) // 2 * (len(column) == 1)))
        x += column[0].width + 4
    sheet.save(path, quality=85)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    assets = os.path.join(here, "..", "style_transfer", "assets")
    parser.add_argument("--painting", default=os.path.join(assets, "styles", "wave.jpg"))
    parser.add_argument("--photos", default=os.path.join(assets, "photos"),
                        help="the original photos (matched to --stylized by file name)")
    parser.add_argument("--stylized", default="runs/demo/stylized")
    parser.add_argument("--sheet", default=None,
                        help="also write the pictures side by side to this image file")
    args = parser.parse_args(argv)
    measure(args.painting, args.photos, args.stylized)
    if args.sheet:
        contact_sheet(args.painting, args.photos, args.stylized, args.sheet)
        print(f"wrote {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
