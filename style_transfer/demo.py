"""``style-transfer demo``: train briefly on the bundled photos and a painting, stylize
the photos, say what to open in TensorBoard.

With ImageNet VGG19 weights the demo trains with the paper's losses
(:mod:`style_transfer.defaults`). Without them (offline, or ``vgg_weights="random"``)
it uses :data:`~style_transfer.defaults.RANDOM_VGG_PRESET`, a loss network and
loss weights chosen for random weights, so the photos still take the painting's
palette and texture.

Example::

    >>> from style_transfer.demo import demo
    >>> demo(log_dir="runs/demo", style="wave", vgg_weights="random")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import sys

from style_transfer import data
from style_transfer.defaults import (DEMO_STYLES, RANDOM_VGG_PRESET, TRANSFORM_PROBE_LAYERS,
                                     VGG_PROBE_LAYERS)
from style_transfer.stylize import stylize
from style_transfer.train import train
from style_transfer.vgg import RANDOM_WARNING, VGGWeightsUnavailable, build_vgg

#: Marks a folder as one of the demo's runs, which the next demo may delete.
MARKER = ".style_transfer_demo"


def prepare_log_dir(log_dir: str) -> None:
    """Empty ``log_dir`` if it holds a previous demo run; refuse any other non-empty folder."""
    if os.path.isdir(log_dir) and os.listdir(log_dir):
        if not os.path.exists(os.path.join(log_dir, MARKER)):
            raise ValueError(f"{log_dir} exists and is not a previous demo run; pass another "
                             "--log-dir")
        shutil.rmtree(log_dir)  # a previous demo: start afresh
    os.makedirs(log_dir, exist_ok=True)
    open(os.path.join(log_dir, MARKER), "w").close()


def loss_network(vgg_weights: str):
    """``(weights actually used, the built VGG19 or None)``: ImageNet weights that cannot
    be downloaded fall back to random ones, loudly."""
    if vgg_weights != "imagenet":
        return vgg_weights, None
    try:
        return "imagenet", build_vgg("imagenet")
    except VGGWeightsUnavailable as e:
        print(f"\nImageNet VGG19 weights unreachable: {e}\n"
              "==> the demo falls back to --vgg-weights random.", file=sys.stderr, flush=True)
        return "random", None


#: scikit-image's colour photographs, scanned by the demo beside the bundled photos.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
                  "hubble_deep_field")


def scan_photos(folder: str) -> str:
    """The demo's scan data in ``folder``: the bundled photos plus scikit-image's, where
    it is installed; returns ``folder``."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for path in data.bundled_photos():
        shutil.copy(path, folder)
    try:
        import skimage.data
    except ImportError:
        return folder
    for name in SKIMAGE_PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 (a photo scikit-image would have to download)
            continue
        if image.ndim == 3 and image.shape[-1] == 3:
            Image.fromarray(image).save(os.path.join(folder, f"skimage_{name}.png"))
    return folder


def demo(*, log_dir="runs/demo", style="wave", vgg_weights="imagenet", image_size=128,
         batch_size=2, epochs=3, steps_per_epoch=40) -> str:
    """Train on the bundled photos and ``style`` painting, stylize the photos into
    ``<log_dir>/stylized``; returns that folder."""
    if style not in DEMO_STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(DEMO_STYLES)}")
    prepare_log_dir(log_dir)
    weights, vgg = loss_network(vgg_weights)
    # ImageNet weights: the paper's losses at a higher learning rate than a full run's,
    # for a short run. Random weights: a recipe of their own.
    recipe = dict(lr=2e-3, transform_layers=TRANSFORM_PROBE_LAYERS, vgg_layers=VGG_PROBE_LAYERS)
    if weights == "random":
        recipe.update(RANDOM_VGG_PRESET)
    scan_dir = scan_photos(os.path.join(log_dir, "scan_photos"))
    net = train(content_dir=data.asset_path("photos"),
                style_image=data.asset_path("styles", f"{style}.jpg"), log_dir=log_dir,
                vgg_weights=weights, vgg=vgg, epochs=epochs, batch_size=batch_size,
                image_size=image_size, steps_per_epoch=steps_per_epoch,
                log_every=max(1, steps_per_epoch // 2), loss_every=2,
                checkpoint_every=steps_per_epoch, scan_dir=scan_dir,
                scan_images=len(os.listdir(scan_dir)), **recipe)
    out_dir = os.path.join(log_dir, "stylized")
    stylize(net, [data.asset_path("photos")], out_dir)
    print("\n" + "=" * 78)
    if weights == "random":
        print(RANDOM_WARNING.strip())
    print(f"Done. Stylized photos: {out_dir}/\n"
          f"Open TensorBoard:      tensorboard --logdir {log_dir}\n"
          "  Scalars / Custom Scalars: content, style, TV and total loss; Graphs: the op graph\n"
          "  (transform_net, vgg_content, vgg_transformed, losses); Histograms / Distributions:\n"
          "  transform-net weights incl. instance-norm gamma/beta; Images: the probe photos;\n"
          "  the tbviz tab: stylized probes and deconvnet reconstructions over time.")
    print("=" * 78)
    return out_dir
