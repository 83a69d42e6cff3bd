"""Training state on disk: transform-net, optimizer (with the global step), epoch, data position.

A checkpoint holds everything ``--resume`` needs to continue exactly where a run
stopped: the transform-net's weights, the optimizer's slots and ``iterations`` (the
global step) and its count of skipped steps, the epoch and the step within it, and the
position in the data stream (files consumed, files skipped). VGG19 is not in it: it is
frozen, and rebuilt from its weights.

Two formats, one behaviour, chosen by the Keras backend:

* TensorFlow: a ``tf.train.Checkpoint`` kept by a ``CheckpointManager``
  (``ckpt-<step>.index`` / ``.data-*``): it saves and restores ``tf.distribute``
  variables on every worker of a multi-worker job;
* JAX and PyTorch: Keras' own weights format, ``ckpt-<step>.weights.h5``
  (``keras.saving.save_weights`` of the model, VGG19 left out), with the epoch and step
  in a small JSON index, ``checkpoint``.

Writes are atomic either way: a checkpoint is written under a temporary name and
renamed, then the ``checkpoint`` index naming the latest one is rewritten atomically, so
an interrupted save leaves the previous checkpoint as the latest one, never a
half-written one. The three latest are kept.

Under ``tf.distribute`` with several workers every worker restores from ``directory``
(a folder all of them can read) and every worker saves, as Keras' own multi-worker
checkpointing does, but only the chief saves into ``directory``: the others write into
a temporary folder of their own that is deleted when they finish
(:meth:`TrainingState.close`).

Example:
    >>> import tempfile, numpy as np, keras
    >>> from style_transfer.model import StyleTransferModel
    >>> from style_transfer.vgg import build_vgg
    >>> vgg = build_vgg("random", ["block1_conv1"], quiet=True)
    >>> model = StyleTransferModel(np.zeros((16, 16, 3)), vgg=vgg, content_layer="block1_conv1",
    ...                            style_layers=["block1_conv1"])
    >>> model.compile(optimizer=keras.optimizers.Adam())
    >>> state = TrainingState(model, tempfile.mkdtemp())
    >>> state.restore()  # nothing saved yet
    False
    >>> os.path.basename(state.save())
    'ckpt-0'
    >>> state.restore(), state.describe()
    (True, 'global step 0, epoch 1 (step 0 done), 0 files into the data stream')
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import numpy as np

#: The index file naming the checkpoints of a folder, newest last (both formats).
INDEX = "checkpoint"


class TrainingState:
    """A compiled StyleTransferModel's training state, saved to and restored from
    ``directory`` (see the module docstring).

    ``chief=False`` (another worker of a multi-worker job): restore from
    ``directory``, save into a temporary folder instead.
    """

    def __init__(self, model, directory, max_to_keep: int = 3, chief: bool = True):
        if getattr(model, "optimizer", None) is None:
            raise ValueError("compile the model before creating its TrainingState")
        self.model = model
        self.directory = os.fspath(directory)
        self.chief = chief
        self.epoch = keras.Variable(0, dtype="int", trainable=False, name="epoch")
        self.step_in_epoch = keras.Variable(0, dtype="int", trainable=False,
                                            name="step_in_epoch")
        # Build the optimizer's slots now, so restoring fills them instead of
        # deferring (and a later build overwriting) the saved moments.
        model.optimizer.build(model.transform_net.trainable_variables)
        self._scratch = None if chief else tempfile.mkdtemp(prefix="style_transfer_worker_")
        store = _TensorFlowStore if keras.backend.backend() == "tensorflow" else _KerasStore
        self._store = store(self, self.directory if chief else self._scratch,
                            max_to_keep if chief else 1)

    @property
    def global_step(self) -> int:
        return _int(self.model.optimizer.iterations)

    @property
    def latest(self) -> str | None:
        """The newest checkpoint in :attr:`directory` (``None`` if there is none), as a
        path without extension (``.../ckpt-500``)."""
        return self._store.latest(self.directory)

    def weights_finite(self) -> bool:
        """Whether every transform-net weight is finite (a state worth saving)."""
        return all(np.isfinite(keras.ops.convert_to_numpy(v)).all()
                   for v in self.model.transform_net.weights if "float" in str(v.dtype))

    def save(self) -> str:
        """Write a checkpoint numbered by the global step; returns its path."""
        return self._store.save(self.global_step)

    def restore(self) -> bool:
        """Load the latest checkpoint if there is one; ``True`` when something was restored."""
        latest = self.latest
        if latest is None:
            return False
        try:
            self._store.restore(latest)
        except ValueError as e:
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
        return (f"global step {self.global_step}, epoch {_int(self.epoch) + 1} "
                f"(step {_int(self.step_in_epoch)} done), "
                f"{_int(self.model.data_position)} files into the data stream")


def _int(variable) -> int:
    return int(keras.ops.convert_to_numpy(variable))


class _TensorFlowStore:
    """``tf.train.Checkpoint`` + ``CheckpointManager`` (TensorFlow is the backend)."""

    def __init__(self, state, directory, max_to_keep):
        import tensorflow as tf

        model = state.model
        self._checkpoint = tf.train.Checkpoint(
            transform_net=model.transform_net, optimizer=model.optimizer,
            epoch=state.epoch, step_in_epoch=state.step_in_epoch,
            data_position=model.data_position, skipped_files=model.skipped_files)
        self._manager = tf.train.CheckpointManager(self._checkpoint, directory,
                                                   max_to_keep=max_to_keep)

    def save(self, step):
        return self._manager.save(checkpoint_number=step)

    @staticmethod
    def latest(directory):
        import tensorflow as tf

        return tf.train.latest_checkpoint(directory)

    def restore(self, path):
        import tensorflow as tf

        status = self._checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            status.expect_partial()  # no second complaint about it when it is collected
            raise ValueError(str(e)) from None


class _KerasStore:
    """``ckpt-<step>.weights.h5`` files in Keras' weights format, and a JSON index."""

    def __init__(self, state, directory, max_to_keep):
        self._state, self._directory, self._keep = state, directory, max_to_keep

    def save(self, step):
        state, model = self._state, self._state.model
        name = f"ckpt-{step}"
        path = os.path.join(self._directory, name)
        tmp = os.path.join(self._directory, f".{name}.{os.getpid()}.tmp.weights.h5")
        try:
            keras.saving.save_weights(model, tmp, objects_to_skip=[model.vgg])
            os.replace(tmp, path + ".weights.h5")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        entries = [e for e in self._entries() if e["name"] != name]
        entries.append({"name": name, "epoch": _int(state.epoch),
                        "step_in_epoch": _int(state.step_in_epoch)})
        kept, dropped = entries[-self._keep:], entries[:-self._keep]
        index = os.path.join(self._directory, INDEX)
        with open(index + ".tmp", "w") as f:
            json.dump({"checkpoints": kept}, f, indent=1)
        os.replace(index + ".tmp", index)
        for entry in dropped:  # only once the index no longer names them
            try:
                os.remove(os.path.join(self._directory, entry["name"] + ".weights.h5"))
            except OSError:
                pass
        return path

    def latest(self, directory):
        names = [e["name"] for e in self._entries(directory)
                 if os.path.isfile(os.path.join(directory, e["name"] + ".weights.h5"))]
        return os.path.join(directory, names[-1]) if names else None

    def restore(self, path):
        directory, name = os.path.split(path)
        entry = next(e for e in self._entries(directory) if e["name"] == name)
        model = self._state.model
        keras.saving.load_weights(model, path + ".weights.h5", objects_to_skip=[model.vgg])
        self._state.epoch.assign(entry["epoch"])
        self._state.step_in_epoch.assign(entry["step_in_epoch"])

    def _entries(self, directory=None):
        path = os.path.join(directory or self._directory, INDEX)
        try:
            with open(path) as f:
                return json.load(f)["checkpoints"]
        except (OSError, ValueError, KeyError):
            return []
