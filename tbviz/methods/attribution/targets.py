"""Targets and scores shared by every attribution method: which class (or callable score)
each image is explained for, and the predicted classes.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.targets import check_target
>>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
>>> check_target(m, np.zeros((2, 4, 4, 1)), [0, 2])[0].tolist()
[0, 2]
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from tbviz.core import probes
from tbviz.core.checks import positive_int
from tbviz.core.layers import check_images


def _num_classes(model, image_shape) -> int:
    """Size of the model's ``(N, classes)`` output, or a ``ValueError`` saying why not."""
    shape = probes.output_shape(model, image_shape)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"a class-index target needs a model with one (N, classes) output; model "
            f"{model.name!r} returns {'several outputs' if shape is None else tuple(shape)}. "
            "Pass target as a callable from the outputs to one score per image instead")
    return int(shape[1])


def check_target(model, images, target):
    """Validate ``target`` for ``images``; returns ``(indices, score_fn)``.

    ``indices`` is an int32 array with one class per image (zeros when ``target``
    is a callable); ``score_fn`` is the callable or ``None``. Raises ``ValueError``
    for a non-integer or out-of-range index or a wrong count.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(3)])
    >>> check_target(m, np.zeros((2, 4, 4, 1)), 2)[0]
    array([2, 2], dtype=int32)
    """
    x = np.asarray(images)
    n = x.shape[0]
    if callable(target):
        return np.zeros(n, np.int32), target
    arr = np.asarray(target)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"target must be a class index, a sequence of indices (one per image) or "
                         f"a callable from model outputs to one score per image; got {target!r}")
    if arr.ndim == 0:
        arr = np.full(n, int(arr))
    if arr.shape != (n,):
        raise ValueError(f"target has {arr.size} entries for {n} images; give one class index per "
                         "image or a single index for all")
    classes = _num_classes(model, x.shape[1:])
    bad = arr[(arr < 0) | (arr >= classes)]
    if bad.size:
        raise ValueError(f"target {int(bad[0])} is out of range: model {model.name!r} has "
                         f"{classes} outputs (valid indices 0..{classes - 1})")
    return arr.astype(np.int32), None


def logits_of(model, fn):
    """Around a forward pass: the model's logits for a class-index target (its output before
    a final softmax, see :func:`tbviz.core.probes.before_activation`), its actual outputs for
    a callable one. Gradient methods differentiate the class score before the softmax."""
    return probes.before_activation(model) if fn is None else contextlib.nullcontext()


def _score(outputs, idx, fn):
    """One score per row: the callable's, or the target column."""
    if fn is not None:
        s = keras.ops.convert_to_tensor(fn(outputs))
        if len(s.shape) != 1:
            raise ValueError(f"a callable target must return one score per image (shape (N,)), "
                             f"got shape {tuple(s.shape)}")
        return keras.ops.cast(s, "float32")
    # float32 scores (and so gradients of float32 precision) under mixed precision too.
    y = keras.ops.cast(outputs, "float32")
    return keras.ops.take_along_axis(y, keras.ops.expand_dims(idx, 1), axis=1)[:, 0]


def check_baseline(baseline, x) -> np.ndarray:
    """``baseline`` (a number or an array broadcastable to the images ``x``) as a float32
    array shaped like ``x``, or a ``ValueError`` saying what was received.

    >>> check_baseline(0.5, np.zeros((2, 3))).tolist()
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """
    try:
        return np.ascontiguousarray(np.broadcast_to(np.asarray(baseline, np.float32), x.shape))
    except ValueError:
        raise ValueError(f"baseline must be a number or an array broadcastable to the images "
                         f"{x.shape}, got shape {np.shape(baseline)}") from None


def _prepare(model, images, target, max_batch):
    x = check_images(model, images)
    idx, fn = check_target(model, x, target)
    return x, idx, fn, positive_int("max_batch", max_batch)


def top_classes(model, images, max_batch: int = 32) -> np.ndarray:
    """The index of the highest output per image: the predicted class.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(3)])
    >>> top_classes(m, np.ones((4, 2, 2, 1))).shape
    (4,)
    """
    x = check_images(model, images)
    max_batch = positive_int("max_batch", max_batch)
    _num_classes(model, x.shape[1:])

    def build(ref):
        def forward(xb):
            return keras.ops.cast(keras.ops.argmax(ref()(xb, training=False), axis=-1), "int32")
        return probes.function(ref, forward, (None,) + x.shape[1:])

    forward = probes.traced(model, ("top_classes", x.shape[1:]), build)
    return np.concatenate([probes.numpy(forward(x[s]))
                           for s in probes.batches(len(x), max_batch)])



def scores(model, images, idx, fn, max_batch: int = 32, logits: bool = False) -> np.ndarray:
    """The target score of each image, ``(N,)`` float64, by one forward probe per image
    shape: the model's output as given (a probability, for a softmax classifier; what
    occlusion and RISE measure), or with ``logits`` its output before a final softmax
    (what the gradient methods differentiate). ``idx``, ``fn``: from :func:`check_target`.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    >>> idx, fn = check_target(m, np.zeros((3, 2)), 1)
    >>> scores(m, np.zeros((3, 2), "float32"), idx, fn).tolist()
    [0.5, 0.5, 0.5]
    """
    x = np.asarray(images, np.float32)
    use_logits = bool(logits) and fn is None

    def build(ref):
        def forward(xb, ib):
            with logits_of(ref(), fn) if use_logits else contextlib.nullcontext():
                y = ref()(xb, training=False)
            return _score(y, ib, fn)
        return probes.function(ref, forward, (None,) + x.shape[1:], (None,),
                               dtypes=["float32", "int32"])

    forward = probes.traced(model, ("scores", x.shape[1:], fn, use_logits), build)
    idx = np.asarray(idx, np.int32)
    return np.concatenate([probes.numpy(forward(x[s], idx[s])).astype(np.float64)
                           for s in probes.batches(len(x), positive_int("max_batch", max_batch))])
