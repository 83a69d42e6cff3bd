"""``ConvergenceCallback``: how much each layer's representation still changes, as scalars.

At train begin and at every trigger the callback runs the fixed probe inputs
through the model (inference mode) and keeps, per watched layer, the ``n x n``
Gram matrix of that layer's activations (see :mod:`tbviz.stats.cka`). Linear
CKA needs nothing else, so a layer of any width costs ``n^2`` floats, computed
on the device, and the comparison is exact. It writes

* ``convergence/<layer>/vs_previous``: CKA with the layer at the previous trigger
  (1: the layer's view of the probes did not change since);
* ``convergence/<layer>/vs_start``: CKA with the layer at train begin;
* one Custom Scalars category "tbviz convergence" with two charts, every layer in
  each (vs previous, vs start); it coexists with the losses' charts in one run
  (:mod:`tbviz.summary.layouts`);
* a text event ``convergence/<layer>/settled``, "layer X settled at step S", when
  ``vs_previous`` has stayed at or above ``threshold`` for ``patience`` logs in a
  row; S is the first step of that streak. A layer that moves again (below the
  threshold) and settles again gets a new event. :attr:`settled` holds the steps. The
  text is :func:`tbviz.summary.metadata.settled_message`: the tbviz tab reads it back to
  mark that step in the layer's evolution.

Defaults: debiased CKA, because probe batches are small and layers wide, the case
where biased CKA is pushed towards 1 whatever the layers do (about
``features / (n + features)`` for unrelated random features). ``threshold=0.99``:
less than 1% of the (debiased) alignment lost between two logs; ``patience=3``:
three logs in a row, so a single quiet epoch between two moves does not count.
Both depend on how far apart the triggers are (``every_n_epochs`` /
``every_n_steps``): denser triggers need a higher threshold.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.callbacks.convergence import ConvergenceCallback
    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="head")])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(32, 8, 8, 3), np.arange(32) % 2
    >>> cb = ConvergenceCallback("runs/doc_convergence", probe_images=x[:8])
    >>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    >>> cb.layers
    ['conv', 'head']
"""

from __future__ import annotations

import keras
import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2

from tbviz import backend
from tbviz.callbacks.base import VizCallback
from tbviz.callbacks.histograms import check_fits
from tbviz.core.checks import positive_int
from tbviz.core import probes
from tbviz.core.layers import (call_model, capture_outputs, check_layers, children, get_layer,
                               layer_paths, structure)
from tbviz.stats.cka import REDUCTIONS, cka_from_grams
from tbviz.summary import layouts, metadata
from tbviz.summary import events

#: Layers watched by default: every convolution and dense layer.
WATCHED = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
           keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D,
           keras.layers.Conv2DTranspose, keras.layers.Dense)


def default_layers(model) -> list[str]:
    """Every convolution and dense leaf layer, in network order.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, name="c"),
    ...                       keras.layers.Flatten(name="f"), keras.layers.Dense(2, name="d")])
    >>> default_layers(m)
    ['c', 'd']
    """
    return [p for p in layer_paths(model, kind=WATCHED) if not children(get_layer(model, p))]


def layout() -> list:
    """The Custom Scalars category: one chart per comparison, every layer in each."""
    charts = [layout_pb2.Chart(title=f"CKA {title}, every layer",
                               multiline=layout_pb2.MultilineChartContent(
                                   tag=[rf"^convergence/.*/{kind}$"]))
              for kind, title in (("vs_previous", "vs previous log"), ("vs_start", "vs start"))]
    return [layout_pb2.Category(title="tbviz convergence", chart=charts)]


