"""``TensorBoardViz``: every tbviz callback in one, with good defaults.

Example:
    >>> import numpy as np, keras, tbviz
    >>> x, y = np.random.rand(64, 16, 16, 3).astype("float32"), np.random.randint(0, 3, 64)
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
    ...     keras.layers.MaxPooling2D(name="pool1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
    ...     keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(3, name="head")])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> viz = tbviz.TensorBoardViz("runs/doc_viz", probe_images=x[:4], probe_labels=y[:4])
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[viz])

Then ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import logging
import os

import keras

from tbviz.callbacks.base import check_every
from tbviz.callbacks.graph import GraphCallback
from tbviz.callbacks.histograms import HistogramCallback
from tbviz.callbacks.losses import LossCallback
from tbviz.layers import layer_paths
from tbviz.summary import writers

log = logging.getLogger("tbviz")

#: Probe images whose feature maps TensorBoardViz shows (one grid each).
FEATURE_MAP_IMAGES = 4


def default_deconvnet_layers(model, n: int = 4) -> list[str]:
    """Up to ``n`` convolution layers spread evenly from the first to the last.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1))] + [keras.layers.Conv2D(1, 1, name=f"c{i}")
    ...                                                  for i in range(7)])
    >>> default_deconvnet_layers(m)
    ['c0', 'c2', 'c4', 'c6']
    """
    convs = layer_paths(model, kind=keras.layers.Conv2D)
    if len(convs) <= n:
        return convs
    idx = sorted({round(i * (len(convs) - 1) / (n - 1)) for i in range(n)})
    return [convs[i] for i in idx]


class TensorBoardViz(keras.callbacks.Callback):
    """One callback that writes everything tbviz can show, into one run.

    Args:
        log_dir: run directory: ``<log_dir>/train`` and ``<log_dir>/validation``.
        probe_images: a small fixed batch of inputs (array, or callable ``model -> array``).
            Enables activation/gradient histograms and deconvnet images.
        probe_labels: labels for ``probe_images`` (for gradient histograms).
        layers: deconvnet layers (paths like ``"vgg19/block3_conv1"``); default: up to
            four convolution layers spread through the network.
        every_n_epochs / every_n_steps: when histograms and images are written.
        loss_every_n_steps: per-step loss scalars (``None``: per epoch only).
        graph / histograms / losses / deconvnet: switch each part on or off.
        loss_groups: see :class:`~tbviz.LossCallback`.
        graph_fn / input_spec: see :class:`~tbviz.GraphCallback`.
        top_k / rule / probe_model / max_batch / channels: see
            :class:`~tbviz.DeconvnetCallback`.
        scan_data / scan_limit: the deconvnet's feature-map view over a whole dataset
            (:class:`~tbviz.DeconvnetCallback`); with ``scan_data`` the deconvnet runs
            without probe images too.
        include_frozen: histogram frozen layers' weights too.
        feature_maps: feature maps of the first and last conv layer for the first four
            probe images, and the first layer's kernels (:class:`~tbviz.FeatureMapsCallback`);
            ``"auto"``: on when there are probe images and conv layers.
        attribution: heatmaps over the probe images (:class:`~tbviz.AttributionCallback`):
            ``True`` for the default methods or a list such as ``["saliency", "grad_cam",
            "occlusion"]``; ``attribution_target`` is the class (default: predicted).
        synthesis: keyword arguments of :class:`~tbviz.SynthesisCallback`, e.g.
            ``{"maximize": {"conv3": 4}, "invert": ["conv2"]}``.
        convergence: per-layer CKA with the previous log and the start
            (:class:`~tbviz.ConvergenceCallback`): ``True`` (default; on when there are
            at least 4 probe images), ``False``, or a dict of its keyword arguments.

    The attribution, synthesis and feature-map parts look at the trained model
    itself; with ``probe_model`` they are off.
    """

    def __init__(self, log_dir, probe_images=None, probe_labels=None, layers=None, *,
                 every_n_epochs=1, every_n_steps=None, loss_every_n_steps=10,
                 graph=True, histograms=True, losses=True, deconvnet=True,
                 loss_groups=None, graph_fn=None, input_spec=None,
                 top_k=9, rule="deconvnet", probe_model=None, max_batch=64,
                 include_frozen=False, feature_maps="auto", attribution=None,
                 attribution_target=None, synthesis=None, convergence=True, scan_data=None,
                 scan_limit=None, channels=None):
        super().__init__()
        self.log_dir = log_dir
        every = dict(every_n_epochs=check_every("every_n_epochs", every_n_epochs),
                     every_n_steps=check_every("every_n_steps", every_n_steps))
        self.every = every
        self.probe_images, self.layers, self.deconvnet = probe_images, layers, deconvnet
        self.deconvnet_options = dict(top_k=top_k, rule=rule, probe_model=probe_model,
                                      max_batch=max_batch, channels=channels,
                                      scan_data=scan_data, scan_limit=scan_limit, **every)
        if feature_maps not in ("auto", True, False):
            raise ValueError(f"feature_maps must be 'auto', True or False, got {feature_maps!r}")
        self.feature_maps = feature_maps
        # The model itself is probed with a fixed array (not a callable, not another model).
        direct = probe_images is not None and not callable(probe_images) and probe_model is None
        self._direct = direct
        self.callbacks = []
        if graph:
            self.callbacks.append(GraphCallback(log_dir, graph_fn=graph_fn, input_spec=input_spec))
        if losses:
            self.callbacks.append(LossCallback(log_dir, groups=loss_groups,
                                               every_n_steps=loss_every_n_steps))
        if histograms:
            probe = None
            if direct:
                probe = probe_images if probe_labels is None else (probe_images, probe_labels)
            self.callbacks.append(HistogramCallback(log_dir, probe_data=probe,
                                                    include_frozen=include_frozen, **every))
        if attribution:
            if not direct:
                raise ValueError("attribution needs probe_images as an array and no probe_model")
            from tbviz.callbacks.attribution import AttributionCallback

            methods = {} if attribution is True else {"methods": attribution}
            self.callbacks.append(AttributionCallback(
                log_dir, probe_images, target=attribution_target, **methods, **every))
        if synthesis:
            if probe_model is not None or not isinstance(synthesis, dict):
                raise ValueError("synthesis must be a dict of SynthesisCallback options, e.g. "
                                 "{'maximize': {'conv3': 4}}, and needs no probe_model")
            from tbviz.callbacks.synthesis import SynthesisCallback

            self.callbacks.append(SynthesisCallback(
                log_dir, probe_images if direct else None, **synthesis, **every))
        if convergence:
            self._add_convergence(convergence, direct, probe_images, every)
        self._model_dependent_added = False

    def _add_convergence(self, options, direct, probe_images, every):
        if options is not True and not isinstance(options, dict):
            raise ValueError("convergence must be True, False or a dict of ConvergenceCallback "
                             f"options, e.g. {{'threshold': 0.995}}; got {options!r}")
        if not direct:
            if options is not True:
                raise ValueError("convergence needs probe_images as an array and no probe_model")
            return
        if options is True and len(probe_images) < 4:  # debiased CKA needs 4 inputs
            log.warning("tbviz: convergence scalars are off: they need at least 4 probe images, "
                        "got %d", len(probe_images))
            return
        from tbviz.callbacks.convergence import ConvergenceCallback

        options = {} if options is True else options
        self.callbacks.append(ConvergenceCallback(self.log_dir, probe_images,
                                                  **{**every, **options}))

    def _add_model_dependent_parts(self):
        """Deconvnet and feature maps pick default layers from the model: added at train begin."""
        if self._model_dependent_added:
            return
        self._model_dependent_added = True
        added = []
        if self.deconvnet and (self.probe_images is not None
                               or self.deconvnet_options["scan_data"] is not None):
            from tbviz.callbacks.deconvnet import DeconvnetCallback

            layers = self.layers
            if layers is None:
                pm = self.deconvnet_options["probe_model"]
                target = self.model if pm is None else (
                    pm if isinstance(pm, keras.Model) else pm(self.model))
                layers = default_deconvnet_layers(target)
            if layers:
                added.append(DeconvnetCallback(self.log_dir, self.probe_images, layers,
                                               **self.deconvnet_options))
            elif self.layers is None:  # none to pick (layers=[] asks for none)
                log.warning("tbviz: model %r has no Conv2D layer to project; deconvnet images "
                            "are off (pass layers=[...] to project others)", target.name)
        wants_maps = self.feature_maps is True or (
            self.feature_maps == "auto" and self._direct
            and layer_paths(self.model, kind=keras.layers.Conv2D))
        if wants_maps:
            from tbviz.callbacks.feature_maps import FeatureMapsCallback

            # Feature-map grids are big: the first few probe images tell the story.
            added.append(FeatureMapsCallback(
                self.log_dir, self.probe_images[:FEATURE_MAP_IMAGES] if self._direct else None,
                **self.every))
        for cb in added:
            cb.set_model(self.model)
            cb.set_params(self.params)
            self.callbacks.append(cb)

    # Keras calls these on the composite; hand everything to the parts.
    def set_model(self, model):
        super().set_model(model)
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for cb in self.callbacks:
            cb.set_params(params)

    def on_train_begin(self, logs=None):
        self._add_model_dependent_parts()
        begun = []
        fresh = [] if os.path.exists(self.log_dir) else [self.log_dir]
        try:
            for cb in self.callbacks:
                cb.on_train_begin(logs)
                begun.append(cb)
        except Exception:
            for cb in begun:  # do not leave writers of the parts that did start open
                cb.on_train_end(logs)
            writers.remove_unused(fresh)  # nor a half-written run folder
            raise

    def _each(name):
        def forward(self, *args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, name)(*args, **kwargs)
        forward.__name__ = name
        return forward

    on_train_end = _each("on_train_end")
    on_epoch_begin = _each("on_epoch_begin")
    on_epoch_end = _each("on_epoch_end")
    on_train_batch_begin = _each("on_train_batch_begin")
    on_train_batch_end = _each("on_train_batch_end")
    del _each
