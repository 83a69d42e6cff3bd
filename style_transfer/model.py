"""The trainable style-transfer model: transform-net + frozen VGG19 + perceptual losses.

``StyleTransferModel(style_image)`` is a ``keras.Model``, written once with ``keras.ops``
for every Keras backend:

* ``model(photos)``: the stylized photos, ``[0, 255]`` (``model.stylize(photos)``: the
  same, clipped, as a NumPy array, compiled once for any size),
* ``model.compute_losses(photos)``: ``{"loss", "content_loss", "style_loss", "tv_loss",
  "style_loss_<layer>"...}`` (float32, weighted; the per-layer terms add up to
  ``style_loss``), under the name scopes ``transform_net``, ``vgg_content``,
  ``vgg_transformed`` and ``losses`` so the op graph reads like Fig. 4 of the paper,
* ``model.compute_loss(x=photos)``: the total loss. Keras' own ``train_step`` takes the
  gradients of it on each backend (``tf.GradientTape``, ``jax.value_and_grad``, PyTorch's
  autograd), and in training it records every term of that very step, so
* ``model.fit(data)``: trains the transform-net only; the logs hold every loss of the
  step just trained (not running means), at every batch and at the epoch's end. ``data``
  yields ``photos`` or ``(photos, stream)`` (see :mod:`style_transfer.data`); the latter
  keeps :attr:`data_position` and :attr:`skipped_files` up to date for resuming and
  reporting.

``model.transform_net`` is the Functional transform-net (what gets saved) and
``model.vgg`` the Functional VGG19 feature model (a deconvnet probe target).

Steps whose gradients are not finite are skipped (:class:`SkipNonFinite`, the optimizer
:func:`style_transfer.train.build_model` compiles with); :attr:`skipped_steps` counts them.

Example:
    >>> import numpy as np
    >>> from style_transfer.model import SkipNonFinite, StyleTransferModel
    >>> from style_transfer.vgg import build_vgg
    >>> vgg = build_vgg("random", ["block1_conv1"], quiet=True)
    >>> model = StyleTransferModel(np.full((16, 16, 3), 99.0, "float32"), vgg=vgg,
    ...                            content_layer="block1_conv1", style_layers=["block1_conv1"])
    >>> model.compile(optimizer=SkipNonFinite(keras.optimizers.Adam(1e-3)))
    >>> history = model.fit(np.random.rand(2, 16, 16, 3).astype("float32") * 255, verbose=0)
    >>> sorted(history.history)
    ['content_loss', 'loss', 'style_loss', 'style_loss_block1_conv1', 'tv_loss']
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from style_transfer import distribute
from style_transfer import losses as L
from style_transfer.data import resize
from style_transfer.defaults import (CONTENT_LAYER, CONTENT_WEIGHT, STYLE_LAYERS, STYLE_SIZE,
                                     STYLE_WEIGHT, TV_WEIGHT)
from style_transfer.transform_net import build_transform_net
from style_transfer.vgg import build_vgg, check_layers
from tbviz import backend
from tbviz.core.checks import number


def resize_longest(image, size: int | None) -> np.ndarray:
    """Downscale ``(H, W, 3)`` so its longest side is at most ``size`` (never upscales).

    >>> resize_longest(np.zeros((100, 50, 3), "float32"), 20).shape
    (20, 10, 3)
    """
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape[:2]
    if not size or max(h, w) <= size:
        return image
    scale = size / max(h, w)
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))), "area")


class StepValue(keras.metrics.Metric):
    """The value of the last step, not a running mean: what a loss curve should show.

    Under a ``tf.distribute`` strategy each replica holds its own value and reading it
    across replicas gives their mean: the global batch's loss, since the replicas' batches
    are of equal size.

    >>> m = StepValue("loss")
    >>> m.update_state(3.0); m.update_state(5.0)
    >>> float(m.result())
    5.0
    """

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, value):
        self.total.assign(ops.cast(value, self.dtype))
        self.count.assign(1.0)

    def result(self):
        return distribute.for_logs(ops.divide_no_nan(self.total, self.count))


class SkipNonFinite(keras.optimizers.LossScaleOptimizer):
    """``inner`` (an optimizer) applied only at steps whose gradients are all finite.

    A flat image (all pixels equal) has zero variance at every instance norm, and each
    of them then multiplies the gradient by ``1/sqrt(epsilon)``: the gradient overflows.
    Such a step leaves the weights and the optimizer's moments as they were, counts in
    :attr:`skipped_steps`, and still advances ``iterations`` (the global step counts
    batches, so step-triggered logs and checkpoints keep their rhythm). Built on Keras'
    ``LossScaleOptimizer``, whose finite-or-skip step works on every backend and under
    ``tf.distribute``, with the loss scale fixed at 1: the losses are float32, nothing
    is scaled. (Under mixed precision use Keras' own ``LossScaleOptimizer``, which skips
    such steps too while it adapts its scale.)

    >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> net.compile(SkipNonFinite(keras.optimizers.Adam(0.1)), "mse")
    >>> before = net.get_weights()
    >>> _ = net.fit(np.array([[np.nan, 1.0]]), np.zeros((1, 1)), verbose=0)  # NaN gradients
    >>> [bool((a == b).all()) for a, b in zip(before, net.get_weights())]
    [True, True]
    >>> [int(keras.ops.convert_to_numpy(net.optimizer.skipped_steps)),
    ...  int(keras.ops.convert_to_numpy(net.optimizer.iterations))]
    [1, 1]
    """

    def __init__(self, inner_optimizer, name=None, **kwargs):
        kwargs.pop("initial_scale", None)  # from_config: always 1 here
        kwargs.pop("dynamic_growth_steps", None)
        super().__init__(inner_optimizer, initial_scale=1.0,
                         dynamic_growth_steps=2**31 - 1, name=name, **kwargs)

    def build(self, var_list):
        super().build(var_list)
        self.skipped_steps = self.add_variable(shape=(), dtype="int", initializer="zeros",
                                               aggregation="only_first_replica",
                                               name="skipped_steps")

    # What Keras' LossScaleOptimizer does at a non-finite step (halving its scale) becomes
    # counting and advancing the global step; the rest is Keras' own.
    def _stateful_handle_non_finite_grads(self):
        self.skipped_steps.assign_add(1)
        self.inner_optimizer.iterations.assign_add(1)

    def _stateless_handle_non_finite_grads(self, optimizer_variables, trainable_variables):
        with keras.StatelessScope(state_mapping=list(zip(self.variables,
                                                         optimizer_variables))) as scope:
            self._stateful_handle_non_finite_grads()
        return trainable_variables, [scope.get_current_value(v) for v in self.variables]


def _counter(name, initial=0):
    # Every replica computes the same value (from the stream positions each element
    # carries), so under a tf.distribute strategy the first replica's write stands for all.
    return keras.Variable(initial, dtype="int", trainable=False, name=name,
                          aggregation="only_first_replica")


class StyleTransferModel(keras.Model):
    """Johnson et al.'s training setup for one style image; see the module docstring."""

    def __init__(self, style_image, vgg_weights: str = "imagenet",
                 content_layer: str = CONTENT_LAYER, style_layers=STYLE_LAYERS,
                 content_weight: float = CONTENT_WEIGHT, style_weight: float = STYLE_WEIGHT,
                 tv_weight: float = TV_WEIGHT, style_size: int | None = STYLE_SIZE,
                 transform_net: keras.Model | None = None, vgg: keras.Model | None = None,
                 debug_nan_at_step: int | None = None, name: str = "style_transfer",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.content_layer = check_layers([content_layer])[0]
        self.style_layers = check_layers(style_layers)
        self.content_weight = number("content_weight", content_weight)
        self.style_weight = number("style_weight", style_weight)
        self.tv_weight = number("tv_weight", tv_weight)

        style = np.asarray(style_image, dtype=np.float32)
        if style.ndim != 3 or style.shape[-1] != 3:
            raise ValueError(f"style_image must be an (H, W, 3) RGB array, got shape {style.shape}")
        self.transform_net = transform_net or build_transform_net()
        self.vgg = vgg or build_vgg(vgg_weights, [self.content_layer] + self.style_layers)
        self.vgg.trainable = False
        feats = self.vgg(resize_longest(style, style_size)[None], training=False)
        # Constants of the computation: the style never changes during a run.
        self.style_grams = {n: ops.convert_to_numpy(L.gram_matrix(feats[n])[0])
                            for n in self.style_layers}

        # The loss terms of the last training step, as Keras logs them.
        names = ["loss", "content_loss", "style_loss", "tv_loss"] + [
            f"style_loss_{n}" for n in self.style_layers]
        self.loss_terms = [StepValue(n) for n in names]
        # Where the data stream stands (files consumed) and how many files it skipped.
        self.data_position = _counter("data_position")
        self.skipped_files = _counter("skipped_files")
        #: Test hook (``style-transfer train --debug-nan-at-step N``): the content loss of
        #: the N-th step of this process becomes NaN, as a diverging run's would.
        self.debug_nan_at_step = debug_nan_at_step
        self._steps_run = _counter("debug_steps") if debug_nan_at_step else None
        self._stylize_fn = None
        # Every weight exists now (the two Functional models are built for any image size).
        self.built = True

    @property
    def metrics(self):
        # The loss terms only: Keras' own "loss" tracker is a running mean over the epoch.
        return list(self.loss_terms)

    @property
    def skipped_steps(self):
        """Steps not applied because their gradients were not finite (``0`` when the
        optimizer does not skip them itself)."""
        return getattr(self.optimizer, "skipped_steps", 0)

    # -- inference -----------------------------------------------------------------------------
    def call(self, images, training=False):
        return self.transform_net(images, training=training)

    def stylize(self, images) -> np.ndarray:
        """Stylized ``images`` (``(N, H, W, 3)`` in ``[0, 255]``), clipped to ``[0, 255]``,
        as a float32 NumPy array. Compiled once (per image size on JAX)."""
        if self._stylize_fn is None:
            net = self.transform_net

            def stylize(x):
                return ops.clip(ops.cast(net(x, training=False), "float32"), 0.0, 255.0)

            self._stylize_fn = backend.function(
                stylize, models=[net], signature=[backend.Spec((None, None, None, 3))])
        return backend.numpy(self._stylize_fn(np.asarray(images, np.float32)))

    # -- losses --------------------------------------------------------------------------------
    def compute_losses(self, images, stylized=None, training: bool = False) -> dict:
        """Every weighted loss term for a batch of content ``images`` (float32 scalars);
        ``stylized``: the transform-net's output for them, if already computed."""
        images = ops.cast(images, "float32")
        with keras.name_scope("transform_net"):
            if stylized is None:
                stylized = self.transform_net(images, training=training)
            stylized = ops.cast(stylized, "float32")
        with keras.name_scope("vgg_content"):
            content = self.vgg(images, training=False)[self.content_layer]
        with keras.name_scope("vgg_transformed"):
            feats = self.vgg(stylized, training=False)
        with keras.name_scope("losses"):
            out = {"content_loss": self.content_weight
                   * L.content_loss(feats[self.content_layer], content)}
            terms = {f"style_loss_{n}": self.style_weight
                     * L.style_loss(L.gram_matrix(feats[n]), self.style_grams[n])
                     for n in self.style_layers}
            out["style_loss"] = sum(terms.values())
            out["tv_loss"] = self.tv_weight * L.tv_loss(stylized)
            out["loss"] = out["content_loss"] + out["style_loss"] + out["tv_loss"]
        return {"loss": out["loss"], "content_loss": out["content_loss"],
                "style_loss": out["style_loss"], "tv_loss": out["tv_loss"], **terms}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss hook: the total loss of :meth:`compute_losses` on ``x`` (photos).

        ``y_pred``: the stylized ``x`` (Keras' ``train_step`` passes ``model(x)``). With
        ``training=True`` (a training step) it also records every term for the logs, and
        the stream positions ``y`` (see :mod:`style_transfer.data`); otherwise it has no
        effect, so gradient probes may call it.
        """
        logs = self.compute_losses(x, stylized=y_pred, training=training)
        if not training:
            return logs["loss"]
        if self._steps_run is not None:
            self._steps_run.assign_add(1)
            nan = ops.where(ops.equal(self._steps_run, int(self.debug_nan_at_step)), float("nan"), 0.0)
            logs = {**logs, "content_loss": logs["content_loss"] + nan,
                    "loss": logs["loss"] + nan}
        for metric in self.loss_terms:
            metric.update_state(logs[metric.name])
        if y is not None:
            self._track_stream(y)
        # Replicas' gradients are summed: each contributes its share of the global mean,
        # as Keras' own losses do (a no-op on one device).
        return logs["loss"] / distribute.replicas()

    def _track_stream(self, stream):
        # Each image carries (the stream position after its global batch, the files its
        # global batch skipped): the same on every replica, whatever its slice.
        stream = ops.cast(stream, self.data_position.dtype)
        self.skipped_files.assign_add(stream[0, 1])
        self.data_position.assign(stream[0, 0])

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow: under a strategy Keras 3.15 learns input shapes by reducing the first
        # distributed batch with strategy.reduce, which fails for an (images, stream) tuple
        # under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388). This model and
        # its optimizer are built before fit, so there is nothing to learn.
        if self.optimizer is not None and self.optimizer.built and self.transform_net.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
