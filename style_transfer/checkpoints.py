"""Training state on disk: transform-net, optimizer (with the global step), epoch, data position.

One ``tf.train.Checkpoint`` holds everything ``--resume`` needs to continue
exactly where a run stopped: the transform-net's weights, the optimizer's
slots and ``iterations`` (the global step), the epoch and the step within it,
and the position in the data stream (files consumed, files skipped).

Writes are atomic: TensorFlow writes a checkpoint's shards under a temporary
name and renames them, and ``CheckpointManager`` then rewrites its small
``checkpoint`` index file atomically, so an interrupted save leaves the
previous checkpoint as the latest one, never a half-written one.

Under ``tf.distribute`` with several workers every worker restores from
``directory`` (a folder all of them can read) and every worker saves, as
Keras' own multi-worker checkpointing does, but only the chief saves into
``directory``: the others write into a temporary folder of their own that is
deleted when they finish (:meth:`TrainingState.close`).

Example:
    >>> import tempfile, numpy as np, keras
    >>> from style_transfer.model import StyleTransferModel
    >>> from style_transfer.checkpoints import TrainingState
    >>> model = StyleTransferModel(np.zeros((16, 16, 3)), vgg_weights="random")  # doctest: +SKIP
    >>> model.compile(optimizer=keras.optimizers.Adam())  # doctest: +SKIP
    >>> state = TrainingState(model, tempfile.mkdtemp())  # doctest: +SKIP
    >>> state.restore()  # nothing saved yet  # doctest: +SKIP
    False
    >>> state.save()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf


class TrainingState:
    """A ``tf.train.Checkpoint`` + ``CheckpointManager`` over a compiled StyleTransferModel.

    ``chief=False`` (another worker of a multi-worker job): restore from
    ``directory``, save into a temporary folder instead.
    """

    def __init__(self, model, directory, max_to_keep: int = 3, chief: bool = True):
        if getattr(model, "optimizer", None) is None:
            raise ValueError("compile the model before creating its TrainingState")
        self.model = model
        self.directory = os.fspath(directory)
        self.chief = chief
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        # Build the optimizer's slots now, so restoring fills them instead of
        # deferring (and a later build overwriting) the saved moments.
        model.optimizer.build(model.transform_net.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(
            transform_net=model.transform_net, optimizer=model.optimizer,
            epoch=self.epoch, step_in_epoch=self.step_in_epoch,
            data_position=model.data_position, skipped_files=model.skipped_files,
            skipped_steps=model.skipped_steps)
        self._scratch = None if chief else tempfile.mkdtemp(prefix="style_transfer_worker_")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.directory if chief else self._scratch,
            max_to_keep=max_to_keep if chief else 1)

    @property
    def global_step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    @property
    def latest(self) -> str | None:
        """The newest checkpoint in :attr:`directory` (``None`` if there is none)."""
        return tf.train.latest_checkpoint(self.directory)

    def weights_finite(self) -> bool:
        """Whether every transform-net weight is finite (a state worth saving)."""
        return all(bool(tf.reduce_all(tf.math.is_finite(v)))
                   for v in self.model.transform_net.weights if "float" in str(v.dtype))

    def save(self) -> str:
        """Write a checkpoint numbered by the global step; returns its path."""
        return self.manager.save(checkpoint_number=self.global_step)

    def restore(self) -> bool:
        """Load the latest checkpoint if there is one; ``True`` when something was restored."""
        latest = self.latest
        if latest is None:
            return False
        status = self.checkpoint.restore(latest)
        try:
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            status.expect_partial()  # no second complaint about it when it is collected
            raise ValueError(f"checkpoint {latest} does not fit this model ("
                             f"{str(e).strip().splitlines()[0][:200]}); resume with the options "
                             "the run was started with, or start afresh in another folder") from None
        return True

    def close(self) -> None:
        """Delete a non-chief worker's temporary checkpoints."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def describe(self) -> str:
        return (f"global step {self.global_step}, epoch {int(self.epoch.numpy()) + 1} "
                f"(step {int(self.step_in_epoch.numpy())} done), "
                f"{int(self.model.data_position.numpy())} files into the data stream")
