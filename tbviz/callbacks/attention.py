"""``AttentionCallback``: where a vision transformer's heads look, in the tbviz tab.

At each trigger, for the fixed probe images, it writes (see :mod:`tbviz.methods.attention`)

* ``tbviz/attention/<layer>``: per probe image one tile, each head's attention map side
  by side (head 0 on the left) over the image: from the class token where the model has
  one, else the mean over query tokens of the attention each patch token gets;
* ``tbviz/attention/rollout``: per probe image the attention rollout (Abnar & Zuidema
  2020) through every mapped layer, over the image.

The panels are of the tbviz tab's "attribution" kind (heatmaps over the probe images),
so the tab's Attribution view shows them, each under its tag. An attention layer whose
scores do not map onto the patch grid (windowed or cross-attention, attention over a
folded feature map) is left out, and a notice in ``tbviz/errors`` says why.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.callbacks.attention import AttentionCallback
    >>> inp = keras.Input((16, 16, 3))
    >>> t = keras.layers.Reshape((16, 48))(keras.layers.Conv2D(48, 4, strides=4)(inp))
    >>> t = keras.layers.MultiHeadAttention(2, 8, name="attn")(t, t)
    >>> model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(t)))
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(8, 16, 16, 3).astype("float32"), np.arange(8) % 2
    >>> cb = AttentionCallback("runs/doc_attention", probe_images=x[:2])
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    >>> cb.mapped
    ['attn']
"""

from __future__ import annotations

import logging

import numpy as np

from tbviz.callbacks.base import VizCallback
from tbviz.core.layers import check_images, check_layers
from tbviz.methods import attention
from tbviz.summary import images as tiles_lib
from tbviz.summary import metadata

log = logging.getLogger("tbviz")

GAP = 2  # white pixels between the heads of one tile


