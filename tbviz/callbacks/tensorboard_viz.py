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

import keras

from tbviz.callbacks.base import check_every
from tbviz.callbacks.graph import GraphCallback
from tbviz.callbacks.histograms import HistogramCallback
from tbviz.callbacks.losses import LossCallback
from tbviz.layers import layer_paths

log = logging.getLogger("tbviz")


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
        top_k / rule / probe_model / max_batch: see :class:`~tbviz.DeconvnetCallback`.
        include_frozen: histogram frozen layers' weights too.
    """

    def __init__(self, log_dir, probe_images=None, probe_labels=None, layers=None, *,
                 every_n_epochs=1, every_n_steps=None, loss_every_n_steps=10,
                 graph=True, histograms=True, losses=True, deconvnet=True,
                 loss_groups=None, graph_fn=None, input_spec=None,
                 top_k=9, rule="deconvnet", probe_model=None, max_batch=64,
                 include_frozen=False):
        super().__init__()
        self.log_dir = log_dir
        check_every("every_n_epochs", every_n_epochs)
        check_every("every_n_steps", every_n_steps)
        self.probe_images, self.probe_labels = probe_images, probe_labels
        self.layers = layers
        self.deconvnet = deconvnet
        self.deconvnet_options = dict(top_k=top_k, rule=rule, probe_model=probe_model,
                                      max_batch=max_batch, every_n_epochs=every_n_epochs,
                                      every_n_steps=every_n_steps)
        self.callbacks = []
        if graph:
            self.callbacks.append(GraphCallback(log_dir, graph_fn=graph_fn, input_spec=input_spec))
        if losses:
            self.callbacks.append(LossCallback(log_dir, groups=loss_groups,
                                               every_n_steps=loss_every_n_steps))
        if histograms:
            probe = None
            if probe_images is not None and not callable(probe_images) and probe_model is None:
                probe = probe_images if probe_labels is None else (probe_images, probe_labels)
            self.callbacks.append(HistogramCallback(
                log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                probe_data=probe, include_frozen=include_frozen))
        self._deconvnet_cb = None

    # Keras calls these on the composite; hand everything to the parts.
    def set_model(self, model):
        super().set_model(model)
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for cb in self.callbacks:
            cb.set_params(params)

    def _add_deconvnet(self):
        """The deconvnet part needs the model to pick default layers: built at train begin."""
        if not self.deconvnet or self.probe_images is None or self._deconvnet_cb is not None:
            return
        from tbviz.callbacks.deconvnet import DeconvnetCallback

        layers = self.layers
        if layers is None:
            pm = self.deconvnet_options["probe_model"]
            target = pm(self.model) if callable(pm) and not isinstance(pm, keras.Model) else (
                pm or self.model)
            layers = default_deconvnet_layers(target)
            if not layers:
                log.info("tbviz: no Conv2D layer in %r; deconvnet images are off", target.name)
                return
        self._deconvnet_cb = DeconvnetCallback(self.log_dir, self.probe_images, layers,
                                               **self.deconvnet_options)
        self._deconvnet_cb.set_model(self.model)
        self._deconvnet_cb.set_params(self.params)
        self.callbacks.append(self._deconvnet_cb)

    def on_train_begin(self, logs=None):
        self._add_deconvnet()
        begun = []
        try:
            for cb in self.callbacks:
                cb.on_train_begin(logs)
                begun.append(cb)
        except Exception:
            for cb in begun:  # do not leave writers of the parts that did start open
                cb.on_train_end(logs)
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
