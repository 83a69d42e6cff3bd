"""Can a person read a feature visualization? The Fourier path of activation maximization
(Olah et al. 2017, as Lucid: 1/f spectrum, decorrelated colours, random moves) against the
pixel path (Yosinski et al. 2015: L2, blur, jitter), on a network trained here.

The network: which of 12 scikit-image photographs (bundled, no download) a colour crop comes
from: a random square of 15-50% of the photo's side, shrunk to 64x64, flipped, its
brightness jittered, fresh crops every epoch (NumPy and scikit-image, every backend). Four
3x3 conv layers (32, 64, 96, 128 channels, max-pooling between), global average pooling,
dense; Adam. Its held-out accuracy is printed: what it learned is in the deeper layers.

For the ``--channels`` most active channels (on held-out crops) of ``conv3`` and ``conv4``,
both paths run ``--steps`` steps at their defaults from the same seed, and:

* robustness: the channel's mean activation (before its ReLU, what both paths raise) on the
  image under 32 random draws of Lucid's standard moves (jitter, scale, rotate; the Fourier
  path trains under the same kind of draws, the pixel path under 2-pixel jitter only),
  Fourier over pixel; also on the image as it is;
* high-frequency energy: the share of spectral power above half the Nyquist frequency
  (:func:`tbviz.methods.parameterization.high_frequency_share`), of each path's images and of
  the held-out photo crops;
* a picture: per channel, the pixel path, the Fourier path, and the held-out crop that
  raises the channel most, side by side (``--out``, default
  ``docs/synthesis_fourier_vs_pixel.png``).

    python scripts/bench_synthesis.py [--epochs 8] [--steps 256] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(here, "..")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from skimage import data, transform  # noqa: E402

from tbviz import synthesis  # noqa: E402
from tbviz.methods import parameterization as pz  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "brick", "camera", "coins", "grass", "gravel", "moon")
SIZE = 64
LAYERS = ("conv3", "conv4")


def photos(side=256):
    """The photographs in RGB (gray ones repeated), ``(12, side, side, 3)`` in [0, 255]."""
    out = []
    for name in PHOTOS:
        im = getattr(data, name)()
        im = np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im[..., :3]
        out.append(transform.resize(im, (side, side), anti_aliasing=True, preserve_range=True))
    return np.stack(out).astype(np.float32)


def crops(stack, n, rng):
    """``n`` random crops: photo index, a square of 15-50% of the side, flip, brightness."""
    side = stack.shape[1]
    labels = rng.integers(0, len(stack), n)
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i, k in enumerate(labels):
        s = int(rng.uniform(0.15, 0.5) * side)
        r, c = rng.integers(0, side - s + 1, 2)
        crop = transform.resize(stack[k, r:r + s, c:c + s], (SIZE, SIZE), anti_aliasing=True,
                                preserve_range=True)
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    out = np.clip(out + rng.uniform(-25, 25, (n, 1, 1, 1)), 0, 255)
    return out, labels


def network():
    """Conv layers without a fused activation: their outputs are what the objective raises."""
    x = inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    for i, width in enumerate((32, 64, 96, 128), 1):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < 4:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(len(PHOTOS), name="logits")(x)
    return keras.Model(inp, out, name="photos64")


def train(args):
    rng = np.random.default_rng(args.seed)
    stack = photos()
    keras.utils.set_random_seed(args.seed)
    model = network()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    test_x, test_y = crops(stack, 512, np.random.default_rng(args.seed + 100))
    start = time.perf_counter()
    for epoch in range(args.epochs):  # fresh crops every epoch: nothing to memorize
        x, y = crops(stack, args.per_epoch, rng)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    _, acc = model.evaluate(test_x, test_y, batch_size=128, verbose=0)
    return model, test_x, float(acc), time.perf_counter() - start


def channel_means(model, layer, x):
    feats = keras.Model(model.inputs[0], model.get_layer(layer).output)
    return keras.ops.convert_to_numpy(feats.predict(x, batch_size=128, verbose=0)).mean((1, 2))


def under_moves(model, layer, images, channels, draws, seed):
    """The channels' mean activation on each image under ``draws`` standard moves, ``(K,)``."""
    rng = np.random.default_rng(seed)
    out = []
    for image, ch in zip(images, channels):
        warps = pz.transform_matrices(rng, pz.STANDARD, draws, SIZE, SIZE)
        moved = keras.ops.convert_to_numpy(
            pz.transformed(np.repeat(image[None], draws, 0), warps, 127.5))
        out.append(channel_means(model, layer, moved)[:, ch].mean())
    return np.array(out)


def tile(image, scale=2):
    im = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return im.resize((SIZE * scale, SIZE * scale), Image.NEAREST)


