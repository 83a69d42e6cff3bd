"""``LossCallback``: every loss and metric as scalars, grouped losses in one chart.

Example:
    >>> import numpy as np, keras, tbviz
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse", metrics=["mae"])
    >>> _ = model.fit(np.ones((16, 4)), np.ones((16, 1)), validation_split=0.25, epochs=2,
    ...               verbose=0, callbacks=[tbviz.LossCallback("runs/doc_loss", every_n_steps=1)])

TensorBoard: Scalars shows ``epoch_loss`` and ``epoch_mae`` for ``train`` and
``validation`` (like Keras' own callback) and ``batch_loss``/``batch_mae`` per
step; Custom Scalars draws every ``*loss`` key in one chart (e.g.
``content_loss``, ``style_loss`` and ``loss`` together).

Per-step values are what Keras reports at that step: the running mean since the
epoch began for compiled metrics, the raw value for a ``train_step`` that
returns raw tensors (as the style-transfer model does).
"""

from __future__ import annotations

import numbers
import re

import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2

from tbviz.callbacks.base import VizCallback
from tbviz.summary import layouts
from tbviz.summary import events


def numeric_logs(logs) -> dict:
    """The numeric scalar entries of a Keras logs dict, as Python floats."""
    out = {}
    for k, v in (logs or {}).items():
        try:
            arr = np.asarray(v)
        except Exception:  # noqa: BLE001 - anything that is not array-like is skipped
            continue
        if arr.shape == () and (np.issubdtype(arr.dtype, np.number) or isinstance(v, numbers.Number)):
            out[k] = float(arr)
    return out


def group_keys(keys, groups) -> dict:
    """``{chart title: [keys]}`` for ``groups`` over the logged ``keys`` (sans ``val_``).

    ``groups=None``: one chart "losses" with every key ending in ``loss``.
    ``groups`` dict: title -> list of exact key names or compiled regexes.

    >>> group_keys(["loss", "content_loss", "mae"], None)
    {'losses': ['content_loss', 'loss']}
    """
    keys = sorted({k[4:] if k.startswith("val_") else k for k in keys})
    if groups is None:
        groups = {"losses": [re.compile(r".*loss$")]}
    out = {}
    for title, members in groups.items():
        chosen = []
        for k in keys:
            for m in members:
                if (isinstance(m, re.Pattern) and m.fullmatch(k)) or m == k:
                    chosen.append(k)
                    break
        if chosen:
            out[title] = chosen
    return out


def layout(groups: dict) -> layout_pb2.Layout:
    """A Custom Scalars layout: per group, one multiline chart per epoch and per step."""
    cats = []
    for prefix, title_suffix in (("epoch_", "per epoch"), ("batch_", "per step")):
        charts = []
        for title, keys in groups.items():
            regex = "^" + prefix + "(" + "|".join(re.escape(k) for k in keys) + ")$"
            charts.append(layout_pb2.Chart(
                title=f"{title} ({title_suffix})",
                multiline=layout_pb2.MultilineChartContent(tag=[regex])))
        cats.append(layout_pb2.Category(title=f"tbviz losses, {title_suffix}", chart=charts))
    return layout_pb2.Layout(category=cats)


class LossCallback(VizCallback):
    """Scalars for every numeric log entry, plus a Custom Scalars layout grouping losses.

    Args:
        log_dir: run directory; ``train/`` and ``validation/`` runs like Keras.
        groups: ``{chart title: [keys or compiled regexes]}``; default: every key
            ending in ``loss`` in one chart.
        every_n_steps: write ``batch_<key>`` every this many optimizer steps
            (``None``: epoch scalars only).
        strict: re-raise a failure to write instead of switching the scalars off.
    """

    part = "losses"  # as TensorBoardViz calls it

    def __init__(self, log_dir, groups=None, every_n_steps: int | None = 10,
                 strict: bool = False):
        super().__init__(log_dir, every_n_epochs=1, every_n_steps=every_n_steps, strict=strict)
        if groups is not None:
            if not isinstance(groups, dict) or not all(
                    isinstance(v, (list, tuple)) and v for v in groups.values()):
                raise ValueError("groups must be a dict {chart title: [log keys]}, e.g. "
                                 "{'losses': ['loss', 'content_loss', 'style_loss']}")
        self.groups = groups

    def setup(self):
        self.val_writer = None  # opened with the first validation logs, like Keras
        self._layout_keys: frozenset = frozenset()

    def _maybe_layout(self, keys):
        keys = frozenset(keys) | self._layout_keys
        if keys == self._layout_keys:
            return
        self._layout_keys = keys
        grouped = group_keys(keys, self.groups)
        if not grouped:
            return
        layouts.add(self.writer, "losses", layout(grouped).category)

    def write(self, step, logs):
        values = numeric_logs(logs)
        self._maybe_layout(values)
        with self.writer.as_default(step=step):
            for k, v in values.items():
                events.scalar(f"batch_{k}", v)

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is None:
            return
        with self.guard(f"epoch {epoch} end"):
            self._write_epoch(epoch, logs)

    def _write_epoch(self, epoch, logs):
        values = numeric_logs(logs)
        self._maybe_layout(values)
        train = {k: v for k, v in values.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in values.items() if k.startswith("val_")}
        with self.writer.as_default(step=epoch):
            for k, v in train.items():
                events.scalar(f"epoch_{k}", v)
        if val:
            if self.val_writer is None:
                self.val_writer = self.writer_for("validation")
            with self.val_writer.as_default(step=epoch):
                for k, v in val.items():
                    events.scalar(f"epoch_{k}", v)
        self.writer.flush()
        if self.val_writer is not None:
            self.val_writer.flush()
