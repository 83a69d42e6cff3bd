"""Feature maps of fixed probe images and the kernels of conv layers, logged while training.

Tags: ``feature_maps/<layer>`` (one grid of all channels per probe image) and
``kernels/<layer>`` (one grid of the layer's filters: RGB tiles for a first layer,
one row of gray tiles per filter for deeper ones). See :mod:`tbviz.methods.feature_maps`.

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


from tbviz.core import probes
from tbviz.callbacks.base import VizCallback
from tbviz.core.checks import positive_int
from tbviz.methods.feature_maps import conv_layers, display_scale, grid_outputs, kernel_grid, map_grids
from tbviz.core.layers import check_images, check_layers, get_layer
from tbviz.core.tokens import default_token_layers
from tbviz.summary import events


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
        token_grid / class_token: a vision transformer's patch grid ``(h, w)`` and whether
            its first token is a class token, where they cannot be found from the token
            count (see :mod:`tbviz.core.tokens`). Token layers are shown on that grid; a model
            with token layers after its last conv layer shows its last token layer (its last
            transformer block's output, :func:`tbviz.core.tokens.default_token_layers`), and
            one without conv layers its first and last.
        strict: re-raise a failure instead of switching that layer off.
    """

    def __init__(self, log_dir, probe_images=None, layers=None, kernel_layers=None,
                 scale: int | None = None, max_batch: int = 32, every_n_epochs: int | None = 1,
                 every_n_steps: int | None = None, max_channels: int = 64,
                 token_grid=None, class_token=None, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        self.probe_images = probe_images
        self.max_channels = positive_int("max_channels", max_channels)
        self.layers = _paths(layers)
        self.kernel_layers = _paths(kernel_layers)
        if self.layers and probe_images is None:
            raise ValueError("feature maps need probe_images; pass some, or layers=[] for "
                             "kernels only")
        self.scale = positive_int("scale", scale, allow_none=True)
        self.max_batch = positive_int("max_batch", max_batch)
        self.token_grid, self.class_token = token_grid, class_token
        self._grids = {}
        self._probes = None
        self._scales = {}

    def check(self):
        model = self.model
        convs = conv_layers(model)
        if self.layers is None:  # the first and the last conv layer (once if they are one)
            self.layers = [] if self.probe_images is None else self._default_layers(convs)
        if self.kernel_layers is None:
            self.kernel_layers = convs[:1]
        check_layers(model, self.layers + self.kernel_layers)
        if self.layers:
            self._probes = check_images(model, self.probe_images, "probe_images")
        for layer in self.layers:
            grid = probes.check_spatial(model, self._probes.shape[1:], layer, "feature_maps()",
                                        self.token_grid, self.class_token)
            self._grids[layer] = grid
            self._scales[layer] = self.scale or display_scale(max(grid[:2]))
        for layer in self.kernel_layers:
            kernel_grid(model, layer)  # raises for a layer without a kernel, listing those with one
            size = max(get_layer(model, layer).kernel.shape[:2])
            self._scales["kernels", layer] = self.scale or display_scale(size)
        if not (self.layers or self.kernel_layers):
            raise ValueError(f"nothing to log: model {model.name!r} has no conv layers "
                             "and no layers of patch tokens, and no layers were given")

    def _default_layers(self, convs) -> list[str]:
        """The first and the last conv layer; where token layers come after the last conv
        (a vision transformer: its patch embedding is the only conv, or it has none), the
        last of those on its grid, and without any conv layer the first of them too."""
        first, last = convs[:1], convs[-1:]
        if self.probe_images is not None:
            image_shape = check_images(self.model, self.probe_images, "probe_images").shape[1:]
            shapes = probes.layer_output_shapes(self.model, image_shape)
            order = list(shapes)
            shown = default_token_layers(self.model, shapes, image_shape, 2, self.token_grid,
                                         self.class_token)
            after = [p for p in shown if not convs or (convs[-1] in order and
                                                       order.index(p) > order.index(convs[-1]))]
            last = after[-1:] or last
            first = first or after[:1]
        return list(dict.fromkeys(first + last))

    def own_inputs(self):
        mine = getattr(self, "_probes", None)
        return mine if mine is not None else super().own_inputs()

    def write(self, step, logs):
        with self.writer.as_default(step=step):
            for layer in self.live(self.layers):
                with self.guard(f"step {step}", item=layer, layer=layer):
                    self._write_maps(layer)
            for item in self.live(("kernels", layer) for layer in self.kernel_layers):
                with self.guard(f"step {step}", item=item, layer=item[1]):
                    self._write_kernels(item[1])

    def _write_maps(self, layer):
        maps = grid_outputs(self.model, self._probes, layer, self._grids[layer], self.max_batch)
        maps = self.finite(f"feature_maps/{layer}", maps[..., :self.max_channels])
        grids = map_grids(maps, scale=self._scales[layer])
        events.image(f"feature_maps/{layer}", grids, max_outputs=len(grids),
                         description=f"channels 0..{self.max_channels - 1} (at most) of "
                                     f"{layer}, one grid per probe image")

    def _write_kernels(self, layer):
        self.finite(f"kernels/{layer}", get_layer(self.model, layer).kernel)
        image = kernel_grid(self.model, layer, scale=self._scales["kernels", layer])
        events.image(f"kernels/{layer}", image[None], description=f"the filters of {layer}")
