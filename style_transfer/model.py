"""The trainable style-transfer model: transform-net + frozen VGG19 + perceptual losses.

``StyleTransferModel(style_image)`` is a ``keras.Model``:

* ``model(photos)`` / ``model.stylize(photos)``: the stylized photos, ``[0, 255]``,
* ``model.compute_losses(photos)``: ``{"loss", "content_loss", "style_loss", "tv_loss",
  "style_loss_<layer>"...}`` (float32, weighted; the per-layer terms add up to
  ``style_loss``), traced under the name scopes ``transform_net``, ``vgg_content``,
  ``vgg_transformed`` and ``losses`` so the op graph reads like Fig. 4 of the paper,
* ``model.compute_loss(x=photos)``: the total loss, so generic Keras tools and
  gradient probes work,
* ``model.fit(dataset)``: trains the transform-net only; the logs hold every loss.
  The dataset yields ``photos`` or ``(photos, stream_index)`` (see
  :mod:`style_transfer.data`), the latter keeps :attr:`data_position` and
  :attr:`skipped_files` up to date for resuming and reporting.

``model.transform_net`` is the Functional transform-net (what gets saved) and
``model.vgg`` the Functional VGG19 feature model (a deconvnet probe target).

Example:
    >>> import numpy as np, keras
    >>> from style_transfer.model import StyleTransferModel
    >>> style = np.random.rand(64, 64, 3).astype("float32") * 255
    >>> model = StyleTransferModel(style, vgg_weights="random")  # doctest: +SKIP
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))  # doctest: +SKIP
    >>> model.fit(np.random.rand(4, 32, 32, 3).astype("float32") * 255, epochs=1)  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from style_transfer import losses as L
from style_transfer.defaults import (CONTENT_LAYER, CONTENT_WEIGHT, STYLE_LAYERS, STYLE_SIZE,
                                     STYLE_WEIGHT, TV_WEIGHT)
from style_transfer.transform_net import build_transform_net
from style_transfer.vgg import build_vgg, check_layers
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
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    return tf.image.resize(image, new, method="area", antialias=True).numpy()


class StyleTransferModel(keras.Model):
    """Johnson et al.'s training setup for one style image; see the module docstring."""

    def __init__(self, style_image, vgg_weights: str = "imagenet",
                 content_layer: str = CONTENT_LAYER, style_layers=STYLE_LAYERS,
                 content_weight: float = CONTENT_WEIGHT, style_weight: float = STYLE_WEIGHT,
                 tv_weight: float = TV_WEIGHT, style_size: int | None = STYLE_SIZE,
                 transform_net: keras.Model | None = None, vgg: keras.Model | None = None,
                 name: str = "style_transfer", **kwargs):
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
        # Constants of the graph: the style never changes during a run.
        self.style_grams = {n: tf.constant(L.gram_matrix(feats[n])[0]) for n in self.style_layers}

        # Where the data stream stands (files consumed) and how many it skipped, and the
        # steps whose gradients were not finite and were therefore not applied. Every
        # replica computes the same value (from all-gathered indices), so under a
        # tf.distribute strategy the first replica's write stands for all.
        counter = dict(dtype=tf.int64, trainable=False,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.data_position = tf.Variable(0, name="data_position", **counter)
        self.skipped_files = tf.Variable(0, name="skipped_files", **counter)
        self.skipped_steps = tf.Variable(0, name="skipped_steps", **counter)
        #: Test hook (``style-transfer train --debug-nan-at-step N``): the content loss of
        #: global step N becomes NaN, as a diverging run's would.
        self.debug_nan_at_step = None
        self._stylize_fn = None

    # -- inference -----------------------------------------------------------------------------
    def call(self, images, training=False):
        return self.transform_net(images, training=training)

    def stylize(self, images):
        """Stylized ``images`` (``(N, H, W, 3)`` in ``[0, 255]``), clipped to ``[0, 255]``.

        Traced once for any batch and image size (no retracing per call).
        """
        if self._stylize_fn is None:
            @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
                         reduce_retracing=True)
            def stylize(x):
                y = self.transform_net(x, training=False)
                return tf.clip_by_value(tf.cast(y, tf.float32), 0.0, 255.0)

            self._stylize_fn = stylize
        return self._stylize_fn(tf.convert_to_tensor(images, tf.float32))

    # -- losses --------------------------------------------------------------------------------
    def compute_losses(self, images, training: bool = False) -> dict:
        """Every weighted loss term for a batch of content ``images`` (float32 scalars)."""
        images = tf.cast(images, tf.float32)
        with tf.name_scope("transform_net"):
            stylized = tf.cast(self.transform_net(images, training=training), tf.float32)
        with tf.name_scope("vgg_content"):
            content = self.vgg(images, training=False)[self.content_layer]
        with tf.name_scope("vgg_transformed"):
            feats = self.vgg(stylized, training=False)
        with tf.name_scope("losses"):
            out = {"content_loss": self.content_weight
                   * L.content_loss(feats[self.content_layer], content)}
            terms = {f"style_loss_{n}": self.style_weight
                     * L.style_loss(L.gram_matrix(feats[n]), self.style_grams[n])
                     for n in self.style_layers}
            out["style_loss"] = tf.add_n(list(terms.values()))
            out["tv_loss"] = self.tv_weight * L.tv_loss(stylized)
            out["loss"] = out["content_loss"] + out["style_loss"] + out["tv_loss"]
        return {"loss": out["loss"], "content_loss": out["content_loss"],
                "style_loss": out["style_loss"], "tv_loss": out["tv_loss"], **terms}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss hook: the total loss of :meth:`compute_losses` on ``x``."""
        return self.compute_losses(x, training=training)["loss"]

    # -- training ------------------------------------------------------------------------------
    def train_step(self, data):
        images, index, _ = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.transform_net.trainable_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logs = self.compute_losses(images, training=True)
            if self.debug_nan_at_step:
                logs = self._poison(logs, int(self.debug_nan_at_step))
            # Replicas' gradients are summed: each contributes its share of the global
            # mean, as Keras' own losses do (a no-op on one device).
            scaled = self.optimizer.scale_loss(logs["loss"] / replicas)
        grads = tape.gradient(scaled, variables)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            self.optimizer.apply(grads, variables)  # skips non-finite steps itself
        else:
            self._apply_if_finite(grads, variables)
        if index is not None:
            batch = tf.shape(index, out_type=tf.int64)[0]
            if replicas > 1:  # the global batch is what the stream position counts
                index, batch = self._global_batch_extent(index, batch, replicas)
            self._track_stream(index, batch)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 averages each log with strategy.reduce(..., axis=0) under this
            # strategy (tensorflow/tensorflow#72388), which needs an axis to reduce.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    @staticmethod
    def _global_batch_extent(index, batch, replicas):
        """The last stream index and the size of the global batch, from every replica's part.

        Each replica fills its own slot of a vector and an all-reduce sums them (an
        all-gather by all-reduce: ReplicaContext.all_gather fails under
        MultiWorkerMirroredStrategy in TF 2.21). float64 holds indices up to 2**53 exactly.
        """
        ctx = tf.distribute.get_replica_context()
        slot = tf.one_hot(ctx.replica_id_in_sync_group, replicas, dtype=tf.float64)
        mine = tf.stack([tf.cast(tf.reduce_max(index), tf.float64), tf.cast(batch, tf.float64)])
        both = ctx.all_reduce(tf.distribute.ReduceOp.SUM, slot[:, None] * mine[None, :])
        return (tf.cast(tf.reduce_max(both[:, 0]), tf.int64)[None],
                tf.cast(tf.reduce_sum(both[:, 1]), tf.int64))

    def _poison(self, logs, step):
        nan = tf.where(self.optimizer.iterations + 1 == step, float("nan"), 0.0)
        return {**logs, "content_loss": logs["content_loss"] + nan, "loss": logs["loss"] + nan}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras 3.15 learns input shapes by reducing the first distributed
        # batch with strategy.reduce, which fails for an (images, index) tuple under
        # MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388). This model and its
        # optimizer are built before fit, so there is nothing to learn.
        if self.optimizer is not None and self.optimizer.built and self.transform_net.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _apply_if_finite(self, grads, variables):
        # A flat image (all pixels equal) has zero variance at every instance norm,
        # and each of them then multiplies the gradient by 1/sqrt(epsilon): the
        # gradient overflows. Skip such a step, as a LossScaleOptimizer does, and
        # count it, rather than writing NaN into every weight.
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])

        def apply():
            self.optimizer.apply(grads, variables)
            return tf.constant(0, tf.int64)

        def skip():
            # The global step counts batches, applied or not, so step-triggered
            # logs and checkpoints keep their rhythm.
            self.optimizer.iterations.assign_add(1)
            return tf.constant(1, tf.int64)

        if not tf.distribute.has_strategy():
            self.skipped_steps.assign_add(tf.cond(finite, apply, skip))
            return
        # Under a strategy every replica must take the same branch (the update holds
        # collectives), so the replicas agree first; and a branch may only sync the
        # replicas where the strategy needs no merge_call, so elsewhere the choice is
        # made in cross-replica context (as Keras' LossScaleOptimizer does).
        ctx = tf.distribute.get_replica_context()
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
        finite = bad == 0.0
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            self.skipped_steps.assign_add(tf.cond(finite, apply, skip))
            return

        def cross_replica(strategy, grads, finite):
            def apply_all():
                strategy.extended.call_for_each_replica(self.optimizer.apply,
                                                        args=(grads, variables))
                return tf.constant(0, tf.int64)

            agreed = strategy.experimental_local_results(finite)[0]
            self.skipped_steps.assign_add(tf.cond(agreed, apply_all, skip))

        ctx.merge_call(cross_replica, args=(grads, finite))

    def test_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.compute_losses(images, training=False)

    def _track_stream(self, index, batch):
        # Batches are consecutive slices of the (filtered) file stream, so the files
        # consumed by this batch minus the images in it are the files it skipped.
        end = tf.reduce_max(tf.cast(index, tf.int64)) + 1
        self.skipped_files.assign_add(tf.maximum(end - self.data_position - batch, 0))
        self.data_position.assign(end)
