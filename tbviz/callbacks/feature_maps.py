"""Feature maps of fixed probe images and the kernels of conv layers, logged while training.

Tags: ``feature_maps/<layer>`` (one grid of all channels per probe image) and
``kernels/<layer>`` (one grid of the layer's filters: RGB tiles for a first layer,
one row of gray tiles per filter for deeper ones). See :mod:`tbviz.feature_maps`.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.callbacks.feature_maps import FeatureMapsCallback
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv2"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> x, y = np.random.rand(8, 16, 16, 3) * 255, np.arange(8) % 2
    >>> cb = FeatureMapsCallback("runs/doc_maps", probe_images=x[:2])  # maps: conv1, conv2
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
"""

from __future__ import annotations

import tensorflow as tf

from tbviz import _probe
from tbviz.callbacks.base import VizCallback
from tbviz.checks import positive_int
from tbviz.feature_maps import conv_layers, display_scale, kernel_grid, map_grids
from tbviz.layers import check_images, check_layers, get_layer


def _paths(value):
    return [value] if isinstance(value, str) else None if value is None else list(value)


class FeatureMapsCallback(VizCallback):
    """Log feature-map grids and kernel grids every ``every_n_epochs`` epochs and/or
    every ``every_n_steps`` optimizer steps.

    Args:
        log_dir: the run directory (summaries go to ``<log_dir>/train``).
        probe_images: images whose feature maps are shown (``None``: kernels only).
        layers: layer paths with 4-D outputs to show; default the first and the last
            conv layer. ``[]`` logs no feature maps.
        kernel_layers: conv layer paths whose kernels to show; default the first conv
            layer. ``[]`` logs no kernels.
        scale: enlarge tiles by this integer factor; ``None`` makes tiles at least
            32 pixels wide (3x3 kernels are unreadable at their own size).
        max_batch: most images per forward pass.
        max_channels: show at most this many channels of a layer (the first ones);
            a 1280-channel layer would give an unreadable, slow 36x36 grid.
    """

    def __init__(self, log_dir, probe_images=None, layers=None, kernel_layers=None,
                 scale: int | None = None, max_batch: int = 32, every_n_epochs: int | None = 1,
                 every_n_steps: int | None = None, max_channels: int = 64):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps)
        self.probe_images = probe_images
        self.max_channels = positive_int("max_channels", max_channels)
        self.layers = _paths(layers)
        self.kernel_layers = _paths(kernel_layers)
        if self.layers and probe_images is None:
            raise ValueError("feature maps need probe_images; pass some, or layers=[] for "
                             "kernels only")
        self.scale = positive_int("scale", scale, allow_none=True)
        self.max_batch = positive_int("max_batch", max_batch)
        self._probes = None
        self._scales = {}

    def setup(self):
        model = self.model
        convs = conv_layers(model)
        if self.layers is None:  # the first and the last conv layer (once if they are one)
            first_last = list(dict.fromkeys(convs[:1] + convs[-1:]))
            self.layers = [] if self.probe_images is None else first_last
        if self.kernel_layers is None:
            self.kernel_layers = convs[:1]
        check_layers(model, self.layers + self.kernel_layers)
        if self.layers:
            self._probes = check_images(model, self.probe_images, "probe_images")
        for layer in self.layers:
            shape = _probe.check_layer_rank(model, self._probes.shape[1:], layer, {4},
                                            "feature_maps()")
            self._scales[layer] = self.scale or display_scale(max(shape[1:3]))
        for layer in self.kernel_layers:
            kernel_grid(model, layer)  # raises for a layer without a kernel, listing those with one
            size = max(get_layer(model, layer).kernel.shape[:2])
            self._scales["kernels", layer] = self.scale or display_scale(size)
        if not (self.layers or self.kernel_layers):
            raise ValueError(f"nothing to log: model {model.name!r} has no conv layers "
                             "and no layers were given")

    def write(self, step, logs):
        with self.writer.as_default(step=step):
            for layer in self.layers:
                maps = _probe.layer_outputs(self.model, self._probes, layer, self.max_batch)
                maps = self.finite(f"feature_maps/{layer}", maps[..., :self.max_channels])
                grids = map_grids(maps, scale=self._scales[layer])
                tf.summary.image(f"feature_maps/{layer}", grids, max_outputs=len(grids),
                                 description=f"channels 0..{self.max_channels - 1} (at most) of "
                                             f"{layer}, one grid per probe image")
            for layer in self.kernel_layers:
                self.finite(f"kernels/{layer}", get_layer(self.model, layer).kernel)
                image = kernel_grid(self.model, layer, scale=self._scales["kernels", layer])
                tf.summary.image(f"kernels/{layer}", image[None],
                                 description=f"the filters of {layer}")
