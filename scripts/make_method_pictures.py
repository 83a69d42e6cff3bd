"""Draw one picture per visualization method into docs/methods/, from a model trained here.

The task has a known answer, so the pictures can be judged: scikit-image's bundled
photographs (no download) give three objects, a cat's face, a coffee cup and an
astronaut's face, pasted at a random place and size onto random crops of its grass,
gravel and brick textures. A small all-convolutional network (conv -> global
average pooling -> dense, so CAM applies, and any input size, so DeepDream can use
octaves) learns which object is in the picture. A good attribution lights up the
object, not the background.

    python scripts/make_method_pictures.py            # ~3 minutes on 2 CPU cores
    python scripts/make_method_pictures.py --out /tmp/pictures --epochs 2

Pictures are 256-color PNGs, each well under 100 KB.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from skimage import data, transform  # noqa: E402

from tbviz import attribution, feature_maps, synthesis  # noqa: E402
from tbviz.summary.images import grid, normalize, overlay, to_uint8  # noqa: E402

SIZE = 64
CLASSES = ("cat", "coffee", "astronaut")


def _square(image, rows, cols, size=96):
    crop = image[rows[0]:rows[1], cols[0]:cols[1]]
    return (transform.resize(crop, (size, size), anti_aliasing=True) * 255).astype(np.float32)


def objects():
    return [_square(data.chelsea(), (0, 300), (60, 360)),
            _square(data.coffee(), (0, 400), (70, 470)),
            _square(data.astronaut(), (10, 250), (110, 350))]


def textures():
    out = []
    for gray in (data.grass(), data.gravel(), data.brick()):
        small = transform.resize(gray, (256, 256), anti_aliasing=True)
        out.append((np.repeat(small[..., None], 3, axis=-1) * 255).astype(np.float32))
    return out


def compose(rng, objs, texs, label, size=SIZE, where=None, scale=None):
    """One picture: a textured, tinted background with object ``label`` pasted on it."""
    tex = texs[rng.integers(len(texs))]
    y, x = rng.integers(0, tex.shape[0] - size, 2)
    img = tex[y:y + size, x:x + size] * rng.uniform(0.5, 1.1, 3)  # tint: color is no giveaway
    side = int(scale or rng.integers(size // 3, size // 2 + 1))
    obj = transform.resize(objs[label], (side, side), anti_aliasing=True, preserve_range=True)
    top, left = where if where is not None else rng.integers(0, size - side + 1, 2)
    img[top:top + side, left:left + side] = obj
    return np.clip(img, 0, 255).astype(np.float32)


def dataset(rng, n, objs, texs):
    labels = rng.integers(0, len(CLASSES), n)
    return np.stack([compose(rng, objs, texs, int(c)) for c in labels]), labels


def build_model(classes=len(CLASSES), channels=3, softmax=True):
    conv = dict(padding="same", activation="relu")
    return keras.Sequential([
        keras.Input((None, None, channels)),
        keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale"),
        keras.layers.Conv2D(16, 3, name="conv1", **conv),
        keras.layers.Conv2D(16, 3, name="conv2", **conv),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, name="conv3", **conv),
        keras.layers.Conv2D(32, 3, name="conv4", **conv),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Conv2D(64, 3, name="conv5", **conv),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(classes, activation="softmax" if softmax else None, name="classes"),
    ], name="objects_on_textures")


# -- drawing ----------------------------------------------------------------------------------

def enlarge(images, factor):
    return np.asarray(images).repeat(factor, axis=-3).repeat(factor, axis=-2)


def sheet(rows, labels, title, factor=2, pad=4):
    """Rows of equally sized uint8 tiles, a label left of each row, a title on top."""
    tiles = [enlarge(t, factor) for row in rows for t in row]
    body = grid(np.stack(tiles), cols=len(rows[0]), pad=pad)
    label_w, title_h = 84, 18
    out = Image.new("RGB", (label_w + body.shape[1], title_h + body.shape[0]), "white")
    out.paste(Image.fromarray(body), (label_w, title_h))
    draw = ImageDraw.Draw(out)
    draw.text((4, 3), title, fill=(0, 0, 0))
    row_h = body.shape[0] // len(rows) if len(rows) == 1 else (body.shape[0] + pad) // len(rows)
    for i, label in enumerate(labels):
        draw.text((4, title_h + i * row_h + row_h // 2 - 6), label, fill=(0, 0, 0))
    return out


def save(image: Image.Image, out_dir, name):
    path = os.path.normpath(os.path.join(out_dir, f"{name}.png"))
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    print(f"  {path}: {os.path.getsize(path) // 1024} KB")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "..", "docs", "methods"))
    p.add_argument("--train", type=int, default=2400)
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    objs, texs = objects(), textures()
    x, y = dataset(rng, args.train, objs, texs)
    xv, yv = dataset(rng, 300, objs, texs)
    model = build_model()
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, validation_data=(xv, yv), epochs=args.epochs, batch_size=64, verbose=2)
    print(f"validation accuracy: {model.evaluate(xv, yv, verbose=0)[1]:.3f}")

    # One probe per class, objects at places and sizes a reader can check by eye.
    spots = [((6, 30), 26), ((34, 8), 24), ((20, 20), 28)]
    probes = np.stack([compose(rng, objs, texs, c, where=w, scale=s)
                       for c, (w, s) in enumerate(spots)])
    target = np.arange(len(CLASSES))
    photos = np.round(probes).astype(np.uint8)
    print("predicted:", [CLASSES[i] for i in attribution.top_classes(model, probes)])

    print(f"writing pictures to {os.path.normpath(args.out)}")
    mean_color = probes.mean(axis=(1, 2), keepdims=True)
    heat_methods = {
        "saliency": lambda: attribution.saliency(model, probes, target),
        "smoothgrad": lambda: attribution.smoothgrad(model, probes, target, samples=50),
        "guided_backprop": lambda: attribution.guided_backprop(model, probes, target),
        "occlusion": lambda: attribution.occlusion(model, probes, target, patch=12, stride=4,
                                                   baseline=mean_color),
        "cam": lambda: attribution.cam(model, probes, target),
        "grad_cam": lambda: attribution.grad_cam(model, probes, target, layer="conv4"),
    }
    for name, run in heat_methods.items():
        attr = run()
        heat = attribution.heatmap(attr)
        rows = [photos, [overlay(p, h, 0.7) for p, h in zip(photos, heat)]]
        labels = ["input", "heatmap"]
        if attr.ndim == 4:  # gradients also have a color image of their own
            rows.insert(1, normalize(attr, mode="symmetric"))
            labels.insert(1, "gradient")
        save(sheet(rows, labels, f"{name}: {', '.join(CLASSES)}"), args.out, name)

    # What units want to see: the three class logits, and center units of conv3 and conv5
    # (their means are raised by flat colors on this color-driven little network).
    classes, _ = synthesis.maximize_activation(model, "classes", target, size=(SIZE, SIZE),
                                               steps=200, jitter=2, blur_every=4, blur_sigma=0.6,
                                               param="pixel")
    rows, labels = [to_uint8(classes)], ["classes"]
    for layer in ("conv3", "conv5"):
        units, _ = synthesis.maximize_activation(model, layer, [1, 2, 3], size=(SIZE, SIZE),
                                                 unit="center", steps=200, jitter=1, blur_every=4,
                                                 param="pixel")
        rows.append(to_uint8(units))
        labels.append(f"{layer} 1-3")
    save(sheet(rows, labels, "maximize_activation: class logits; center units"), args.out,
         "maximize_activation")

    rows = [photos]
    for layer in ("conv2", "conv4", "conv5"):
        rec, _ = synthesis.invert_features(model, probes, layer, steps=300, tv_weight=0.05)
        rows.append(to_uint8(rec))
    save(sheet(rows, ["input", "from conv2", "from conv4", "from conv5"],
               "invert_features (total-variation prior)"), args.out, "invert_features")

    big = np.stack([compose(rng, objs, texs, c, size=96, where=(28, 28), scale=40)
                    for c in range(3)])
    dream = synthesis.deepdream(model, big, ["conv4", "conv5"], octaves=3, octave_scale=1.4,
                                steps=10, lr=0.003)
    save(sheet([np.round(big).astype(np.uint8), to_uint8(dream)], ["input", "dream"],
               "deepdream on conv4 + conv5, 3 octaves", factor=1), args.out, "deepdream")

    maps = feature_maps.feature_maps(model, probes[:1], "conv2", scale=1, pad=2)[0]
    deep = feature_maps.feature_maps(model, probes[:1], "conv4", scale=2, pad=2)[0]
    height = max(maps.shape[0], deep.shape[0], SIZE)
    canvas = np.full((height, SIZE + maps.shape[1] + deep.shape[1] + 16, 3), 255, np.uint8)
    canvas[:SIZE, :SIZE] = photos[0]
    canvas[:maps.shape[0], SIZE + 8:SIZE + 8 + maps.shape[1]] = maps
    canvas[:deep.shape[0], SIZE + 16 + maps.shape[1]:] = deep
    save(sheet([[canvas]], [""], "feature_maps: input, conv2 (16), conv4 (32)", factor=1),
         args.out, "feature_maps")

    k1 = feature_maps.kernel_grid(model, "conv1", scale=12, pad=3)
    save(sheet([[k1]], [""], "kernels: conv1's 16 RGB filters", factor=1), args.out, "kernels")


if __name__ == "__main__":
    main()
