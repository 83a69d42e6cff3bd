"""``HistogramCallback``: weights, gradients and activations as histograms and distributions.

Example:
    >>> import numpy as np, keras, tbviz
    >>> x, y = np.random.rand(32, 8, 8, 1), np.random.rand(32, 2)
    >>> model = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2, name="head")])
    >>> model.compile("adam", "mse")
    >>> cb = tbviz.HistogramCallback("runs/doc_hist", every_n_steps=4, probe_data=(x[:8], y[:8]))
    >>> _ = model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb])

TensorBoard then shows, under Histograms and Distributions:
``conv/kernel``, ``conv/bias``, ... (every weight, by layer); with ``probe_data``
also ``gradients/<layer>/<variable>`` and ``activations/<layer>`` (a layer that
returns several tensors, a tuple say: ``activations/<layer>/<i>``), and under
Scalars ``gradient_norm/<layer>``, ``update_ratio/<layer>`` (how far the last
step moved the layer's weights, relative to their norm), ``zero_fraction/<layer>``
and ``dead_units/<layer>`` (ReLU channels that are zero on every probe input).

Gradients as data, not errors: a sparse gradient (an ``Embedding``'s
``IndexedSlices`` on TensorFlow) is made dense; a trainable weight the loss does not
reach in inference mode (unused, or used only in training) has no gradient: it is
skipped, and the weights without one are counted and named in a notice
(``tbviz/errors``). JAX does not tell an unused weight from one whose gradient is
zero (it gives zeros): there such a weight gets a histogram of zeros, and every
backend's notice counts the weights whose gradient is exactly zero as well.
"""

from __future__ import annotations

from collections import OrderedDict

import keras
import numpy as np

from tbviz import backend, stats
from tbviz.callbacks.base import VizCallback
from tbviz.core import probes
from tbviz.core.layers import (by_path, call_model, capture_outputs, children, input_shapes,
                               relu_layers, structure, weights_by_layer)
from tbviz.summary import events, histograms



def split_probe(probe_data):
    """``x`` or ``(x, y)`` -> ``(x, y or None)``, arrays as float32 where numeric."""
    if isinstance(probe_data, (tuple, list)) and len(probe_data) == 2:
        x, y = probe_data
    else:
        x, y = probe_data, None
    return x, y


def check_fits(model, x, name="probe_data"):
    """Raise ``ValueError`` if ``x`` does not fit the model's (single) input shape."""
    try:
        shapes = input_shapes(model)
    except ValueError:
        return  # never-called subclassed model: the trial run in setup() is the check
    if len(shapes) != 1:
        return
    want, got = shapes[0], np.shape(x)
    ok = len(got) == len(want) and all(w is None or w == g for w, g in zip(want[1:], got[1:]))
    if not ok:
        raise ValueError(f"{name} has shape {got}, but model {model.name!r} expects "
                         f"(N,) + {tuple(want[1:])}")


#: The guarded item of the gradient and activation histograms (one traced probe for both).
PROBE = "gradient and activation histograms"


