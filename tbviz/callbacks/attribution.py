"""Attribution heatmaps over fixed probe images, logged while a model trains.

For each method (saliency, SmoothGrad, guided backprop, occlusion, CAM, Grad-CAM;
see :mod:`tbviz.methods.attribution`) and each trigger, the callback writes

* ``attribution/<method>``: a standard image summary, one heatmap-over-photo per
  probe image (TensorBoard's Images dashboard, with its step slider),
* ``tbviz/attribution/<method>``: the same images as a tbviz dashboard panel,
  each tile labelled ``{"method", "image_index", "target"}``,
* with ``sanity=True``, the model-randomization check of Adebayo et al. 2018
  (:func:`tbviz.methods.attribution.sanity_check`, cascading from the top):
  ``sanity/<method>/<layer>``, the Spearman correlation of the maps with those of a
  copy randomized down to that layer, and ``sanity/<method>``, that with every layer
  random. High values: the maps do not depend on what the model learned.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.callbacks.attribution import AttributionCallback
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(2, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> x, y = np.random.rand(8, 16, 16, 3) * 255, np.arange(8) % 2
    >>> cb = AttributionCallback("runs/doc_attribution", probe_images=x[:2],
    ...                          methods=("saliency", "grad_cam", "occlusion"),
    ...                          options={"occlusion": {"patch": 4}})
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
"""

from __future__ import annotations

import logging

import numpy as np

from tbviz.methods import attribution
from tbviz.core.backward_rules import plain_gradient_note
from tbviz.callbacks.base import VizCallback
from tbviz.core.layers import check_images
from tbviz.summary.images import for_display, overlay
from tbviz.summary.metadata import encode_image, write_panel
from tbviz.summary import events

DEFAULT_METHODS = ("saliency", "guided_backprop", "grad_cam")
#: Methods computed together by one probe when both are asked for (one trace, one pass).
JOINT = ("saliency", "grad_cam")

log = logging.getLogger(__name__)