class ConvergenceCallback(VizCallback):
    """Per-layer CKA with the previous trigger and with train begin, and "settled" events.

    Args:
        log_dir: the run directory (summaries go to ``<log_dir>/train``).
        probe_images: a small fixed batch of inputs (at least 4 with ``debiased``),
            sent through the model at once.
        layers: layer paths to watch; default: every conv and dense layer.
        threshold: ``vs_previous`` at or above this counts as quiet.
        patience: quiet logs in a row before a layer is said to have settled.
        debiased: debiased CKA (default) or the biased estimator.
        reduce: ``"flatten"`` (every position of a conv map is a feature) or ``"pool"``
            (channels averaged over positions); see :func:`tbviz.stats.cka.features`.
        every_n_epochs / every_n_steps: when to compare.
        strict: re-raise a failure instead of switching the convergence scalars off
            (see :class:`~tbviz.callbacks.base.VizCallback`).
    """

    def __init__(self, log_dir, probe_images, layers=None, threshold: float = 0.99,
                 patience: int = 3, debiased: bool = True, reduce: str = "flatten",
                 every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 strict: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        if probe_images is None or np.size(probe_images) == 0:
            raise ValueError("probe_images must hold at least one input")
        n = len(probe_images)
        if debiased and n < 4:
            raise ValueError(f"debiased CKA needs at least 4 probe images, got {n}; pass more "
                             "or debiased=False")
        if n < 2:
            raise ValueError("CKA compares inputs with each other: pass at least 2 probe images")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                -1 < threshold <= 1):
            raise ValueError(f"threshold must be a CKA value in (-1, 1], got {threshold!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        self.probe_images = probe_images
        self.layers = None if layers is None else (
            [layers] if isinstance(layers, str) else list(layers))
        self.threshold = float(threshold)
        self.patience = positive_int("patience", patience)
        self.debiased, self.reduce = bool(debiased), reduce
        #: When a layer counts as settled, in words (the scalars' and events' description;
        #: the tbviz tab shows it beside the marked step).
        self.rule = (f"settled when vs_previous >= {self.threshold:g} for {self.patience} logs "
                     "in a row")
        #: ``{layer: step}`` of the latest settling of each layer.
        self.settled: dict[str, int] = {}

    def check(self):
        model = self.model
        check_fits(model, self.probe_images, "probe_images")
        if self.layers is None:
            self.layers = default_layers(model)
            if not self.layers:
                raise ValueError(f"model {model.name!r} has no conv or dense layer to watch; "
                                 "pass layers=[...]")
        else:
            check_layers(model, self.layers)

    def setup(self):
        self._x = np.asarray(self.probe_images, dtype=np.float32)
        self._probe = self._make_probe()
        self._start = self._previous = self._grams()
        self._streak = {p: (0, None) for p in self.layers}  # (quiet logs in a row, first step)
        self.settled = {}
        layouts.add(self.writer, "convergence", layout())

    def own_inputs(self):
        mine = getattr(self, "_x", None)
        return mine if mine is not None else super().own_inputs()

    def _make_probe(self):
        """The Gram-matrix probe, traced once per model and layers (a later ``fit`` reuses it)."""
        model, paths, pool = self.model, tuple(self.layers), self.reduce == "pool"
        # (keyed by the layers only: freezing one changes no activation)
        return probes.traced(model, ("convergence", structure(model)[0], paths, pool),
                             lambda ref: backend.function(_grams_fn(ref, paths, pool),
                                                          models=[ref()]))

    def _grams(self) -> dict:
        return {p: g.astype(np.float64)
                for p, g in zip(self.layers, backend.numpy(self._probe(self._x)))}

    def write(self, step, logs):
        grams = self._grams()
        with self.writer.as_default(step=step):
            for path, g in grams.items():
                vs_previous = cka_from_grams(self._previous[path], g, self.debiased)
                vs_start = cka_from_grams(self._start[path], g, self.debiased)
                if not (np.isfinite(vs_previous) and np.isfinite(vs_start)):
                    self.warn_once(("nan", path), "tbviz.ConvergenceCallback: layer %s is "
                                   "constant or not finite on the probe images; no CKA", path)
                    continue
                events.scalar(metadata.CONVERGENCE_TAG.format(layer=path), vs_previous,
                                  description=f"linear CKA with the previous log; {self.rule}")
                events.scalar(f"convergence/{path}/vs_start", vs_start)
                self._count(path, step, vs_previous)
        self._previous = grams

    def _count(self, path, step, vs_previous):
        quiet, first = self._streak[path]
        if vs_previous < self.threshold:
            self._streak[path] = (0, None)
            return
        quiet, first = quiet + 1, step if first is None else first
        self._streak[path] = (quiet, first)
        if quiet == self.patience:
            self.settled[path] = first
            events.text(metadata.SETTLED_TAG.format(layer=path),
                            metadata.settled_message(path, first),
                            description=f"{self.rule}; from step {first}")


def _grams_fn(ref, paths, pool):
    """``x -> [n x n Gram matrix of each layer's centered activations]`` for the model behind
    ``ref`` (a weak reference: the cached probe must not keep the model alive)."""
    def grams(x):
        model = ref()
        with capture_outputs(model, paths) as seen:
            call_model(model, x)
        out = []
        for p in paths:
            a = keras.ops.cast(_first(seen[p]), "float32")
            if pool and len(a.shape) > 2:
                a = keras.ops.mean(a, axis=list(range(1, len(a.shape) - 1)))
            a = keras.ops.reshape(a, (a.shape[0] if a.shape[0] is not None else -1, -1))
            a = a - keras.ops.mean(a, axis=0)  # center first: a big mean would cancel
            out.append(keras.ops.matmul(a, keras.ops.transpose(a)))
        return out
    return grams


def _first(out):
    """A layer's output tensor; the first of several (a layer returning a tuple)."""
    return out if hasattr(out, "shape") else keras.tree.flatten(out)[0]
