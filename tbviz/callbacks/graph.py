"""``GraphCallback``: the op-level graph and the Keras conceptual graph, once per run.

Example:
    >>> import numpy as np, keras, tbviz
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="conv"),
    ...                           keras.layers.Flatten(), keras.layers.Dense(2, name="head")])
    >>> model.compile("sgd", "mse")
    >>> _ = model.fit(np.zeros((4, 8, 8, 1)), np.zeros((4, 2)), verbose=0,
    ...               callbacks=[tbviz.GraphCallback("runs/doc_graph")])

Then ``tensorboard --logdir runs`` -> Graphs: the op graph, one box per layer
(double-click to expand), and under "Conceptual graph" the Keras layer graph.
"""

from __future__ import annotations

import logging

from tensorboard.compat.proto import summary_pb2

from tbviz import backend
from tbviz.callbacks.base import VizCallback
from tbviz.core import graphs
from tbviz.summary import events

log = logging.getLogger("tbviz")


class GraphCallback(VizCallback):
    """Write the model's op graph (inference pass) and conceptual graph at train begin.

    Args:
        log_dir: run directory; the graphs go to ``<log_dir>/train``.
        graph_fn: callable traced instead of ``model(x, training=False)``, e.g. a
            loss computation with its own name scopes. Called with the inputs.
        input_spec: ``tbviz.backend.Spec(shape, dtype)`` (or a list, or a ``tf.TensorSpec`` on
            TensorFlow) for ``graph_fn``/the model. Without it, a
            subclassed model that was never called gets its graph written after the
            first training step, once Keras knows its input shape.
        strict: re-raise a failure to trace or write the graph instead of going without.
    """

    def __init__(self, log_dir, graph_fn=None, input_spec=None, strict: bool = False):
        super().__init__(log_dir, every_n_epochs=None, every_n_steps=None, strict=strict)
        if graph_fn is not None and not callable(graph_fn):
            raise ValueError(f"graph_fn must be callable, got {type(graph_fn).__name__}")
        self.graph_fn = graph_fn
        if input_spec is not None and (isinstance(input_spec, backend.Spec)
                                       or not isinstance(input_spec, (list, tuple))):
            input_spec = [input_spec]
        self.input_spec = None if input_spec is None else [graphs.as_spec(s) for s in input_spec]
        self._pending = False

    def check(self):
        self._pending = False
        if self.input_spec is not None:
            return
        try:
            graphs.input_spec(self.model)
        except ValueError as e:
            if self.graph_fn is not None:
                raise ValueError(f"{e}; GraphCallback(graph_fn=...) then needs input_spec=, "
                                 "e.g. input_spec=tbviz.backend.Spec((None, None, None, 3))") from None
            # A subclassed model that was never called: its input shape is known after
            # the first training step.
            self._pending = True

    def setup(self):
        if not self._pending:
            self._write_graphs()

    def _write_graphs(self):
        # The conceptual graph first: it needs no trace, so a model whose inference pass
        # cannot be drawn still gets it.
        self._write_conceptual()
        self.writer.flush()
        spec = self.input_spec if self.input_spec is not None else graphs.input_spec(self.model)
        graph_def = graphs.op_graph(self.model, fn=self.graph_fn, spec=spec)
        with self.writer.as_default():
            events.graph(graph_def.SerializeToString())
        self.writer.flush()

    def _write_conceptual(self):
        text = graphs.keras_config_json(self.model)
        if text is None:
            log.info("tbviz: model %r cannot be serialized to JSON; no conceptual graph",
                     self.model.name)
            return
        md = summary_pb2.SummaryMetadata()
        md.plugin_data.plugin_name = "graph_keras_model"  # what TensorBoard's graph plugin reads
        md.plugin_data.content = b"1"
        with self.writer.as_default():
            events.tensor("keras", text, step=0, metadata=md)

    def on_train_batch_end(self, batch, logs=None):
        if self._pending and self.writer is not None:
            self._pending = False
            with self.guard("the first step (a subclassed model's graph)"):
                self._write_graphs()

    def on_epoch_end(self, epoch, logs=None):
        pass