def picture(rows, path):
    """``rows``: (label, pixel image, Fourier image, top crop); three columns, one row each."""
    cell, pad, head = SIZE * 2, 6, 22
    width = 130 + 3 * (cell + pad)
    canvas = Image.new("RGB", (width, head + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(("pixel (Yosinski)", "Fourier (Olah/Lucid)", "top photo crop")):
        draw.text((130 + j * (cell + pad), 4), title, fill="black")
    for i, (label, *images) in enumerate(rows):
        y = head + i * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for j, image in enumerate(images):
            canvas.paste(tile(image), (130 + j * (cell + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def run(args):
    model, test_x, acc, seconds = train(args)
    print(f"{keras.backend.backend()}: trained {args.epochs} epochs x {args.per_epoch} crops in "
          f"{seconds:.0f} s; held-out accuracy {acc:.3f} (chance {1 / len(PHOTOS):.3f})")
    photo_hf = pz.high_frequency_share(test_x)
    rows, results = [], []
    for layer in LAYERS:
        means = channel_means(model, layer, test_x)
        channels = np.argsort(means.mean(0))[::-1][:args.channels].tolist()
        made = {}
        for param in ("pixel", "fourier"):
            start = time.perf_counter()
            images, trace = synthesis.maximize_activation(model, layer, channels,
                                                          steps=args.steps, param=param,
                                                          seed=args.seed)
            made[param] = (images, trace[-1], time.perf_counter() - start)
        moved = {p: under_moves(model, layer, made[p][0], channels, 32, args.seed + 7)
                 for p in made}
        hf = {p: pz.high_frequency_share(made[p][0]) for p in made}
        for k, ch in enumerate(channels):
            top = test_x[np.argmax(means[:, ch])]
            rows.append((f"{layer} ch {ch}", made["pixel"][0][k], made["fourier"][0][k], top))
            results.append({"layer": layer, "channel": ch,
                            "still": made["fourier"][1][k] / made["pixel"][1][k],
                            "moved": moved["fourier"][k] / moved["pixel"][k],
                            "moved_f": moved["fourier"][k], "moved_p": moved["pixel"][k],
                            "hf_f": hf["fourier"][k], "hf_p": hf["pixel"][k]})
        print(f"{layer}: pixel {made['pixel'][2]:.1f} s, Fourier {made['fourier'][2]:.1f} s "
              f"for {len(channels)} channels x {args.steps} steps")
    picture(rows, args.out)
    report(results, float(photo_hf.mean()), args)


def report(results, photo_hf, args):
    def gmean(key):
        return float(np.exp(np.mean(np.log([r[key] for r in results]))))

    hf_f = float(np.mean([r["hf_f"] for r in results]))
    hf_p = float(np.mean([r["hf_p"] for r in results]))
    summary = [
        ("target activation under 32 standard moves, Fourier / pixel (geometric mean)",
         f"{gmean('moved'):.2f}x"),
        ("target activation on the image as it is, Fourier / pixel (geometric mean)",
         f"{gmean('still'):.2f}x"),
        ("high-frequency share, Fourier / pixel", f"{hf_f / hf_p:.2f}x ({hf_f:.3f} / {hf_p:.3f})"),
        ("high-frequency share, Fourier / photos", f"{hf_f / photo_hf:.2f}x "
                                                  f"({hf_f:.3f} / {photo_hf:.3f})"),
        ("high-frequency share, pixel / photos", f"{hf_p / photo_hf:.2f}x "
                                                f"({hf_p:.3f} / {photo_hf:.3f})"),
    ]
    if args.markdown:
        print(f"\n| measure ({args.steps} steps, {len(results)} channels) | result |\n|---|---|")
        for what, value in summary:
            print(f"| {what} | {value} |")
        print("\n| layer | channel | moved F/P | still F/P | HF Fourier | HF pixel |\n"
              "|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['layer']} | {r['channel']} | {r['moved']:.2f} | {r['still']:.2f} | "
                  f"{r['hf_f']:.3f} | {r['hf_p']:.3f} |")
    else:
        for what, value in summary:
            print(f"{what}: {value}")
        for r in results:
            print(f"  {r['layer']} {r['channel']:3d}: moved {r['moved_f']:.3f} vs "
                  f"{r['moved_p']:.3f} ({r['moved']:.2f}x), still {r['still']:.2f}x, HF "
                  f"{r['hf_f']:.3f} vs {r['hf_p']:.3f}")
    print(f"picture: {args.out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--per-epoch", type=int, default=2048, help="fresh crops per epoch")
    p.add_argument("--steps", type=int, default=256, help="synthesis steps, both paths")
    p.add_argument("--channels", type=int, default=4, help="channels per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(here, "..", "docs",
                                                 "synthesis_fourier_vs_pixel.png"))
    p.add_argument("--markdown", action="store_true")
    run(p.parse_args())
