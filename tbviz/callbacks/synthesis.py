"""Synthesized images tracked over training: activation maximization, inversion, DeepDream.

Each trigger re-runs the synthesis from the same seeded start, so what changes
from step to step in TensorBoard is what the network learned. Tags:

* ``synthesis/<layer>/<channel>``: the image maximizing that channel's mean activation
  (:func:`tbviz.methods.synthesis.maximize_activation` at its defaults: a Fourier image
  with decorrelated colours, robust to random moves, after Olah et al. 2017;
  ``options={"maximize": {"param": "pixel"}}`` for the pixel path of Yosinski et al.),
* ``synthesis/inversion/<layer>``: each probe image reconstructed from that layer,
* ``synthesis/deepdream``: each probe image dreamt through the ``dream`` layers.

Synthesis costs ``steps`` forward and backward passes per image, so the defaults
are modest (32 steps); raise ``steps`` or lower the frequency for finer images.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.callbacks.synthesis import SynthesisCallback
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> x, y = np.random.rand(8, 16, 16, 3) * 255, np.arange(8) % 2
    >>> cb = SynthesisCallback("runs/doc_synthesis", probe_images=x[:2], maximize={"conv": [0, 1]},
    ...                        invert=["conv"], dream=["conv"], steps=8)
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
"""

from __future__ import annotations

import inspect

import numpy as np

from tbviz.methods import synthesis
from tbviz.callbacks.base import VizCallback
from tbviz.core.checks import positive_int
from tbviz.core.checks import value_range as check_value_range
from tbviz.core.layers import check_images, check_layers, image_input_shape
from tbviz.summary.images import to_uint8
from tbviz.summary import events

_FUNCS = {"maximize": synthesis.maximize_activation, "invert": synthesis.invert_features,
          "dream": synthesis.deepdream}
_FIXED = {"maximize": ("model", "layer", "channel", "value_range"),
          "invert": ("model", "image", "layer", "value_range"),
          "dream": ("model", "image", "layers", "value_range")}


def _option_names(kind: str) -> list[str]:
    return [p for p in inspect.signature(_FUNCS[kind]).parameters if p not in _FIXED[kind]]


