"""Histogram summaries computed in NumPy, in the exact format of TensorBoard's histogram plugin.

``tf.summary.histogram`` runs a dozen small eager ops per call (about 10 ms each
on a CPU); a model with 60 weight, gradient and activation tensors would spend
most of a second per trigger on it. Bucketing in NumPy with ``bincount`` takes
well under a millisecond per tensor and writes the same ``[buckets, 3]`` tensor
(left edge, right edge, count; equal-width buckets from min to max) with the
histogram plugin's own metadata, so the Histograms and Distributions dashboards
read it as usual.

Example:
    >>> import numpy as np
    >>> from tbviz.summary.histograms import buckets
    >>> buckets(np.array([0.0, 1.0, 1.0, 2.0]), 2)
    array([[0., 1., 1.],
           [1., 2., 3.]])
"""

from __future__ import annotations

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import metadata as hist_metadata
from tensorboard.util import tensor_util

from tbviz.summary import events

DEFAULT_BUCKETS = 30


def buckets(values, count: int = DEFAULT_BUCKETS) -> np.ndarray:
    """``[count, 3]`` array of (left, right, count) over finite ``values``.

    Same layout as TensorBoard's ``histogram_pb``: equal-width buckets from the
    minimum to the maximum, the maximum counted in the last bucket; all values
    equal -> every edge at that value and all counts in the last bucket.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        return np.zeros((count, 3))
    lo, hi = data.min(), data.max()
    if hi == lo:
        counts = np.zeros(count)
        counts[-1] = data.size
        return np.stack([np.full(count, lo), np.full(count, lo), counts], axis=1)
    idx = np.minimum(((data - lo) / ((hi - lo) / count)).astype(np.int64), count - 1)
    counts = np.bincount(idx, minlength=count).astype(np.float64)
    edges = np.linspace(lo, hi, count + 1)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def write(tag: str, values, step=None, count: int = DEFAULT_BUCKETS) -> int:
    """Write a histogram of ``values`` under the default writer; return how many
    non-finite values were left out (the caller decides how to report them)."""
    data = np.asarray(values)
    if data.dtype.kind not in "fiub":
        data = data.astype(np.float64)
    finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad:
        data = data[finite]
    summary = summary_pb2.Summary()
    value = summary.value.add(tag=tag, metadata=hist_metadata.create_summary_metadata(
        display_name=tag, description=""))
    value.tensor.CopyFrom(tensor_util.make_tensor_proto(buckets(data, count), dtype=np.float64))
    events.summary(summary, step)
    return bad
