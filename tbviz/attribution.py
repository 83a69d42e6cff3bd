"""Attribution: which input pixels a model's score for a target depends on.

Every method has one call shape, as in Captum: ``method(model, images, target,
..., max_batch=...)``, NumPy in and NumPy out, nothing written anywhere.

* ``images``: ``(N, H, W, C)`` (or one ``(H, W, C)`` image) in the model's input range.
* ``target``: a class index for all images, a sequence with one index per image,
  or a callable from the model's output batch to one score per row (it is also
  applied to batches of perturbed copies, so it must work row by row). Probes are
  cached per callable: reuse one function object rather than a new lambda per call.
* ``max_batch``: the most images sent through the model at once. Methods that
  need many forward passes (SmoothGrad's noisy copies, occlusion's patches) batch
  them across images and chunk by ``max_batch``; none loops over images in Python.

=================  ==============================  ==========================================
function           returns                          literature
=================  ==============================  ==========================================
``saliency``        gradient, shape of ``images``    Simonyan et al. 2013
``smoothgrad``      mean noisy gradient, same shape  Smilkov et al. 2017
``guided_backprop`` guided gradient, same shape      Springenberg et al. 2014
``occlusion``       score drop per pixel ``(N,H,W)`` Zeiler & Fergus 2013
``cam``             class activation map ``(N,H,W)`` Zhou et al. 2016
``grad_cam``        Grad-CAM map ``(N,H,W)``         Selvaraju et al. 2017
=================  ==============================  ==========================================

Gradient methods differentiate the class score *before* a final softmax when the
model ends in one, as the papers do (a callable target gets the model's actual
outputs). Occlusion measures the drop of the output itself (a probability, for a
softmax classifier, as in Zeiler & Fergus). Probes run with ``training=False``
and are traced once per model and image shape.

Example:
    >>> import numpy as np, keras
    >>> from tbviz import attribution
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="head")])
    >>> x = np.random.rand(2, 16, 16, 3).astype("float32")
    >>> attribution.saliency(model, x, target=1).shape
    (2, 16, 16, 3)
    >>> attribution.occlusion(model, x, target=[0, 1], patch=4).shape
    (2, 16, 16)
    >>> attribution.grad_cam(model, x, target=0).shape      # layer "conv", found by itself
    (2, 16, 16)
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf

from tbviz import _probe, tokens
from tbviz.backward_rules import backward_rule, gradients
from tbviz.checks import positive_int, positive_pair
from tbviz.layers import capture_outputs, check_images, check_layers, get_layer, layer_paths

METHODS = ("saliency", "smoothgrad", "guided_backprop", "occlusion", "cam", "grad_cam")


# -- targets ----------------------------------------------------------------------------------

def _num_classes(model, image_shape) -> int:
    """Size of the model's ``(N, classes)`` output, or a ``ValueError`` saying why not."""
    shape = _probe.output_shape(model, image_shape)
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


def _score(outputs, idx, fn, logits: bool):
    """One score per row: the callable's, or the target column (pre-softmax if ``logits``)."""
    if fn is not None:
        s = tf.convert_to_tensor(fn(outputs))
        if s.shape.rank != 1:
            raise ValueError(f"a callable target must return one score per image (shape (N,)), "
                             f"got shape {tuple(s.shape)}")
        return tf.cast(s, tf.float32)
    y = _probe.pre_softmax(outputs) if logits else outputs
    # float32 scores (and so gradients of float32 precision) under mixed precision too.
    return tf.gather(tf.cast(y, tf.float32), idx, axis=1, batch_dims=1)


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
        @_probe.probe_function([tf.TensorSpec((None,) + x.shape[1:], tf.float32)])
        def forward(xb):
            return tf.argmax(ref()(xb, training=False), axis=-1, output_type=tf.int32)
        return forward

    forward = _probe.traced(model, ("top_classes", x.shape[1:]), build)
    return np.concatenate([forward(x[s]).numpy() for s in _probe.batches(len(x), max_batch)])


