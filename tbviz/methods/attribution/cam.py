"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017), on
conv feature maps or a vision transformer's token grid.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.cam import grad_cam
>>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
...     keras.layers.Flatten(), keras.layers.Dense(2)])
>>> grad_cam(m, np.ones((1, 8, 8, 3)), target=0).shape
(1, 8, 8)
"""

from __future__ import annotations

import keras
import numpy as np

from tbviz.core import probes, tokens
from tbviz.core.backward_rules import backward_rule
from tbviz.core.checks import positive_int
from tbviz.core.layers import capture_outputs, check_images, check_layers, get_layer, layer_paths
from tbviz.methods.attribution.heatmaps import _upsample
from tbviz.methods.attribution.targets import (_num_classes, _prepare, _score, check_target,
                                               logits_of)


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
    features = probes.layer_outputs(model, x, feature, max_batch)
    if features.ndim != 4:
        raise ValueError(f"cam(): layer {feature!r} feeding the pooling has output shape "
                         f"{features.shape}, not (N, h, w, channels)")
    w = keras.ops.convert_to_numpy(get_layer(model, dense).kernel).astype(np.float64)
    maps = np.einsum("nhwk,kn->nhw", features.astype(np.float64), w[:, idx]).astype(np.float32)
    return _upsample(maps, x.shape[1:3]) if upsample else maps


def last_conv_layer(model, image_shape, token_grid=None, class_token=None) -> str:
    """Path of the last layer with a 4-D ``(N, h, w, C)`` output or a vision transformer's
    patch tokens (see :mod:`tbviz.core.tokens`): Grad-CAM's default layer.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> last_conv_layer(m, (8, 8, 3))
    'c'
    """
    return probes.last_spatial_layer(model, image_shape, token_grid, class_token)


def grad_cam_layer(model, image_shape, layer: str | None = None, token_grid=None,
                   class_token=None) -> tuple[str, tuple[int, int, int]]:
    """``(layer, (h, w, skip))``: Grad-CAM's layer (``None``: :func:`last_conv_layer`) and
    its output as a grid (:func:`tbviz.core.tokens.token_grid`); a ``ValueError`` naming the
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
    grid = probes.check_spatial(model, image_shape, layer, "Grad-CAM", token_grid, class_token)
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
    (:mod:`tbviz.core.tokens`), else say ``token_grid=(h, w)`` and ``class_token=True/False``.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"),
    ...     keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> grad_cam(m, np.ones((1, 8, 8, 3)), target=0, layer="c").shape
    (1, 8, 8)
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    layer, grid = grad_cam_layer(model, x.shape[1:], layer, token_grid, class_token)

    gcam = _cam_probe(model, x.shape[1:], layer, grid, fn, predicted=False, with_input=False)
    maps = np.concatenate([probes.numpy(gcam(x[s], idx[s]))[2]
                           for s in probes.batches(len(x), max_batch)])
    return _upsample(maps, x.shape[1:3]) if upsample else maps


def _cam_probe(model, image_shape, layer, grid, fn, predicted: bool, with_input: bool,
               weigh=None):
    """The probe ``(images, classes) -> (classes, input gradient, map)`` of ``layer``
    (cached): one forward and one backward pass; ``predicted``: the classes are the
    argmax of the logits, from the same pass; ``with_input=False``: no input gradient
    (``None``), the backward pass stopping at ``layer``. ``weigh(A, g)``: the map from the
    layer's output and the score's gradient there, on the grid (default Grad-CAM's)."""
    weigh = weigh or _grad_cam_weighing
    out_shape = probes.layer_output_shapes(model, image_shape)[layer]

    def build(ref):
        def probe(xb, ib):
            def score(t, at_layer):
                with logits_of(ref(), fn), backward_rule("gradient", ref()), \
                        capture_outputs(ref(), [layer], add={layer: at_layer}) as found:
                    y = ref()(t, training=False)
                classes = keras.ops.cast(keras.ops.argmax(y, axis=-1), "int32") \
                    if predicted else ib
                return _score(y, classes, fn), (found[layer], classes)

            zeros = _zeros_at(xb, out_shape)
            if with_input:
                (g_x, g_out), (out, classes) = probes.input_gradients(score, xb, zeros,
                                                                      has_aux=True)
            else:
                (g_out,), (out, classes) = probes.input_gradients(
                    lambda at_layer: score(xb, at_layer), zeros, has_aux=True)
                g_x = keras.ops.zeros((), "float32")
            return classes, g_x, _grad_cam_map(out, g_out, grid, weigh)
        return probes.function(ref, probe, (None,) + image_shape, (None,),
                               dtypes=["float32", "int32"])

    return probes.traced(model, ("cam_probe", layer, grid, image_shape, fn, predicted,
                                 with_input, weigh), build)


def _zeros_at(x, out_shape):
    """Zeros shaped like a layer's output for the batch ``x``: added to the output, they make
    the score's gradient w.r.t. that output a gradient w.r.t. an input of the probe."""
    return keras.ops.zeros((keras.ops.shape(x)[0],) + tuple(out_shape[1:]), "float32")


def _grad_cam_map(out, g, grid, weigh):
    """``weigh(A, g)`` of the layer output ``out`` and the score's gradient ``g`` there."""
    # Weighed on the patch grid (tokens reshaped, class token dropped), in float32 whatever
    # the layer computes in.
    a, g = (keras.ops.cast(tokens.to_grid(t, grid), "float32") for t in (out, g))
    return weigh(a, g)


def _grad_cam_weighing(a, g):
    """``relu(sum_k alpha_k A_k)``, ``alpha_k`` the spatial mean of the gradient on map ``k``."""
    alpha = keras.ops.mean(g, axis=[1, 2], keepdims=True)
    return keras.ops.relu(keras.ops.sum(alpha * a, axis=-1))


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

    both = _cam_probe(model, x.shape[1:], layer, grid, fn, predicted, with_input=True)
    parts = [probes.numpy(both(x[s], idx[s])) for s in probes.batches(len(x), max_batch)]
    classes, grads, maps = (np.concatenate(p) for p in zip(*parts))
    return {"target": classes, "saliency": grads,
            "grad_cam": _upsample(maps, x.shape[1:3]) if upsample else maps}
