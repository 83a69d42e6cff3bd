"""Attribution heatmaps over fixed probe images, logged while a model trains.

For each method (saliency, SmoothGrad, guided backprop, occlusion, CAM, Grad-CAM;
see :mod:`tbviz.methods.attribution`) and each trigger, the callback writes

* ``attribution/<method>``: a standard image summary, one heatmap-over-photo per
  probe image (TensorBoard's Images dashboard, with its step slider),
* ``tbviz/attribution/<method>``: the same images as a tbviz dashboard panel,
  each tile labelled ``{"method", "image_index", "target"}``,
* with ``faithfulness=True``, how faithful each method's maps are, measured
  (:mod:`tbviz.methods.faithfulness`: deletion and insertion areas, MuFidelity,
  max-sensitivity, sparseness, complexity, the random-logit test; Integrated Gradients
  adds its relative completeness error, ``completeness``): the scalars
  ``faithfulness/<method>/<metric>`` (the mean over the probe images), one Custom
  Scalars chart per metric with every method in it, each tile of the method's panel
  labelled with its image's values, and the panel ``tbviz/faithfulness/curves`` (kind
  ``faithfulness``): each method's deletion and insertion curves, averaged over the
  probe images, drawn by the tab beside the heatmaps,
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

import inspect
import logging
import re

import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2

from tbviz.methods import attribution, faithfulness as faith
from tbviz.core.backward_rules import plain_gradient_note
from tbviz.callbacks.base import VizCallback
from tbviz.core.checks import positive_int
from tbviz.core.layers import check_images
from tbviz.summary.images import for_display, overlay
from tbviz.summary.metadata import FAITHFULNESS, encode_image, write_panel
from tbviz.summary import events, layouts

DEFAULT_METHODS = ("saliency", "guided_backprop", "grad_cam")
#: Methods computed together by one probe when both are asked for (one trace, one pass).
JOINT = ("saliency", "grad_cam")

log = logging.getLogger(__name__)

#: Faithfulness metrics that run the method again (their options go to the method, too).
RERUN = ("sensitivity_max", "random_logit")
#: The arguments of each metric the callback sets itself.
_GIVEN = ("model", "images", "explanations", "method", "target", "options")
#: What the Integrated Gradients panel adds to the metrics: its completeness error.
COMPLETENESS = "completeness"


#: What the callback's metrics use unless told otherwise: fewer samples than the functions'
#: defaults (MuFidelity 128, max-sensitivity 10, as Xplique and Captum), so that measuring
#: every epoch stays within 5% of a 200-step epoch of ``scripts/bench_callbacks.py``'s CNN
#: (at the functions' defaults it costs 10-11%, MuFidelity half of it).
CALLBACK_DEFAULTS = {"mu_fidelity": {"samples": 32}, "sensitivity_max": {"samples": 5}}


def faithfulness_options(asked) -> dict:
    """``{metric: options}`` of ``AttributionCallback(faithfulness=...)``: ``True`` (every
    metric of :data:`tbviz.methods.faithfulness.METRICS`), a list of names, or a dict of
    names to keyword options, over :data:`CALLBACK_DEFAULTS`; ``False``/``None``: ``{}``.

    >>> faithfulness_options(["deletion", "mu_fidelity"])
    {'deletion': {}, 'mu_fidelity': {'samples': 32}}
    >>> faithfulness_options({"deletion": {"size": 3}})
    Traceback (most recent call last):
    ...
    ValueError: unknown option(s) size for the faithfulness metric deletion; it takes steps, baseline, max_batch
    """
    if asked is None or asked is False:
        return {}
    if asked is True:
        asked = list(faith.METRICS)
    if isinstance(asked, str):
        asked = [asked]
    out = dict(asked) if isinstance(asked, dict) else {m: {} for m in asked}
    for metric, opts in out.items():
        if metric not in faith.METRICS:
            raise ValueError(f"unknown faithfulness metric {metric!r}; choose from "
                             f"{', '.join(faith.METRICS)}")
        allowed = [p for p in inspect.signature(getattr(faith, metric)).parameters
                   if p not in _GIVEN]
        unknown = sorted(set(opts or {}) - set(allowed))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for the faithfulness "
                             f"metric {metric}; it takes {', '.join(allowed)}")
        out[metric] = {**CALLBACK_DEFAULTS.get(metric, {}), **(opts or {})}
    return out


def faithfulness_layout(methods, metrics) -> layout_pb2.Category:
    """The Custom Scalars category of the faithfulness scalars: one chart per metric, every
    method's curve in it."""
    names = "|".join(re.escape(m) for m in methods)
    return layout_pb2.Category(title="faithfulness", chart=[
        layout_pb2.Chart(title=f"{metric} ({'higher' if faith.HIGHER_IS_BETTER.get(metric, False) else 'lower'} is more faithful)",
                         multiline=layout_pb2.MultilineChartContent(
                             tag=[f"^faithfulness/({names})/{re.escape(metric)}$"]))
        for metric in metrics])


