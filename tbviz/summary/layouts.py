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

from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as cs_summary

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
        events.summary(cs_summary.pb(layout), step=0)