# -- gradient methods -------------------------------------------------------------------------

def _input_gradients(model, x, idx, fn, rule: str, max_batch: int) -> np.ndarray:
    def build(ref):
        @_probe.probe_function([tf.TensorSpec((None,) + x.shape[1:], tf.float32),
                                      tf.TensorSpec((None,), tf.int32)])
        def grad(xb, ib):
            with backward_rule(rule, ref()):
                y = ref()(xb, training=False)
            # Rows are independent in inference mode, so the gradient of the sum is
            # each image's own gradient.
            return gradients(tf.reduce_sum(_score(y, ib, fn, logits=True)), xb)
        return grad

    grad = _probe.traced(model, ("input_gradients", rule, x.shape[1:], fn), build)
    return np.concatenate([grad(x[s], idx[s]).numpy() for s in _probe.batches(len(x), max_batch)])


def saliency(model, images, target, max_batch: int = 32) -> np.ndarray:
    """Gradient of the target score w.r.t. the input pixels (Simonyan et al. 2013).

    Returns the raw gradient, shape and dtype of ``images`` (float32). For the
    paper's map take ``heatmap(result)`` (max of ``|gradient|`` over channels).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> saliency(m, np.zeros((1, 8, 8, 3)), target=0).shape
    (1, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    return _input_gradients(model, x, idx, fn, "gradient", max_batch)


def guided_backprop(model, images, target, max_batch: int = 32) -> np.ndarray:
    """Guided backpropagation (Springenberg et al. 2014): the gradient with each ReLU
    passing back only positive signal where its input was positive.

    Same shape as ``images``. Uses :func:`tbviz.backward_rules.backward_rule` ``("guided")``.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, activation="relu"),
    ...                       keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> guided_backprop(m, np.ones((1, 8, 8, 3)), target=1).shape
    (1, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    return _input_gradients(model, x, idx, fn, "guided", max_batch)


def smoothgrad(model, images, target, samples: int = 25, noise: float = 0.15,
               max_batch: int = 32, seed: int | None = 0) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): the saliency gradient averaged over noisy copies.

    Each copy adds Gaussian noise with standard deviation ``noise * (max - min)`` of
    its own image, the paper's sigma / (x_max - x_min). All ``N * samples`` copies
    go through the model in chunks of ``max_batch``, whatever image they belong to,
    so memory stays bounded and the model never sees a batch of one. The noise comes
    from NumPy's generator seeded with ``seed`` (the same maps every call by default;
    TensorFlow's random state is left alone).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> smoothgrad(m, np.random.rand(2, 8, 8, 3), target=0, samples=4).shape
    (2, 8, 8, 3)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    positive_int("samples", samples)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a fraction of the image's value range >= 0, got {noise!r}")
    axes = tuple(range(1, x.ndim))
    sigma = (noise * (x.max(axis=axes) - x.min(axis=axes))).astype(np.float32)
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(len(x)), samples)  # the image each noisy copy belongs to
    total = np.zeros(x.shape, np.float64)
    for s in _probe.batches(len(owner), max_batch):
        rows = owner[s]
        eps = rng.standard_normal((len(rows),) + x.shape[1:], dtype=np.float32)
        noisy = x[rows] + eps * sigma[rows].reshape((-1,) + (1,) * len(axes))
        g = _input_gradients(model, noisy, idx[rows], fn, "gradient", max_batch)
        np.add.at(total, rows, g)
    return (total / samples).astype(np.float32)


# -- occlusion --------------------------------------------------------------------------------

def _starts(size: int, patch: int, stride: int) -> np.ndarray:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # one more patch flush with the far edge: cover every pixel
        starts.append(size - patch)
    return np.asarray(starts, np.int32)


