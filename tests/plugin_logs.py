"""Log directories for the dashboard's tests.

Deconvnet and attribution panels come from the real :class:`tbviz.DeconvnetCallback`
and :class:`tbviz.AttributionCallback` on small models. Stylized panels are written by
the contract (:func:`tbviz.summary.metadata.write_panel`) exactly as the style
pipeline's ``StylizedProbes`` writes them.
"""

import contextlib
import json
import os

import numpy as np
from tensorboard.util import tensor_util

import eventfiles
import models
from tbviz.summary import events, images, metadata


@contextlib.contextmanager
def writing(run_dir, step=None):
    """An event file of its own in ``run_dir``, the default for tbviz's writers while open."""
    writer = events.EventWriter.open(str(run_dir))
    try:
        with writer.as_default(step=step):
            yield writer
    finally:
        writer.close()


def photo(seed: int, size: int = 64) -> np.ndarray:
    """A smooth RGB test picture (uint8), different per seed, no downloads."""
    y, x = np.mgrid[0:size, 0:size] / size
    r = np.random.default_rng(seed)
    f = r.uniform(1, 4, size=(3, 2))
    chans = [np.sin(2 * np.pi * (f[c, 0] * x + f[c, 1] * y) + seed) for c in range(3)]
    return ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)


def train_deconvnet_run(log_dir, model, layers, epochs: int, top_k: int = 9, n: int = 8,
                        attribution: bool = False, extras: bool = False):
    """Fit ``model`` (one step per epoch) with the real :class:`tbviz.DeconvnetCallback`
    (and :class:`tbviz.AttributionCallback`, Grad-CAM of the true class of 3 probe images,
    if ``attribution``; with its opt-in Images-dashboard grids and raw tensors if ``extras``);
    returns the run directory ``<log_dir>/train``."""
    import keras

    import tbviz

    x = np.stack([photo(i, model.input_shape[1]) for i in range(n)]).astype(np.float32) / 255
    y = np.arange(n) % model.output_shape[-1]
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [tbviz.DeconvnetCallback(log_dir, probe_images=x[:4], layers=layers,
                                         top_k=top_k, image_grids=extras, raw=extras)]
    if attribution:
        callbacks.append(tbviz.AttributionCallback(log_dir, probe_images=x[:3], target=y[:3],
                                                   methods=["grad_cam"]))
    model.fit(x, y, epochs=epochs, batch_size=n, verbose=0, callbacks=callbacks)
    return os.path.join(log_dir, "train")


def write_scan_run(log_dir, n_maps: int = 3, top_k: int = 4, epochs: int = 2):
    """A deconvnet run with scan data only (40 photos): the feature-map view of conv1 of a
    small Sequential for ``n_maps`` fixed maps. Returns the run directory."""
    import keras

    import tbviz

    model = models.sequential((24, 24, 3))
    x = np.stack([photo(i, 24) for i in range(40)]).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = tbviz.DeconvnetCallback(log_dir, layers=["conv1"], scan_data=x, top_k=top_k,
                                 channels=list(range(n_maps)))
    model.fit(x[:8], np.arange(8) % 3, epochs=epochs, verbose=0, callbacks=[cb])
    return os.path.join(log_dir, "train")


