"""Log directories with tbviz panels for the dashboard's tests, written by the contract
(:func:`tbviz.summary.metadata.write_panel`) exactly as the callbacks write them."""

import os

import numpy as np
import tensorflow as tf

from tbviz.summary import images, metadata


def _photo(seed: int, size: int = 64) -> np.ndarray:
    """A smooth RGB test picture (uint8), different per seed, no downloads."""
    y, x = np.mgrid[0:size, 0:size] / size
    r = np.random.default_rng(seed)
    f = r.uniform(1, 4, size=(3, 2))
    chans = [np.sin(2 * np.pi * (f[c, 0] * x + f[c, 1] * y) + seed) for c in range(3)]
    return ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)


def _pattern(seed: int, size: int, spread: float = 0.08) -> np.ndarray:
    """A projection-like tile: an oriented grating under a Gaussian, as uint8 RGB."""
    r = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size] - size / 2) / size
    theta, freq = r.uniform(0, np.pi), r.uniform(2, 6)
    wave = np.cos(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)))
    env = np.exp(-(x**2 + y**2) / spread)
    rgb = wave[..., None] * env[..., None] * r.uniform(0.3, 1, 3)
    return images.normalize(rgb[None])[0]


def topk_panel(step: int, layer: str, k: int = 9, size: int = 24, seed: int = 0):
    """``(pngs, tiles)`` of a top-k step: k projections then the k matching patches."""
    r = np.random.default_rng(seed + step)
    pngs, proj, patch = [], [], []
    for i in range(k):
        unit = dict(unit=i, image_index=int(r.integers(4)), row=int(r.integers(8)),
                    col=int(r.integers(8)), channel=int(r.integers(16)),
                    value=float(np.round(10 - i + r.random(), 3)))
        proj.append({"role": "projection", **unit})
        patch.append({"role": "patch", **unit})
        pngs.append(metadata.encode_png(_pattern(seed * 100 + i + step, size)))
    for t in patch:
        photo = _photo(t["image_index"])
        r0, c0 = 4 * t["row"] % (64 - size), 4 * t["col"] % (64 - size)
        pngs.append(metadata.encode_png(np.ascontiguousarray(photo[r0:r0 + size, c0:c0 + size])))
    return pngs, proj + patch


def evolution_panel(step: int, channels=(3, 7, 11, 15), size: int = 24):
    """``(pngs, tiles)`` of an evolution step: one projection per fixed map, then patches."""
    pngs, proj, patch = [], [], []
    for c in channels:
        info = dict(channel=c, value=round(0.5 * step + c, 3), image_index=c % 4, row=c % 5,
                    col=c % 3)
        proj.append({"role": "projection", **info})
        patch.append({"role": "patch", **info})
        # looks like training: the feature map's projection sharpens as steps go by
        pngs.append(metadata.encode_png(_pattern(c, size, spread=0.5 / (1 + 0.5 * step))))
    pngs += [metadata.encode_png(_photo(t["image_index"])[:size, :size].copy()) for t in patch]
    return pngs, proj + patch


def write_demo_logs(logdir, steps=(1, 2, 3, 5, 8), layers=("conv1", "block/conv2")):
    """Two runs: ``cnn/train`` (top-k, evolution, attribution) and ``style/train``
    (stylized probes). Returns ``{run: run_dir}``."""
    runs = {"cnn/train": os.path.join(logdir, "cnn", "train"),
            "style/train": os.path.join(logdir, "style", "train")}
    w = tf.summary.create_file_writer(runs["cnn/train"])
    with w.as_default():
        for step in steps:
            for li, layer in enumerate(layers):
                pngs, tiles = topk_panel(step, layer, seed=li)
                metadata.write_panel(f"tbviz/deconvnet/{layer}/topk", "topk", pngs, tiles,
                                     step=step, layer=layer, layer_index=li,
                                     rule="deconvnet", k=9)
                pngs, tiles = evolution_panel(step)
                metadata.write_panel(f"tbviz/deconvnet/{layer}/evolution", "evolution", pngs,
                                     tiles, step=step, layer=layer, layer_index=li,
                                     rule="deconvnet", channels=[3, 7, 11, 15])
            heat = [images.overlay(_photo(i), _pattern(i, 64)[..., 0] / 255.0) for i in range(3)]
            metadata.write_panel("tbviz/attribution/gradcam", "attribution",
                                 [metadata.encode_png(h) for h in heat],
                                 [{"method": "gradcam", "image_index": i, "target": 2 * i}
                                  for i in range(3)], step=step, method="gradcam")
    w.close()
    w = tf.summary.create_file_writer(runs["style/train"])
    with w.as_default():
        for step in steps:
            photos = [metadata.encode_png(_photo(10 * i + step)) for i in range(3)]
            metadata.write_panel("tbviz/stylized/probes", "stylized", photos,
                                 [{"label": f"photo {i}", "index": i} for i in range(3)],
                                 step=step, name="probes")
    w.close()
    return runs


def write_long_run(logdir, n_steps: int = 50, layer: str = "conv1"):
    """One run with ``n_steps`` logged evolution and top-k steps (10, 20, ...)."""
    run_dir = os.path.join(logdir, "long", "train")
    w = tf.summary.create_file_writer(run_dir)
    with w.as_default():
        for i in range(1, n_steps + 1):
            pngs, tiles = evolution_panel(10 * i, size=12)
            metadata.write_panel(f"tbviz/deconvnet/{layer}/evolution", "evolution", pngs, tiles,
                                 step=10 * i, layer=layer, layer_index=0, rule="deconvnet")
            pngs, tiles = topk_panel(10 * i, layer, k=4, size=12)
            metadata.write_panel(f"tbviz/deconvnet/{layer}/topk", "topk", pngs, tiles,
                                 step=10 * i, layer=layer, layer_index=0, rule="deconvnet", k=4)
    w.close()
    return run_dir