class AttentionCallback(VizCallback):
    """Log each attention layer's head maps and the attention rollout over the probe images.

    Args:
        log_dir: the run directory (summaries go to ``<log_dir>/train``).
        probe_images: the images to show attention on (a small fixed batch).
        layers: ``MultiHeadAttention`` layer paths; default every one whose scores map onto
            the patch grid.
        rollout: also write the attention rollout.
        residual: the weight of the identity in rollout (the residual connection).
        token_grid / class_token: the patch grid ``(h, w)`` and the leading tokens
            (``True``/``False`` or a count), where the token count cannot tell them.
        alpha: the heatmaps' opacity over the images.
        say_unmapped: list each layer left out (and "nothing to show") as a notice in
            ``tbviz/errors``; ``TensorBoardViz``'s automatic attention part passes ``False``
            (a model whose attention maps onto no grid just has no attention panels, as a
            model without ``MultiHeadAttention`` has none).
        every_n_epochs / every_n_steps: when to log.
        strict: re-raise a failure instead of switching the attention maps off.
    """

    def __init__(self, log_dir, probe_images, layers=None, rollout: bool = True,
                 residual: float = 0.5, token_grid=None, class_token=None, alpha: float = 0.5,
                 every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 say_unmapped: bool = True, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        self.say_unmapped = bool(say_unmapped)
        if probe_images is None:
            raise ValueError("AttentionCallback needs probe_images (a small batch of images)")
        if not 0 <= residual <= 1:
            raise ValueError(f"residual must be in [0, 1], got {residual!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.probe_images = probe_images
        self.layers = [layers] if isinstance(layers, str) else (
            None if layers is None else list(layers))
        self.rollout, self.residual, self.alpha = bool(rollout), float(residual), float(alpha)
        self.token_grid, self.class_token = token_grid, class_token
        #: The layers shown (their scores map onto the grid), set at train begin.
        self.mapped: list[str] = []
        self._grids: dict = {}

    def check(self):
        model = self.model
        self._x = check_images(model, self.probe_images, "probe_images")
        found = attention.attention_layers(model)
        if self.layers is None:
            if not found:
                raise ValueError(f"model {model.name!r} has no MultiHeadAttention layer; "
                                 "AttentionCallback shows the attention of Keras' "
                                 "MultiHeadAttention layers")
            self._asked = found
        else:
            check_layers(model, self.layers)
            wrong = [p for p in self.layers if p not in found]
            if wrong:
                raise ValueError(f"layer(s) {', '.join(map(repr, wrong))} are no "
                                 f"MultiHeadAttention layers; those of model {model.name!r}: "
                                 f"{', '.join(found) or '(none)'}")
            self._asked = list(self.layers)

    def own_inputs(self):
        mine = getattr(self, "_x", None)
        return mine if mine is not None else super().own_inputs()

    def setup(self):
        found = attention.scores(self.model, self._x, self._asked)
        self.mapped, self._grids = [], {}
        for path, a in found.items():
            grid, why = attention.mappable(a.shape, len(self._x), self._x.shape[1:],
                                           self.token_grid, self.class_token)
            if grid is None:
                self._say(("unmapped", path), f"tbviz: attention: layer {path!r} is not shown: "
                            f"{why}")
                continue
            self.mapped.append(path)
            self._grids[path] = grid
        if not self.mapped:
            self._say("none", "tbviz: attention maps are off: no attention layer of model "
                        f"{self.model.name!r} maps onto the patch grid (see the notices above)")
            return
        # Rollout multiplies layers of one token count: the last mapped layer's, in order.
        last = self._grids[self.mapped[-1]]
        self._chain = [p for p in self.mapped if self._grids[p] == last]
        self._photos = tiles_lib.for_display(self._x)

    def _say(self, key, message):
        if self.say_unmapped:
            self.notice(key, message)
        else:
            log.info("%s", message)

    def write(self, step, logs):
        if not self.mapped:
            return
        found = attention.scores(self.model, self._x, self._asked)  # the probe of setup
        size = self._x.shape[1:3]
        with self.writer.as_default(step=step):
            for path in self.live(self.mapped):
                with self.guard(f"step {step}", item=path, layer=path):
                    maps = attention.head_maps(found[path], self._grids[path])
                    self._write(f"tbviz/attention/{path}", maps, size, path, (
                        f"attention of each head of {path} (head 0 on the left) over the probe "
                        "images: " + self._reading(self._grids[path])))
            if self.rollout and "rollout" not in self.failed:
                with self.guard(f"step {step}", item="rollout"):
                    roll = attention.rollout([found[p] for p in self._chain],
                                             self._grids[self._chain[-1]], self.residual)
                    self._write("tbviz/attention/rollout", roll[:, None], size, None, (
                        f"attention rollout (Abnar & Zuidema 2020) through "
                        f"{', '.join(self._chain)}, residual {self.residual:g}: "
                        + self._reading(self._grids[self._chain[-1]])))

    @staticmethod
    def _reading(grid) -> str:
        return ("what the class token attends to" if grid[2]
                else "the mean attention each patch token gets")

    def _write(self, tag, maps, size, layer, about):
        """One tile per probe image: its ``(heads, h, w)`` maps as overlays, side by side."""
        maps = self.finite(tag, maps)
        heads = maps.shape[1]
        heat = attention.to_image(maps.reshape((-1,) + maps.shape[2:]), size)
        heat = heat.reshape((len(maps), heads) + tuple(size))
        pngs, tiles = [], []
        for i, (photo, per_head) in enumerate(zip(self._photos, heat)):
            views = [tiles_lib.overlay(photo, h, self.alpha) for h in per_head]
            gap = np.full((size[0], GAP, 3), 255, np.uint8)
            strip = np.concatenate(sum(([v, gap] for v in views), [])[:-1], axis=1)
            pngs.append(metadata.encode_image(strip))
            tiles.append({"method": "attention" if layer else "attention rollout",
                          "image_index": i, "heads": heads})
        content = {"method": "attention rollout" if layer is None else f"attention {layer}"}
        if layer is not None:
            content["layer"] = layer
        metadata.write_panel(tag, metadata.ATTRIBUTION, pngs, tiles, description=about,
                             **content)