class AttributionCallback(VizCallback):
    """Log attribution heatmaps of ``probe_images`` every ``every_n_epochs`` epochs
    and/or every ``every_n_steps`` optimizer steps.

    Args:
        log_dir: the run directory (summaries go to ``<log_dir>/train``).
        probe_images: fixed images ``(N, H, W, C)`` in the model's input range.
        target: class index, one index per probe image, or a callable from model
            outputs to one score per image; ``None`` (default) explains the class
            the model predicts for each image at that moment.
        methods: names from :data:`tbviz.methods.attribution.METHODS`; by default the cheap
            ones, ``saliency``, ``guided_backprop`` and ``grad_cam``.
        layer: Grad-CAM's layer path (default: the last layer with 4-D output).
        options: per-method keyword arguments, e.g. ``{"occlusion": {"patch": 8},
            "smoothgrad": {"samples": 16}}``.
        max_batch: most images per forward pass, for every method.
        alpha: opacity of the heatmap over the photo.
        sanity: also log the randomization sanity check per method (one map per
            layer with weights per trigger: as many times the method's cost).
        strict: re-raise a failure of a method instead of switching that method off
            (see :class:`~tbviz.callbacks.base.VizCallback`).

    Arguments are validated at train begin; errors name the valid choices. Then each
    method runs once on the first probe image, which traces its probe: a method that
    fails there (or later) is switched off with a warning, the others go on.
    """

    def __init__(self, log_dir, probe_images, target=None, methods=DEFAULT_METHODS,
                 layer: str | None = None, options: dict | None = None, max_batch: int = 32,
                 alpha: float = 0.6, every_n_epochs: int | None = 1,
                 every_n_steps: int | None = None, sanity: bool = False, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        if probe_images is None or np.size(probe_images) == 0:
            raise ValueError("probe_images must hold at least one image (N, H, W, C)")
        self.probe_images = probe_images
        self.target = target
        methods = [methods] if isinstance(methods, str) else list(methods)
        if not methods:
            raise ValueError(f"methods is empty; choose from {', '.join(attribution.METHODS)}")
        options = dict(options or {})
        for name in methods:
            attribution.method_options(name)  # raises for an unknown method, listing all
        for name, opts in options.items():
            if name not in methods:
                raise ValueError(f"options given for {name!r}, which is not among methods "
                                 f"{methods}")
            allowed = attribution.method_options(name)
            unknown = sorted(set(opts) - set(allowed))
            if unknown:
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; it takes "
                                 f"{', '.join(allowed)}")
        if layer is not None:
            if "grad_cam" not in methods:
                raise ValueError("layer is Grad-CAM's layer, but 'grad_cam' is not among methods")
            options["grad_cam"] = {"layer": layer, **options.get("grad_cam", {})}
        self.methods = methods
        self.options = {m: {"max_batch": max_batch, **options.get(m, {})} for m in methods}
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.sanity = bool(sanity)
        self._probes = self._randomized = None
        self._plain_note = None
        self._joint = False

    def check(self):
        self._probes = check_images(self.model, self.probe_images, "probe_images")
        if self.target is not None:
            attribution.check_target(self.model, self._probes, self.target)
        given = self.options.get("grad_cam", {})
        if any(k in given for k in ("layer", "token_grid", "class_token")):
            attribution.grad_cam_layer(self.model, self._probes.shape[1:], given.get("layer"),
                                       given.get("token_grid"), given.get("class_token"))

    def setup(self):
        target = self.target
        if target is not None and not callable(target):
            target = np.broadcast_to(np.asarray(target), len(self._probes))[:1]
        # Saliency and Grad-CAM together: one probe (one trace) gives both and the class.
        self._joint = set(JOINT) <= set(self.methods)
        joint = self._both(self._probes[:1], target)
        if target is None:
            target = (joint["target"] if joint is not None
                      else attribution.top_classes(self.model, self._probes[:1]))
        for method in self.methods:
            if joint is not None and method in JOINT:
                continue
            with self.guard("setup", item=method):
                self._attribute(method, self._probes[:1], target)
        # Guided backprop on a model without a rectifier is the saliency gradient: say so.
        if "guided_backprop" in self.live(self.methods):
            with self.guard("setup", item="guided_backprop"):
                self._plain_note = plain_gradient_note(self.model, "guided")
            if self._plain_note:
                self.warn_once("plain", "tbviz.AttributionCallback: guided_backprop: %s",
                               self._plain_note)
        if self.sanity:
            from tbviz.methods.attribution.sanity import RandomizedCopy

            with self.guard("setup", item="sanity"):  # without it, the heatmaps still go on
                self._randomized = RandomizedCopy(self.model)  # once: its probes trace once

    def _attribute(self, method, images, target):
        return getattr(attribution, method)(self.model, images, target, **self.options[method])

    def _both(self, images, target):
        """:func:`tbviz.methods.attribution.saliency_and_grad_cam` while both methods are live, else
        None. Where the joint probe fails, each method goes its own way from then on (with
        its own probe and guard, so one failing method leaves the other on)."""
        if not (self._joint and self.live(JOINT) == list(JOINT)):
            return None
        try:
            return attribution.saliency_and_grad_cam(self.model, images, target,
                                                     **self.options["grad_cam"])
        except Exception as err:  # noqa: BLE001 - the methods alone are tried (and guarded)
            if self.strict:
                raise
            log.info("tbviz.AttributionCallback: saliency and Grad-CAM run apart (%s)", err)
            self._joint = False
            return None

    def write(self, step, logs):
        probes = self._probes
        target = self.target
        joint = self._both(probes, target)
        if target is None:
            target = (joint["target"] if joint is not None
                      else attribution.top_classes(self.model, probes))
        if callable(target):
            labels = [getattr(target, "__name__", "callable")] * len(probes)
        else:
            labels = [int(t) for t in np.broadcast_to(np.asarray(target), len(probes))]
        photos = for_display(probes)
        with self.writer.as_default(step=step):
            for method in self.live(self.methods):
                with self.guard(f"step {step}", item=method):
                    self._write_method(method, probes, target, photos, labels,
                                       joint.get(method) if joint is not None else None)
                if (self._randomized is not None and method not in self.failed
                        and ("sanity", method) not in self.failed):
                    with self.guard(f"step {step}", item=("sanity", method)):
                        self._write_sanity(method, probes, target)

    def _write_method(self, method, probes, target, photos, labels, raw=None):
        if raw is None:
            raw = self._attribute(method, probes, target)
        raw = self.finite(f"attribution/{method}", raw)
        heat = attribution.heatmap(raw)
        images = np.stack([overlay(p, h, self.alpha) for p, h in zip(photos, heat)])
        about = f"{method} heatmaps over the probe images"
        if method == "guided_backprop" and self._plain_note:
            about += f" (the same as saliency: {self._plain_note})"
        events.image(f"attribution/{method}", images, max_outputs=len(images),
                         description=about)
        write_panel(f"tbviz/attribution/{method}", "attribution",
                    [encode_image(im) for im in images],
                    tiles=[{"method": method, "image_index": i, "target": t}
                           for i, t in enumerate(labels)],
                    description=about, method=method)

    def _write_sanity(self, method, probes, target):
        stages = attribution.sanity_check(self.model, probes, method, target,
                                          options=self.options[method],
                                          randomized=self._randomized)
        for layer, rho in stages:
            events.scalar(f"sanity/{method}/{layer}", rho)
        events.scalar(f"sanity/{method}", stages[-1][1])