class Kicks:
    """A Keras callback: learning rate 0 (nothing learns), except that at step ``s`` of
    ``{s: layer}`` the layer's first filter is scaled 30x (after that step's update,
    before any tbviz callback looks), so the layer and those above it move at ``s`` only."""

    def __new__(cls, kicks):
        import keras

        class _Kicks(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.model.optimizer.learning_rate.assign(0.0)

            def on_train_batch_end(self, batch, logs=None):
                layer = kicks.get(int(self.model.optimizer.iterations.numpy()))
                if layer is not None:
                    kernel = self.model.get_layer(layer).kernel
                    scale = np.ones(kernel.shape[-1], np.float32)
                    scale[0] = 30.0
                    kernel.assign(kernel * scale)

        return _Kicks()


#: The settle run's layers: conv1 moves at step 2 only (settles at 3, said at 5 with
#: patience 3); conv2 moves at 2 (with conv1 under it) and again at 5, so it never settles.
SETTLE_KICKS = {2: "conv1", 5: "conv2"}
SETTLE_EPOCHS = 7


def write_settle_run(log_dir, layers=("conv1", "conv2")):
    """Deconvnet evolution and convergence of ``layers`` of a small Sequential over 7 epochs
    of one step, where nothing learns but :data:`SETTLE_KICKS` moves the layers. Returns
    the run directory."""
    import keras

    import tbviz

    keras.utils.set_random_seed(3)
    model = models.sequential()
    x = np.stack([photo(i, 12) for i in range(8)]).astype(np.float32) / 255
    model.compile(keras.optimizers.SGD(0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [Kicks(SETTLE_KICKS),
                 tbviz.DeconvnetCallback(log_dir, probe_images=x[:4], layers=list(layers),
                                         top_k=4, channels=[0, 1, 2]),
                 tbviz.ConvergenceCallback(log_dir, x[:8], layers=list(layers), patience=3)]
    model.fit(x, np.arange(8) % 3, epochs=SETTLE_EPOCHS, batch_size=8, verbose=0,
              callbacks=callbacks)
    return os.path.join(log_dir, "train")


def write_attribution(run_dir, steps, method: str = "grad_cam", n: int = 3):
    """Heatmaps over probe photos, by the contract (as ``AttributionCallback`` writes them)."""
    with writing(run_dir):
        for step in steps:
            heat = [images.overlay(photo(i), np.outer(np.hanning(64), np.roll(np.hanning(64),
                                                                              8 * (i + step))))
                    for i in range(n)]
            metadata.write_panel(f"tbviz/attribution/{method}", metadata.ATTRIBUTION,
                                 [metadata.encode_png(h) for h in heat],
                                 tiles=[{"method": method, "image_index": i, "target": 2 * i}
                                        for i in range(n)], step=step, method=method)


def write_stylized(run_dir, steps, n: int = 3):
    """Stylized probe photos, as ``StylizedProbes`` writes them but as PNGs (as a tbviz
    before panel version 3 did; the tab reads both)."""
    with writing(run_dir):
        for step in steps:
            pngs = [metadata.encode_png(photo(10 * i + step)) for i in range(n)]
            metadata.write_panel("tbviz/stylized/probes", metadata.STYLIZED, pngs,
                                 tiles=[{"label": f"photo {i}", "index": i} for i in range(n)],
                                 step=step, description="The transform-net's output on fixed "
                                                        "probe photos")


def write_dashboard_logs(root):
    """Three runs: ``cnn/train`` (deconvnet on a functional model with a nested block,
    with the opt-in grids and raw tensors beside its panels, and Grad-CAM; 5 epochs), ``long/train`` (deconvnet on conv1 of a small Sequential,
    50 epochs, top 4) and ``style/train`` (stylized probes). Returns ``{run: run_dir}``."""
    cnn = train_deconvnet_run(os.path.join(root, "cnn"), models.functional_bn_nested(),
                              ["conv1", "block/inner_conv"], epochs=5, attribution=True,
                              extras=True)
    long = train_deconvnet_run(os.path.join(root, "long"), models.sequential(), ["conv1"],
                               epochs=50, top_k=4)
    style = os.path.join(root, "style", "train")
    write_stylized(style, [1, 2, 3, 5, 8])
    return {"cnn/train": cnn, "long/train": long, "style/train": style}


def write_two_networks(run_dir):
    """Top-k panels of two networks' layers in one run, named by ``model`` (as the style
    pipeline logs a transform-net and VGG19), by the contract. Returns the layers,
    ``[(model, layer, layer_index)]``."""
    layers = [("vgg19", "block3_conv1", 7), ("transform_net", "res5", 38),
              ("vgg19", "block1_conv1", 1), ("transform_net", "conv1", 1)]
    png = metadata.encode_png(photo(0, 16))
    unit = {"image_index": 0, "row": 1, "col": 2, "channel": 3, "value": 4.0, "unit": 0}
    with writing(run_dir, step=1):
        for model, layer, index in layers:
            metadata.write_panel(f"tbviz/deconvnet/{layer}/topk", metadata.TOPK, [png, png],
                                 tiles=[dict(unit, role="projection"), dict(unit, role="patch")],
                                 layer=layer, layer_index=index, model=model, rule="deconvnet",
                                 k=1)
    return layers


def write_from_the_future(run_dir, step: int = 1):
    """Two panels a newer tbviz could write: ``tbviz/future/topk`` with the next panel format
    version and ``tbviz/future/hologram`` of a kind this build does not know."""
    png = metadata.encode_png(photo(0, 16))
    with writing(run_dir, step=step):
        for tag, change in (("tbviz/future/topk", {"version": metadata.VERSION + 1}),
                            ("tbviz/future/hologram", {"kind": "hologram"})):
            md = metadata.create_panel_metadata(metadata.TOPK, layer="x", layer_index=0)
            content = json.loads(md.plugin_data.content)
            md.plugin_data.content = json.dumps({**content, **change}).encode()
            events.tensor(tag, np.array([b'{"tiles": [{}]}', png], dtype=object), metadata=md)


_BUILT = {}


def dashboard_logs(tmp_path_factory):
    """:func:`write_dashboard_logs` once per test session: ``(root, {run: run_dir})``.
    Shared by the plugin's test modules; treat it as read-only (copy it to change it)."""
    if "logs" not in _BUILT:
        root = tmp_path_factory.mktemp("dashboard_logs")
        _BUILT["logs"] = (root, write_dashboard_logs(str(root)))
    return _BUILT["logs"]


def settle_logs(tmp_path_factory):
    """:func:`write_settle_run` once per test session, as ``settle/train`` of a log
    directory of its own: ``(root, run_dir)``. Read-only, as :func:`dashboard_logs`."""
    if "settle" not in _BUILT:
        root = tmp_path_factory.mktemp("settle_logs")
        _BUILT["settle"] = (root, write_settle_run(str(root / "settle")))
    return _BUILT["settle"]


def header(run_dir, tag, step=None):
    """Blob 0 of a panel step as written (the last step by default), read back with
    TensorBoard's ``EventAccumulator``."""
    events = eventfiles.load(run_dir).Tensors(tag)
    event = events[-1] if step is None else next(e for e in events if e.step == step)
    return json.loads(tensor_util.make_ndarray(event.tensor_proto)[0])


#: Tag of the panel :func:`write_heavy_run` writes.
HEAVY_TAG = "tbviz/stylized/heavy"


def write_heavy_run(run_dir, steps: int, tiles: int, side: int, tag: str = HEAVY_TAG,
                    seed: int = 0):
    """A stylized panel of ``steps`` steps, each ``tiles`` tiles of ``side`` px of random
    noise (stored as PNG: it does not compress, so an animation of it is as large as one
    of its size gets), by the contract. For the memory tests and scripts/bench_plugin.py."""
    rng = np.random.default_rng(seed)
    with writing(run_dir):
        for step in range(1, steps + 1):
            pngs = [metadata.encode_png(rng.integers(0, 256, (side, side, 3), np.uint8))
                    for _ in range(tiles)]
            metadata.write_panel(tag, metadata.STYLIZED, pngs,
                                 tiles=[{"label": f"noise {i}"} for i in range(tiles)],
                                 step=step)


def write_largest_animation(run_dir, tiles: int = 4):
    """The worst animation the server allows: a panel of ``tiles`` noise tiles a step, each
    as large as a frame of them may be (``MAX_FRAME_PIXELS``), and as many steps as the
    pixel budget (``MAX_ANIMATION_PIXELS``) allows, plus one that takes it over. Returns
    ``(allowed steps, Layout of a frame)``; the animation of steps ``1..allowed`` is the
    largest allowed, of ``1..allowed + 1`` refused."""
    from tbviz.plugin import animation, tbviz_plugin

    def frame(side):
        return animation.layout([[(side, side)] * tiles])

    side = 64
    while frame(side + 1).pixels <= tbviz_plugin.MAX_FRAME_PIXELS:
        side += 1
    plan = frame(side)
    allowed = tbviz_plugin.MAX_ANIMATION_PIXELS // plan.pixels
    write_heavy_run(run_dir, steps=allowed + 1, tiles=tiles, side=side)
    return allowed, plan