def _json_number(v):
    """A metric value for a panel header: 4 significant digits, ``None`` for nan (JSON has
    no nan)."""
    v = float(v)
    return float(f"{v:.4g}") if np.isfinite(v) else None


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
        faithfulness: also measure each method's maps (see above): ``True`` for every
            metric at its defaults, a list of metric names, or ``{metric: options}``
            (e.g. ``{"deletion": {"steps": 20}, "mu_fidelity": {"samples": 64}}``), over
            :data:`CALLBACK_DEFAULTS` (MuFidelity 32 samples, max-sensitivity 5). Costs per
            trigger: ``steps + 1`` forward passes per probe image and method for deletion
            and insertion each, ``samples`` per probe image for MuFidelity (shared by the
            methods), ``samples`` runs of the method for max-sensitivity and one for the
            random logit; ``scripts/bench_callbacks.py`` measures them. ``random_logit``
            needs class-index targets and is left out for a callable one.
        faithfulness_every: measure faithfulness at the first trigger and then every that
            many (default 2): at :data:`CALLBACK_DEFAULTS`, one measurement costs about 6% of
            a 200-step epoch of ``scripts/bench_callbacks.py``'s CNN (8 probe images, 3
            methods), so every 2nd epoch keeps it near 3%; 1 for every trigger.
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
                 every_n_steps: int | None = None, sanity: bool = False,
                 faithfulness=False, faithfulness_every: int = 2, strict: bool = False):
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
        self.faithfulness = faithfulness_options(faithfulness)
        self.faithfulness_every = positive_int("faithfulness_every", faithfulness_every)
        self._faith_triggers = 0
        if callable(target) and "random_logit" in self.faithfulness:
            if faithfulness is not True:
                raise ValueError("the random_logit test compares two classes' maps, so it needs "
                                 "class-index targets; target is a callable")
            del self.faithfulness["random_logit"]  # True: every metric that applies
        self._probes = self._randomized = None
        self._delta = {}
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
        if self.faithfulness:
            metrics = list(self.faithfulness)
            if "integrated_gradients" in self.methods:
                metrics.append(COMPLETENESS)
            layouts.add(self.writer, "attribution_faithfulness",
                        [faithfulness_layout(self.methods, metrics)])
        if self.sanity:
            from tbviz.methods.attribution.sanity import RandomizedCopy

            with self.guard("setup", item="sanity"):  # without it, the heatmaps still go on
                self._randomized = RandomizedCopy(self.model)  # once: its probes trace once

    def _attribute(self, method, images, target):
        if method == "integrated_gradients":
            raw, self._delta[method] = attribution.integrated_gradients(
                self.model, images, target, return_convergence_delta=True, **self.options[method])
            return raw
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
            raws = {}
            for method in self.live(self.methods):
                with self.guard(f"step {step}", item=method):
                    raw = joint.get(method) if joint is not None else None
                    if raw is None:
                        raw = self._attribute(method, probes, target)
                    raws[method] = self.finite(f"attribution/{method}", raw)
            scores = self._faithfulness(step, probes, target, raws)
            for method, raw in raws.items():
                with self.guard(f"step {step}", item=method):
                    self._write_method(method, photos, labels, raw, scores.get(method, {}))
                if (self._randomized is not None and method not in self.failed
                        and ("sanity", method) not in self.failed):
                    with self.guard(f"step {step}", item=("sanity", method)):
                        self._write_sanity(method, probes, target)

    def _faithfulness(self, step, probes, target, raws) -> dict:
        """``{method: {metric: per-image values}}`` of the live methods' maps, with their
        scalars and the curves panel written; ``{}`` when faithfulness is off or failed.
        The metrics that only run the model see every method at once (shared passes); those
        that run the method again are guarded per method."""
        if not self.faithfulness or "faithfulness" in self.failed or not raws:
            return {}
        self._faith_triggers += 1
        if (self._faith_triggers - 1) % self.faithfulness_every:
            return {}
        out = {m: {} for m in raws}
        curves = []
        with self.guard(f"step {step}", item="faithfulness"):
            for metric in ("deletion", "insertion"):
                if metric in self.faithfulness:
                    found = getattr(faith, metric)(self.model, probes, raws, target,
                                                   **self.faithfulness[metric])
                    for method, curve in found.items():
                        out[method][metric] = curve.auc
                        curves.append({"method": method, "metric": metric,
                                       "fractions": [_json_number(v) for v in curve.fractions],
                                       "scores": [_json_number(faith.summary(c))
                                                  for c in curve.scores.T],
                                       "auc": _json_number(faith.summary(curve.auc))})
            if "mu_fidelity" in self.faithfulness:
                for method, v in faith.mu_fidelity(self.model, probes, raws, target,
                                                   **self.faithfulness["mu_fidelity"]).items():
                    out[method]["mu_fidelity"] = v
            for metric in ("sparseness", "complexity"):
                if metric in self.faithfulness:
                    for method, v in getattr(faith, metric)(raws).items():
                        out[method][metric] = v
        if "faithfulness" in self.failed:
            return {}
        for method in raws:
            if method in self._delta:
                out[method][COMPLETENESS] = self._completeness(method, raws[method])
            if ("faithfulness", method) in self.failed:
                continue
            with self.guard(f"step {step}", item=("faithfulness", method)):
                options = self.options[method]
                if "sensitivity_max" in self.faithfulness:
                    out[method]["sensitivity_max"] = faith.sensitivity_max(
                        self.model, probes, method, target, options=options,
                        **self.faithfulness["sensitivity_max"])
                if "random_logit" in self.faithfulness:
                    out[method]["random_logit"] = faith.random_logit(
                        self.model, probes, method, target, options=options,
                        explanations=raws[method], **self.faithfulness["random_logit"])
        for method, values in out.items():
            for metric, v in values.items():
                events.scalar(f"faithfulness/{method}/{metric}", faith.summary(v),
                              description=f"{metric} of {method}'s maps, mean over the "
                              "probe images (tbviz.methods.faithfulness)")
        if curves:
            write_panel("tbviz/faithfulness/curves", FAITHFULNESS, [], tiles=[], groups=curves,
                        description="deletion and insertion curves of each method's maps, "
                        "mean over the probe images (Petsiuk et al. 2018)")
        return out

    def _completeness(self, method, raw):
        """Integrated Gradients' relative completeness error per image,
        ``|sum(phi) - (f(x) - f(x'))| / |f(x) - f(x')|``, from its own delta: no more passes."""
        delta = self._delta[method]
        gap = np.abs(np.asarray(raw, np.float64).reshape(len(raw), -1).sum(axis=1) - delta)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gap > 0, np.abs(delta) / np.where(gap > 0, gap, 1), np.nan)

    def _write_method(self, method, photos, labels, raw, scores):
        heat = attribution.heatmap(raw)
        images = np.stack([overlay(p, h, self.alpha) for p, h in zip(photos, heat)])
        about = f"{method} heatmaps over the probe images"
        if method == "guided_backprop" and self._plain_note:
            about += f" (the same as saliency: {self._plain_note})"
        events.image(f"attribution/{method}", images, max_outputs=len(images),
                     description=about)
        tiles = [{"method": method, "image_index": i, "target": t}
                 for i, t in enumerate(labels)]
        if scores:
            for i, tile in enumerate(tiles):
                tile["faithfulness"] = {m: _json_number(v[i]) for m, v in scores.items()}
        # Which way each metric is more faithful, for the tab's table beside the heatmaps.
        higher = ({"faithfulness_higher": {m: faith.HIGHER_IS_BETTER.get(m, False)
                                           for m in scores}} if scores else {})
        write_panel(f"tbviz/attribution/{method}", "attribution",
                    [encode_image(im) for im in images], tiles=tiles,
                    description=about, method=method, **higher)

    def _write_sanity(self, method, probes, target):
        stages = attribution.sanity_check(self.model, probes, method, target,
                                          options=self.options[method],
                                          randomized=self._randomized)
        for layer, rho in stages:
            events.scalar(f"sanity/{method}/{layer}", rho)
        events.scalar(f"sanity/{method}", stages[-1][1])