class SynthesisCallback(VizCallback):
    """Log synthesized images every ``every_n_epochs`` epochs and/or ``every_n_steps`` steps.

    Args:
        log_dir: the run directory (summaries go to ``<log_dir>/train``).
        probe_images: images to invert and to dream on (needed for ``invert``/``dream``).
        maximize: ``{layer: channels}``; ``channels`` a list of indices or an int ``n``
            for the first ``n`` channels. All channels of a layer are optimized as one batch.
        invert: layer path(s) to reconstruct each probe image from.
        dream: layer path(s) whose activations DeepDream amplifies together.
        steps: optimization steps (DeepDream: per octave).
        value_range: the model's input range, which bounds the pixels and maps them
            to display (default ``(0, 255)``).
        options: extra keyword arguments per kind, e.g. ``{"maximize": {"transforms": None},
            "invert": {"tv_weight": 0.1}, "dream": {"octaves": 2}}``. DeepDream uses 3
            octaves on models that take any image size and 1 otherwise, unless given.
        strict: re-raise a failure instead of switching that layer's synthesis off.

    Nothing here touches the weights or TensorFlow's random state: training is
    bit-identical with and without this callback.
    """

    def __init__(self, log_dir, probe_images=None, maximize: dict | None = None, invert=None,
                 dream=None, steps: int = 32, value_range=(0.0, 255.0),
                 options: dict | None = None, every_n_epochs: int | None = 1,
                 every_n_steps: int | None = None, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        self.maximize = dict(maximize or {})
        for layer, channels in self.maximize.items():
            if not isinstance(layer, str) or not (
                    (isinstance(channels, (int, np.integer)) and not isinstance(channels, bool)
                     and channels >= 1)
                    or (np.ndim(channels) == 1 and len(channels) > 0)):
                raise ValueError(f"maximize maps layer paths to channel lists or counts, e.g. "
                                 f"{{'conv2': [0, 5]}} or {{'conv2': 4}}; got "
                                 f"{layer!r}: {channels!r}")
        self.invert = [invert] if isinstance(invert, str) else list(invert or [])
        self.dream = [dream] if isinstance(dream, str) else list(dream or [])
        if not (self.maximize or self.invert or self.dream):
            raise ValueError("nothing to synthesize: give maximize={layer: channels}, "
                             "invert=[layers] and/or dream=[layers]")
        if (self.invert or self.dream) and (probe_images is None or np.size(probe_images) == 0):
            raise ValueError("invert and dream work on probe_images; pass some")
        self.probe_images = probe_images
        self.steps = positive_int("steps", steps)
        self.value_range = check_value_range(value_range)
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        for kind, opts in self.options.items():
            if kind not in _FUNCS:
                raise ValueError(f"options keys are {', '.join(_FUNCS)}; got {kind!r}")
            unknown = sorted(set(opts) - set(_option_names(kind)))
            if unknown:
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for {kind}; it takes "
                                 f"{', '.join(_option_names(kind))}")
        synthesis.check_priors(**self.options.get("maximize", {}))
        self._probes = None
        self._channels = {}

    def _kwargs(self, kind: str, **override) -> dict:
        return {"steps": self.steps, "value_range": self.value_range,
                **self.options.get(kind, {}), **override}

    def check(self):
        model = self.model
        check_layers(model, list(self.maximize) + self.invert + self.dream)
        if self.probe_images is not None and np.size(self.probe_images):
            self._probes = check_images(model, self.probe_images, "probe_images")
        if self.dream and "octaves" not in self.options.get("dream", {}):
            flexible = image_input_shape(model)[:2] == (None, None)
            self.options.setdefault("dream", {})["octaves"] = 3 if flexible else 1
        if self.dream:
            synthesis.check_octaves(model, self.options["dream"]["octaves"])
        size = self.options.get("maximize", {}).get("size")
        for layer, channels in self.maximize.items():
            chosen = list(range(int(channels))) if np.ndim(channels) == 0 else channels
            self._channels[layer] = synthesis.check_channels(model, layer, chosen, size).tolist()

    def setup(self):
        # One step of each, which tries every argument on the model and traces the
        # probes now rather than at the first trigger.
        model = self.model
        for layer, channels in self._channels.items():
            with self.guard("setup", item=("maximize", layer), layer=layer):
                synthesis.maximize_activation(model, layer, channels,
                                              **self._kwargs("maximize", steps=1))
        for layer in self.invert:
            with self.guard("setup", item=("invert", layer), layer=layer):
                synthesis.invert_features(model, self._probes[:1], layer,
                                          **self._kwargs("invert", steps=1))
        if self.dream:
            with self.guard("setup", item=("dream",) + tuple(self.dream)):
                synthesis.deepdream(model, self._probes[:1], self.dream,
                                    **self._kwargs("dream", steps=1))

    def write(self, step, logs):
        with self.writer.as_default(step=step):
            for kind, layer in self.live(("maximize", layer) for layer in self._channels):
                with self.guard(f"step {step}", item=(kind, layer), layer=layer):
                    self._write_maximized(layer, self._channels[layer])
            for kind, layer in self.live(("invert", layer) for layer in self.invert):
                with self.guard(f"step {step}", item=(kind, layer), layer=layer):
                    self._write_inversion(layer)
            dream = ("dream",) + tuple(self.dream)
            if self.dream and dream not in self.failed:
                with self.guard(f"step {step}", item=dream):
                    self._write_dream()

    def _write_maximized(self, layer, channels):
        images, _ = synthesis.maximize_activation(self.model, layer, channels,
                                                  **self._kwargs("maximize"))
        images = self.finite(f"synthesis/{layer}", images)
        for channel, image in zip(channels, to_uint8(images, self.value_range)):
            events.image(f"synthesis/{layer}/{channel}", image[None],
                             description=f"input maximizing channel {channel} of {layer}")

    def _write_inversion(self, layer):
        rec, _ = synthesis.invert_features(self.model, self._probes, layer,
                                           **self._kwargs("invert"))
        rec = self.finite(f"synthesis/inversion/{layer}", rec)
        events.image(f"synthesis/inversion/{layer}", to_uint8(rec, self.value_range),
                         max_outputs=len(rec),
                         description=f"probe images reconstructed from {layer}")

    def _write_dream(self):
        dreams = synthesis.deepdream(self.model, self._probes, self.dream, **self._kwargs("dream"))
        dreams = self.finite("synthesis/deepdream", dreams)
        events.image("synthesis/deepdream", to_uint8(dreams, self.value_range),
                         max_outputs=len(dreams),
                         description="DeepDream of the probe images on " + ", ".join(self.dream))