class HistogramCallback(VizCallback):
    """Histograms of every weight, and with ``probe_data`` of gradients and activations.

    Args:
        log_dir: run directory (writes to ``<log_dir>/train``).
        every_n_epochs / every_n_steps: when to write (either or both; step =
            global optimizer step). A 30k-step epoch wants ``every_n_steps``.
        probe_data: ``x`` or ``(x, y)``, a small fixed batch. Gradients are of the
            model's own loss (``model.compute_loss``) on it, in inference mode;
            without ``y`` only models whose loss needs no labels get gradients.
        include_frozen: also log frozen layers' weights (e.g. a pretrained backbone).
        strict: re-raise a failure instead of switching the probe (gradients and
            activations) or the whole part off.

    A probe that fails (an op without a gradient, say) switches off the gradient and
    activation histograms only; weight histograms go on.
    """

    part = "histograms"  # as TensorBoardViz calls it

    def __init__(self, log_dir, every_n_epochs=1, every_n_steps=None, probe_data=None,
                 include_frozen=False, strict=False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                         strict=strict)
        self.probe_data = probe_data
        self.include_frozen = include_frozen
        self._epoch = 0

    # -- setup ------------------------------------------------------------------------------
    def check(self):
        if self.probe_data is not None:
            check_fits(self.model, split_probe(self.probe_data)[0])

    def setup(self):
        model = self.model
        self.weights = weights_by_layer(model, self.include_frozen)
        trainable = {id(v) for v in model.trainable_weights}
        self.by_layer = OrderedDict()  # layer path -> trainable variables
        for tag, v in self.weights:
            if id(v) in trainable:
                self.by_layer.setdefault(tag.rsplit("/", 1)[0], []).append(v)
        self._snapshot = None
        self._probe = self._grads_fn = None
        self.no_gradient, self.zero_gradient = [], []  # weight tags, at the last probe
        if self.probe_data is None:
            return
        x, y = split_probe(self.probe_data)
        try:
            several = len(input_shapes(model)) > 1
        except ValueError:  # a subclassed model known only by calling it: one input
            several = False
        if not several:
            x = np.asarray(x)  # a list of images is one batch
        # One tensor per model input (a list for a model with several), float32 where numeric.
        self.x = keras.tree.map_structure(
            lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.number)
            else np.asarray(a), x)
        self.y = None if y is None else np.asarray(y)
        leaves = [p for p, layer in by_path(model).items() if not children(layer)]
        self.act_paths = leaves
        self.relu_paths = set(relu_layers(model))
        self.grad_vars = [v for vs in self.by_layer.values() for v in vs]
        with self.guard("setup", item=PROBE):
            self._probe = self._make_probe(with_loss=True)
            try:
                self._run_probe()
            except Exception:  # noqa: BLE001 - without labels, the loss may be what fails
                if self.y is not None:
                    raise
                self.notice("nograd", "tbviz: no gradient histograms: the model's loss needs "
                            "labels; pass probe_data=(x, y)")
                self._probe = self._make_probe(with_loss=False)
                self._run_probe()

    def own_inputs(self):
        mine = getattr(self, "x", None)
        return mine if mine is not None else super().own_inputs()

    def _make_probe(self, with_loss):
        """The probe (traced once per model, loss, layers and weights: a second ``fit`` finds
        it here; freezing a layer or recompiling makes a new one)."""
        model, paths, variables = self.model, tuple(self.act_paths), list(self.grad_vars)
        # The compiled loss that compute_loss reads: a recompile replaces it.
        loss_id = id(getattr(model, "_compile_loss", None) or getattr(model, "loss", None))
        key = ("histograms", structure(model), paths, tuple(id(v) for v in variables),
               with_loss, loss_id)

        def build(ref):
            def probe(x, y):
                m = ref()

                def loss():
                    with capture_outputs(m, paths) as seen:
                        y_pred = call_model(m, x)
                        value = (m.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
                                 if with_loss else None)
                    # A layer may return several tensors (a tuple, a dict): each is kept.
                    return value, {p: [t for t in keras.tree.flatten(seen[p])
                                       if hasattr(t, "shape")] for p in paths if p in seen}

                if not with_loss:
                    return [], loss()[1]
                acts, grads = backend.variable_gradients(loss, variables)
                return grads, acts

            return backend.function(probe, models=[ref()])

        return probes.traced(model, key, build)

    def _run_probe(self):
        # compute_loss updates compiled-loss trackers; keep them as they were so the probe
        # never changes what fit() reports.
        metric_vars = list(getattr(self.model, "metrics_variables", []))
        saved = [backend.numpy(v) for v in metric_vars]
        try:
            return backend.numpy(self._probe(self.x, self.y))
        finally:
            for v, value in zip(metric_vars, saved):
                v.assign(value)

    # -- update ratio: snapshot the weights just before the step that will be logged --------
    def _next_step_triggers(self, batch):
        if self.every_n_steps and (self._batches + 1) % self.every_n_steps == 0:
            return True
        steps = (self.params or {}).get("steps")
        return bool(self.every_n_epochs and steps and batch == steps - 1
                    and (self._epoch + 1) % self.every_n_epochs == 0)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.ready and self.writer is not None and self._next_step_triggers(batch):
            with self.guard(f"batch {batch} begin (weights before the step)"):
                self._snapshot = (self.global_step + 1, {k: backend.numpy(vs) for k, vs
                                                         in self.by_layer.items()})

    # -- writing ----------------------------------------------------------------------------
    def _histogram(self, tag, values):
        if isinstance(values, keras.Variable):  # (convert_to_numpy warns on a variable)
            values = backend.numpy(values)
        elif not isinstance(values, np.ndarray):
            values = keras.ops.convert_to_numpy(values)
        bad = histograms.write(tag, values)
        if bad:
            self.warn_once(tag, "tbviz: %s has %d non-finite values; histogram shows the "
                            "finite ones, count under nonfinite/%s", tag, bad, tag)
            events.scalar(f"nonfinite/{tag}", bad)

    def write(self, step, logs):
        with self.writer.as_default(step=step):
            for tag, v in self.weights:
                self._histogram(tag, v)
            self._write_update_ratios(step)
            if self._probe is not None and PROBE not in self.failed:
                with self.guard(f"step {step}", item=PROBE):
                    self._write_probe()

    def _write_update_ratios(self, step):
        snap, self._snapshot = self._snapshot, None
        if snap is None or snap[0] != step:
            return
        for layer, before in snap[1].items():
            after = [backend.numpy(v) for v in self.by_layer[layer]]
            b = np.concatenate([np.ravel(a) for a in before])
            a = np.concatenate([np.ravel(a) for a in after])
            events.scalar(f"update_ratio/{layer}", stats.update_ratio(b, a))

    def _write_probe(self):
        grads, acts = self._run_probe()
        if grads:
            self._write_gradients(grads)
        for path, outs in acts.items():
            for i, a in enumerate(outs):
                self._histogram(f"activations/{path}" + (f"/{i}" if len(outs) > 1 else ""), a)
            if path in self.relu_paths and len(outs) == 1:
                zero, dead = stats.zero_fractions(outs[0])
                events.scalar(f"zero_fraction/{path}", zero)
                events.scalar(f"dead_units/{path}", dead)

    def _write_gradients(self, grads):
        by_var = {id(v): g for v, g in zip(self.grad_vars, grads)}
        names = {id(v): tag for tag, v in self.weights}
        none, zero = [], []
        for layer, variables in self.by_layer.items():
            sq, some = 0.0, False
            for v in variables:
                g = by_var.get(id(v))
                if g is None:  # not reached by the loss in inference mode: data, not an error
                    none.append(names[id(v)])
                    continue
                g = np.asarray(g, np.float64)
                if not np.any(g):
                    zero.append(names[id(v)])
                self._histogram(f"gradients/{names[id(v)]}", g)
                sq += float(np.square(g).sum())
                some = True
            if some:
                events.scalar(f"gradient_norm/{layer}", np.sqrt(sq))
        self.no_gradient, self.zero_gradient = none, zero
        n = len(self.grad_vars)
        if none:
            self.notice(("no_gradient", tuple(none)), (
                f"tbviz: histograms: {len(none)} of {n} trainable weights get no gradient from "
                "the loss on the probe data (not used in inference mode, or not connected to "
                f"the loss), so they have no gradient histogram: {_names(none)}"))
        if zero:
            self.notice(("zero_gradient", tuple(zero)), (
                f"tbviz: histograms: {len(zero)} of {n} trainable weights have a gradient of "
                "exactly zero on the probe data (dead units, a frozen path; on JAX also "
                f"weights the loss does not use, which JAX gives zeros): {_names(zero)}"))


def _names(tags, shown: int = 8) -> str:
    more = len(tags) - shown
    return ", ".join(tags[:shown]) + (f" and {more} more" if more > 0 else "")
