"""One Custom Scalars layout per run, merged from every callback that adds charts.

TensorBoard's Custom Scalars dashboard reads one layout per run: the tag
``custom_scalars__config__``, and of it only the last event its data provider
keeps (``read_tensors(..., downsample=1)`` keeps the most recent). Two callbacks
writing their own layouts into one run would leave only the second one's charts.
So callbacks hand their categories to :func:`add`, which remembers them per
writer and writes the union each time, so the newest event holds every chart.

Example:
    >>> import tempfile
    >>> from tensorboard.plugins.custom_scalar import layout_pb2
    >>> from tbviz.summary.events import EventWriter
    >>> w = EventWriter.open(tempfile.mkdtemp())
    >>> chart = layout_pb2.Chart(title="acc", multiline=layout_pb2.MultilineChartContent(
    ...     tag=["^acc$"]))
    >>> add(w, "mine", [layout_pb2.Category(title="mine", chart=[chart])])
    >>> [c.title for c in merged(w).category]
    ['mine']
"""

from __future__ import annotations

import threading
import weakref

from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as cs_metadata

from tbviz.summary import events

_lock = threading.Lock()
# writer -> {owner key: [Category]}; weak, so a closed run's layout goes with its writer.
_by_writer: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def merged(writer) -> layout_pb2.Layout:
    """The layout :func:`add` last wrote for ``writer``: every owner's categories in the
    order the owners first came."""
    with _lock:
        parts = dict(_by_writer.get(writer, {}))
    return layout_pb2.Layout(category=[c for cats in parts.values() for c in cats])


def add(writer, owner: str, categories) -> None:
    """Set ``owner``'s categories (replacing what it gave before) and write the merged
    layout of the run at step 0."""
    with _lock:
        _by_writer.setdefault(writer, {})[owner] = list(categories)
    layout = merged(writer)
    with writer.as_default(step=0):
        events.summary(layout_summary(layout), step=0)


def layout_summary(layout: layout_pb2.Layout) -> summary_pb2.Summary:
    """The ``Summary`` TensorBoard's ``custom_scalar.summary.pb`` makes, from its protos
    alone: that function imports TensorFlow, which must not load where it is not the backend.

    >>> s = layout_summary(layout_pb2.Layout(category=[layout_pb2.Category(title="t")]))
    >>> layout_pb2.Layout.FromString(s.value[0].tensor.string_val[0]).category[0].title
    't'
    """
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                    string_val=[layout.SerializeToString()])
    value = summary_pb2.Summary.Value(tag=cs_metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
                                      metadata=cs_metadata.create_summary_metadata())
    return summary_pb2.Summary(value=[value])
