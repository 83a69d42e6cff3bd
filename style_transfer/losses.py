"""Perceptual losses of Johnson et al. 2016, as pure functions of feature tensors.

Written with ``keras.ops``: they run on every Keras backend, inside a compiled train step
or eagerly. All return float32 whatever the input dtype, so they stay exact under mixed
precision. Batch-first ``(N, H, W, C)`` features; every loss is averaged over the batch.

* feature reconstruction (content): ``||a - b||^2 / (C H W)``
* Gram matrix: ``G = F^T F / (C H W)`` with ``F`` the ``(H W, C)`` feature matrix
* style: ``||G(a) - G_style||_F^2`` per layer (summed over layers by the caller)
* total variation: mean squared difference of vertical neighbours plus that of
  horizontal neighbours (a smoothness prior on the output pixels)

Example:
    >>> import numpy as np
    >>> from style_transfer import losses
    >>> f = np.ones((2, 4, 4, 3), "float32")
    >>> tuple(losses.gram_matrix(f).shape)
    (2, 3, 3)
    >>> float(losses.content_loss(f, f))
    0.0
"""

from __future__ import annotations

from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def gram_matrix(features):
    """``(N, H, W, C)`` -> ``(N, C, C)`` Gram matrices normalized by ``C * H * W``.

    >>> import numpy as np
    >>> float(gram_matrix(np.full((1, 2, 2, 1), 3.0, "float32"))[0, 0, 0])
    9.0
    """
    f = _f32(features)
    shape = ops.shape(f)
    h, w, c = shape[1], shape[2], shape[3]
    flat = ops.reshape(f, (shape[0], h * w, c))
    gram = ops.matmul(ops.transpose(flat, (0, 2, 1)), flat)
    return gram / ops.cast(h * w * c, "float32")


def content_loss(features, target):
    """Squared Euclidean distance normalized by ``C * H * W``, averaged over the batch.

    >>> import numpy as np
    >>> float(content_loss(np.zeros((1, 1, 2, 2), "float32"), np.ones((1, 1, 2, 2), "float32")))
    1.0
    """
    return ops.mean(ops.square(_f32(features) - _f32(target)))


def style_loss(gram, target_gram):
    """Squared Frobenius distance between Gram matrices, averaged over the batch.

    ``target_gram`` (``(C, C)`` or ``(1, C, C)``) broadcasts over the batch.

    >>> import numpy as np
    >>> float(style_loss(np.ones((2, 2, 2), "float32"), np.zeros((2, 2), "float32")))
    4.0
    """
    d = _f32(gram) - _f32(target_gram)
    return ops.mean(ops.sum(ops.square(d), axis=(-2, -1)))


def tv_loss(images):
    """Total variation: mean squared vertical plus horizontal neighbour difference.

    >>> import numpy as np
    >>> float(tv_loss(np.array([[[[0.0], [2.0]]]], "float32")))  # one row: 0 -> 2
    4.0
    """
    x = _f32(images)
    dy = x[:, 1:, :, :] - x[:, :-1, :, :]
    dx = x[:, :, 1:, :] - x[:, :, :-1, :]
    return _mean_or_zero(ops.square(dy)) + _mean_or_zero(ops.square(dx))


def _mean_or_zero(x):
    # A 1-pixel-high image has no vertical neighbours: that term is 0, not NaN.
    return ops.divide_no_nan(ops.sum(x), ops.cast(ops.size(x), "float32"))
