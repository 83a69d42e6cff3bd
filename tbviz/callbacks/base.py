"""The shared skeleton of every tbviz callback: when to log, and where.

Subclasses implement :meth:`VizCallback.setup` (validate against the model,
trace probes; runs at train begin) and :meth:`VizCallback.write` (log at one
trigger). This class decides *when*: every ``every_n_epochs`` epochs and/or every
``every_n_steps`` optimizer steps, and *where*: the shared writer of
``<log_dir>/train`` (only on the chief under ``tf.distribute``).

Steps are the optimizer's global step (``model.optimizer.iterations``), so
curves continue at the right place after a resume and step- and epoch-triggered
summaries of one tag share one axis, which TensorBoard's step slider needs.
``every_n_steps`` counts training batches (one optimizer step each, unless a
loss-scale optimizer skips one); each summary is labelled with the optimizer's
step at the time.

Example:
    >>> import tensorflow as tf
    >>> from tbviz.callbacks.base import VizCallback
    >>> class LearningRate(VizCallback):
    ...     def write(self, step, logs):
    ...         with self.writer.as_default(step=step):
    ...             tf.summary.scalar("lr", float(self.model.optimizer.learning_rate))
    >>> cb = LearningRate("runs/lr", every_n_epochs=1)
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import tensorflow as tf

from tbviz.checks import positive_int
from tbviz.summary import writers

log = logging.getLogger("tbviz")


class VizCallback(keras.callbacks.Callback):
    """Base class: frequency handling, the shared run writer, chief-only writing."""

    #: Run sub-directory this callback writes to (``train`` like Keras).
    run = "train"

    def __init__(self, log_dir, every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 strict: bool = False):
        super().__init__()
        if log_dir is None or not os.fspath(log_dir):
            raise ValueError("log_dir must be a directory path, e.g. 'runs/my_run'")
        self.log_dir = os.fspath(log_dir)
        self.every_n_epochs = positive_int("every_n_epochs", every_n_epochs, allow_none=True)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps, allow_none=True)
        self.strict = strict
        self.writer = None
        self.chief = True
        self._held: list[str] = []
        self._last_step = None
        self._warned: set = set()  # keys already warned about, see warn_once()

    # -- hooks for subclasses ---------------------------------------------------------------
    def setup(self) -> None:
        """Validate against ``self.model`` and prepare probes. Runs at train begin."""

    def write(self, step: int, logs: dict | None) -> None:
        """Write this callback's summaries for global ``step``."""
        raise NotImplementedError

    def warn_once(self, key, message: str, *args) -> None:
        """Log ``message % args`` as a warning the first time ``key`` comes up, so a problem
        that lasts (NaN weights, say) is said once, not at every trigger."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def finite(self, tag: str, values) -> np.ndarray:
        """``values`` with NaN and Inf replaced by 0, so images of a diverged model still draw.

        When there were any, their count is logged as the scalar ``nonfinite/<tag>``
        (call it inside ``self.writer.as_default(step=...)``) and a warning says so,
        once per tag and callback.
        """
        arr = np.asarray(values)
        if arr.dtype.kind != "f":
            return arr
        bad = ~np.isfinite(arr)
        n = int(bad.sum())
        if not n:
            return arr
        self.warn_once(("nonfinite", tag), "tbviz.%s: %s has %d NaN or Inf values (non-finite "
                       "weights?); they are drawn as 0, count under nonfinite/%s",
                       type(self).__name__, tag, n, tag)
        tf.summary.scalar(f"nonfinite/{tag}", n)
        return np.where(bad, 0, arr)

    # -- writers --------------------------------------------------------------------------------
    def writer_for(self, run: str):
        """The shared writer of ``<log_dir>/<run>``, held until train end."""
        path = os.path.join(self.log_dir, run)
        self._held.append(path)
        return writers.acquire(path, chief=self.chief)

    def _release(self):
        if self.chief:
            for path in self._held:
                writers.release(path)
        self._held = []
        self.writer = None

    # -- Keras callback protocol ----------------------------------------------------------------
    @property
    def global_step(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        if opt is None or getattr(opt, "iterations", None) is None:
            return 0
        return int(opt.iterations.numpy())

    def on_train_begin(self, logs=None):
        self.chief = writers.is_chief(getattr(self.model, "distribute_strategy", None))
        fresh = []  # folders this call creates: removed again if setup() fails
        if self.chief:
            fresh = [p for p in (self.log_dir, os.path.join(self.log_dir, self.run))
                     if not os.path.exists(p)]
            writers.check_writable(self.log_dir)
        self._release()
        self.writer = self.writer_for(self.run)
        # Batches trained so far; the optimizer's count at start (a resumed run continues).
        self._batches = self._epoch_start = self.global_step
        try:
            self.setup()
        except Exception:
            self._release()
            writers.remove_unused(fresh)
            raise

    def _trigger(self, logs):
        step = self.global_step
        if step == self._last_step:  # an epoch end right after a step trigger: same state
            return
        self._last_step = step
        self.write(step, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._batches

    def on_train_batch_end(self, batch, logs=None):
        # Counted from Keras' batch index, not read from the optimizer each batch (a device
        # read per step); the step a trigger is labelled with is read then. Keras reports
        # the last batch of a multi-step execution, hence "crossed a multiple of n".
        before, self._batches = self._batches, self._epoch_start + batch + 1
        n = self.every_n_steps
        if n and self.writer is not None and self._batches // n > before // n:
            self._trigger(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and self.writer is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._trigger(logs)
        writers.flush_all()

    def on_train_end(self, logs=None):
        self._release()