def occlusion(model, images, target, patch=8, stride=None, baseline=0.0,
              max_batch: int = 64) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2013): score drop when a patch is hidden.

    A ``patch`` (int or ``(h, w)``) filled from ``baseline`` (a value, or an array
    broadcastable to ``images``, e.g. a blurred copy) slides over each image with
    ``stride`` (default half the patch; the last row and column of patches sit flush
    with the border so every pixel is covered). Returns ``(N, H, W)``: for each pixel
    the mean of ``score(image) - score(occluded image)`` over the patches covering it
    (0 where a stride longer than the patch leaves a pixel uncovered). Positive where
    hiding the pixel lowers the score.

    Every (image, patch position) pair is one row of a batch built inside the
    traced probe, chunked by ``max_batch``: no Python loop over images or patches
    calls the model.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> occlusion(m, np.ones((3, 8, 8, 1)), target=0, patch=4, stride=2).shape
    (3, 8, 8)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    n, h, w, _ = x.shape
    ph, pw = positive_pair("patch", patch)
    if ph > h or pw > w:
        raise ValueError(f"patch {(ph, pw)} is larger than the images ({h}, {w})")
    sh, sw = positive_pair("stride", (max(1, ph // 2), max(1, pw // 2)) if stride is None
                           else stride)
    try:
        base = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
    except ValueError:
        raise ValueError(f"baseline must be a number or an array broadcastable to the images "
                         f"{x.shape}, got shape {np.shape(baseline)}") from None

    ys, xs = _starts(h, ph, sh), _starts(w, pw, sw)
    y0 = np.repeat(ys, len(xs))
    x0 = np.tile(xs, len(ys))
    # One extra "position" off the image scores the unoccluded image in the same pass.
    y0_all = np.concatenate([[h], y0]).astype(np.int32)
    x0_all = np.concatenate([[w], x0]).astype(np.int32)
    p = len(y0_all)
    rows_img = np.repeat(np.arange(n, dtype=np.int32), p)
    rows_pos = np.tile(np.arange(p), n)

    def build(ref):
        spec = tf.TensorSpec((None, h, w, x.shape[3]), tf.float32)
        vec = tf.TensorSpec((None,), tf.int32)

        @_probe.probe_function([spec, spec, vec, vec, vec, vec,
                                      tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
        def scores(images_t, base_t, img, top, left, cls, ph_t, pw_t):
            r = tf.range(h)[None, :, None]
            c = tf.range(w)[None, None, :]
            top, left = top[:, None, None], left[:, None, None]
            hidden = (r >= top) & (r < top + ph_t) & (c >= left) & (c < left + pw_t)
            xo = tf.where(hidden[..., None], tf.gather(base_t, img), tf.gather(images_t, img))
            return _score(ref()(xo, training=False), cls, fn, logits=False)
        return scores

    scores_fn = _probe.traced(model, ("occlusion", x.shape[1:], fn), build)
    images_t, base_t = tf.constant(x), tf.constant(base)
    out = np.empty(len(rows_img), np.float64)
    for s in _probe.batches(len(rows_img), max_batch):
        img = rows_img[s]
        out[s] = scores_fn(images_t, base_t, img, y0_all[rows_pos[s]], x0_all[rows_pos[s]],
                           idx[img], ph, pw).numpy()
    out = out.reshape(n, p)
    drop = out[:, :1] - out[:, 1:]  # (N, positions)

    # Spread each patch's drop over its rectangle: a 2-D difference array turns the
    # rectangle adds into four point adds per patch and two cumulative sums.
    y1, x1 = y0 + ph, x0 + pw
    acc = np.zeros((n, h + 1, w + 1))
    cnt = np.zeros((h + 1, w + 1))
    for yy, xx, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        acc[:, yy, xx] += sign * drop  # (yy, xx) pairs are distinct, so += is exact
        cnt[yy, xx] += sign
    total = acc.cumsum(1).cumsum(2)[:, :h, :w]
    count = np.rint(cnt.cumsum(0).cumsum(1)[:h, :w])
    # A stride longer than the patch skips pixels: no patch hid them, so no drop.
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


# -- class activation maps --------------------------------------------------------------------

def _upsample(maps: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``size`` (the papers' upsampling)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]


_PASS_THROUGH = (keras.layers.Dropout, keras.layers.SpatialDropout2D, keras.layers.GaussianNoise,
                 keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _activation(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def _kind(layer) -> str:
    act = _activation(layer)
    return type(layer).__name__ + ("" if act == "linear" else f"({act})")


def _output_activation(layer) -> bool:
    """A softmax or identity after the classifier: it does not change which class wins."""
    return isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and _activation(layer) in ("softmax", "linear"))


def cam_head(model) -> tuple[str, str]:
    """``(feature_layer, dense_layer)`` paths of a conv -> GAP -> Dense model, for :func:`cam`.

    Raises ``ValueError`` naming the layers found when the model does not end in
    ``GlobalAveragePooling2D -> Dense`` (linear or softmax, optionally followed by
    a softmax/linear activation layer), the head CAM is defined for.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="d")])
    >>> cam_head(m)
    ('c', 'd')
    """
    paths = layer_paths(model)
    top = [p for p in paths if "/" not in p] or paths
    layers = [get_layer(model, p) for p in top]
    i = len(top) - 1
    while i >= 0 and _output_activation(layers[i]):
        i -= 1
    dense_i = i
    i -= 1
    while i >= 0 and isinstance(layers[i], _PASS_THROUGH):
        i -= 1
    gap_i = i
    ok = (gap_i >= 1
          and isinstance(layers[dense_i], keras.layers.Dense)
          and _activation(layers[dense_i]) in ("linear", "softmax")
          and isinstance(layers[gap_i], keras.layers.GlobalAveragePooling2D)
          and not getattr(layers[gap_i], "keepdims", False))
    if not ok:
        tail = " -> ".join(f"{p} [{_kind(get_layer(model, p))}]" for p in top[-4:])
        raise ValueError(
            f"cam() needs a conv -> GlobalAveragePooling2D -> Dense (linear or softmax) head "
            f"(Zhou et al. 2016); model {model.name!r} ends with {tail}. grad_cam() works for "
            "any head")
    gap = get_layer(model, top[gap_i])
    feature = top[gap_i - 1]
    try:  # the layer that really feeds the pooling, when the model records it
        producer = gap.input._keras_history.operation
        feature = next((p for p in top[:gap_i] if get_layer(model, p) is producer), feature)
    except (AttributeError, ValueError):
        pass
    return feature, top[dense_i]


def cam(model, images, target, upsample: bool = True, max_batch: int = 32) -> np.ndarray:
    """Class activation map (Zhou et al. 2016) for a conv -> GAP -> Dense model.

    ``sum_k w[k, target] * A_k``: the last feature maps ``A`` (the input of the
    global average pooling) weighted by the dense layer's weights for the target
    class, bias left out, signed. ``(N, H, W)`` bilinearly upsampled to the image
    size, or ``(N, h, w)`` at the feature maps' size with ``upsample=False``.
    ``target`` must be class indices. See :func:`cam_head` for the models it takes.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    >>> cam(m, np.ones((2, 8, 8, 3)), target=1, upsample=False).shape
    (2, 6, 6)
    """
    if callable(target):
        raise ValueError("cam() weighs feature maps by one class's dense weights, so target "
                         "must be class indices; use grad_cam() for a callable score")
    feature, dense = cam_head(model)
    x, idx, _, max_batch = _prepare(model, images, target, max_batch)
    features = _probe.layer_outputs(model, x, feature, max_batch)
    if features.ndim != 4:
        raise ValueError(f"cam(): layer {feature!r} feeding the pooling has output shape "
                         f"{features.shape}, not (N, h, w, channels)")
    w = np.asarray(get_layer(model, dense).kernel, np.float64)  # (channels, classes)
    maps = np.einsum("nhwk,kn->nhw", features.astype(np.float64), w[:, idx]).astype(np.float32)
    return _upsample(maps, x.shape[1:3]) if upsample else maps


def last_conv_layer(model, image_shape, token_grid=None, class_token=None) -> str:
    """Path of the last layer with a 4-D ``(N, h, w, C)`` output or a vision transformer's
    patch tokens (see :mod:`tbviz.tokens`): Grad-CAM's default layer.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> last_conv_layer(m, (8, 8, 3))
    'c'
    """
    return _probe.last_spatial_layer(model, image_shape, token_grid, class_token)


def grad_cam_layer(model, image_shape, layer: str | None = None, token_grid=None,
                   class_token=None) -> tuple[str, tuple[int, int, int]]:
    """``(layer, (h, w, skip))``: Grad-CAM's layer (``None``: :func:`last_conv_layer`) and
    its output as a grid (:func:`tbviz.tokens.token_grid`); a ``ValueError`` naming the
    layers that fit when it is not one.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> grad_cam_layer(m, (8, 8, 3))
    ('c', (6, 6, 0))
    """
    image_shape = tuple(image_shape)
    if layer is None:
        layer = last_conv_layer(model, image_shape, token_grid, class_token)
    check_layers(model, [layer])
    grid = _probe.check_spatial(model, image_shape, layer, "Grad-CAM", token_grid, class_token)
    return layer, grid


def grad_cam(model, images, target, layer: str | None = None, upsample: bool = True,
             max_batch: int = 32, token_grid=None, class_token=None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_k alpha_k A_k)``, ``alpha_k`` the
    spatial mean of the target score's gradient w.r.t. feature map ``A_k`` of ``layer``.

    ``layer`` is a path (``"conv5"`` or ``"backbone/conv5"``); ``None`` picks the last
    layer with a 4-D output or patch tokens (:func:`last_conv_layer`). Returns ``(N, H, W)``,
    bilinearly upsampled to the images, or ``(N, h, w)`` with ``upsample=False``. On a
    conv -> GAP -> Dense model it equals ``relu(cam) / (h * w)``.

    A vision transformer's layer ``(N, T, D)`` is weighed on its patch grid, the class
    token dropped; the grid is found from ``T`` and the image shape where it can be
    (:mod:`tbviz.tokens`), else say ``token_grid=(h, w)`` and ``class_token=True/False``.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> grad_cam(m, np.ones((1, 8, 8, 3)), target=0, layer="c").shape
    (1, 8, 8)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    layer, grid = grad_cam_layer(model, x.shape[1:], layer, token_grid, class_token)

    def build(ref):
        @_probe.probe_function([tf.TensorSpec((None,) + x.shape[1:], tf.float32),
                                      tf.TensorSpec((None,), tf.int32)])
        def gcam(xb, ib):
            with capture_outputs(ref(), [layer]) as seen:
                y = ref()(xb, training=False)
            out = seen[layer]
            g = gradients(tf.reduce_sum(_score(y, ib, fn, logits=True)), out)
            return _grad_cam_map(out, g, grid)
        return gcam

    gcam = _probe.traced(model, ("grad_cam", layer, grid, x.shape[1:], fn), build)
    maps = np.concatenate([gcam(x[s], idx[s]).numpy() for s in _probe.batches(len(x), max_batch)])
    return _upsample(maps, x.shape[1:3]) if upsample else maps


def _grad_cam_map(out, g, grid):
    """``relu(sum_k alpha_k A_k)`` from the layer output ``out`` and the score's gradient ``g``."""
    # Weighed on the patch grid (tokens reshaped, class token dropped), in float32 whatever
    # the layer computes in.
    a, g = (tf.cast(tokens.to_grid(t, grid), tf.float32) for t in (out, g))
    alpha = tf.reduce_mean(g, axis=[1, 2], keepdims=True)
    return tf.nn.relu(tf.reduce_sum(alpha * a, axis=-1))


def saliency_and_grad_cam(model, images, target=None, layer: str | None = None,
                          upsample: bool = True, max_batch: int = 32, token_grid=None,
                          class_token=None) -> dict:
    """:func:`saliency` and :func:`grad_cam` of one target by one probe: one forward pass and
    one backward pass give the score's gradient w.r.t. the input and w.r.t. Grad-CAM's layer.

    A logging callback wants both every time; as two probes they cost two traces of the
    model and two passes per call. ``target`` takes the same forms as theirs, and also
    ``None``: the class each image is predicted as (the argmax of the model's output, as
    :func:`top_classes`), found in the same forward pass. Returns ``{"target": (N,) int32
    classes (zeros for a callable), "saliency": (N, H, W, C), "grad_cam": (N, H, W)}``, the
    maps those functions give (up to float32 rounding: the same ops in another graph).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> both = saliency_and_grad_cam(m, np.ones((2, 8, 8, 3)))
    >>> both["target"].shape, both["saliency"].shape, both["grad_cam"].shape
    ((2,), (2, 8, 8, 3), (2, 8, 8))
    """
    x = check_images(model, images)
    max_batch = positive_int("max_batch", max_batch)
    predicted = target is None
    if predicted:
        _num_classes(model, x.shape[1:])  # a class to predict: one (N, classes) output
        idx, fn = np.zeros(len(x), np.int32), None
    else:
        idx, fn = check_target(model, x, target)
    layer, grid = grad_cam_layer(model, x.shape[1:], layer, token_grid, class_token)

    def build(ref):
        @_probe.probe_function([tf.TensorSpec((None,) + x.shape[1:], tf.float32),
                                      tf.TensorSpec((None,), tf.int32)])
        def both(xb, ib):
            with backward_rule("gradient", ref()), capture_outputs(ref(), [layer]) as seen:
                y = ref()(xb, training=False)
            out = seen[layer]
            if predicted:
                ib = tf.argmax(y, axis=-1, output_type=tf.int32)
            g_x, g_out = gradients(tf.reduce_sum(_score(y, ib, fn, logits=True)), [xb, out])
            return ib, g_x, _grad_cam_map(out, g_out, grid)
        return both

    both = _probe.traced(model, ("saliency_and_grad_cam", layer, grid, x.shape[1:], fn,
                                 predicted), build)
    parts = [[t.numpy() for t in both(x[s], idx[s])] for s in _probe.batches(len(x), max_batch)]
    classes, grads, maps = (np.concatenate(p) for p in zip(*parts))
    return {"target": classes, "saliency": grads,
            "grad_cam": _upsample(maps, x.shape[1:3]) if upsample else maps}


# -- display ----------------------------------------------------------------------------------

def heatmap(attributions) -> np.ndarray:
    """``(N, H, W)`` map for display: ``max |a|`` over channels of ``(N, H, W, C)``
    gradients (Simonyan et al.'s saliency map); ``(N, H, W)`` maps pass through.

    >>> heatmap(np.array([[[[1.0, -3.0]]]])).tolist()
    [[[3.0]]]
    """
    a = np.asarray(attributions, np.float32)
    if a.ndim == 4:
        return np.abs(a).max(axis=-1)
    if a.ndim == 3:
        return a
    raise ValueError(f"attributions must be (N, H, W, C) or (N, H, W), got shape {a.shape}")


def method_options(method: str) -> list[str]:
    """Keyword options a method takes beyond ``(model, images, target)``.

    >>> method_options("occlusion")
    ['patch', 'stride', 'baseline', 'max_batch']
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    params = list(inspect.signature(globals()[method]).parameters)
    return params[3:]


from tbviz.sanity import sanity_check  # noqa: E402,F401 - Adebayo et al.'s check, see there
