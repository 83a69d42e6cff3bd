"""Callbacks of the style pipeline: stylized probe photos, progress, checkpoints.

* :class:`StylizedProbes` logs what the transform-net currently makes of fixed
  photos, as a tbviz dashboard panel (and, opt-in, for the Images dashboard).
* :class:`TrainingProgress` is the progress bar: steps, losses, images/s, and
  the number of unreadable files skipped so far.
* :class:`NonFiniteLossGuard` stops training at the first NaN or Inf loss and
  says which term and which step.
* :class:`Checkpointing` saves a :class:`~style_transfer.checkpoints.TrainingState`
  every N steps and at each epoch end, after flushing the summaries, and never
  a non-finite state.

Example:
    >>> import numpy as np
    >>> from style_transfer.callbacks import StylizedProbes
    >>> photos = np.random.rand(2, 32, 32, 3).astype("float32") * 255
    >>> cb = StylizedProbes("runs/demo", photos, names=["a", "b"], every_n_steps=10)
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from tbviz.callbacks.base import VizCallback
from tbviz.core.checks import positive_int
from tbviz.summary import metadata, writers
from tbviz.summary.images import to_uint8
from tbviz.summary import events


def _numpy(images) -> np.ndarray:
    """A backend tensor or array of images as float32 NumPy."""
    return np.asarray(keras.ops.convert_to_numpy(images), np.float32)


def _count(obj, name) -> int:
    """``obj.name`` (a counter variable, or a number; 0 where there is none) as an int."""
    return int(keras.ops.convert_to_numpy(getattr(obj, name, 0)))


class StylizedProbes(VizCallback):
    """Log ``model.stylize(photos)`` as the tbviz panel ``tbviz/stylized/probes`` (one tile
    per photo, labelled by ``names``); with ``image_summary=True`` also as the image summary
    ``stylized/probes`` for the stock Images dashboard (a second copy of the same pixels, for
    a TensorBoard without tbviz; off by default, see the README's "A light run").

    The unstylized photos are logged once at train begin as ``stylized/originals``.
    The model must have a ``stylize(images)`` method (``StyleTransferModel`` has).

    A ``tbviz.DeconvnetCallback`` that looks at the stylized photos, after this one in the
    callback list and logging at the same steps, takes ``probe_images=this.stylized`` and
    ``probes_panel=this.panel_tag``: it cuts its input patches from this panel instead of
    storing the same pixels again, and the photos are stylized once per step.
    """

    tag = "stylized/probes"
    panel_tag = "tbviz/" + tag

    def __init__(self, log_dir, photos, names=None, every_n_epochs: int | None = 1,
                 every_n_steps: int | None = None, image_summary: bool = False):
        super().__init__(log_dir, every_n_epochs=every_n_epochs, every_n_steps=every_n_steps)
        self.image_summary = bool(image_summary)
        photos = np.asarray(photos)
        if photos.ndim == 3:
            photos = photos[None]
        if photos.ndim != 4 or photos.shape[-1] != 3 or photos.shape[0] == 0:
            raise ValueError(f"photos must be an (N, H, W, 3) RGB array in [0, 255], "
                             f"got shape {photos.shape}")
        if not (np.issubdtype(photos.dtype, np.integer) or np.issubdtype(photos.dtype, np.floating)):
            raise ValueError(f"photos must be numbers in [0, 255], got dtype {photos.dtype}")
        if not np.all(np.isfinite(photos)):
            raise ValueError("photos contain NaN or Inf values")
        lo, hi = float(photos.min()), float(photos.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"photos must be in [0, 255] (the style pipeline's range), got values "
                             f"in [{lo:g}, {hi:g}]")
        if hi <= 1.0 and photos.dtype != np.uint8:
            raise ValueError(f"photos look like [0, 1] images (largest value {hi:g}); the style "
                             "pipeline takes [0, 255]: multiply them by 255")
        self.photos = photos.astype(np.float32)
        self.names = (list(names) if names is not None
                      else [f"photo {i}" for i in range(len(photos))])
        if len(self.names) != len(self.photos):
            raise ValueError(f"{len(self.photos)} photos but {len(self.names)} names")
        self._latest = (None, None)

    def stylized(self, model) -> np.ndarray:
        """``model.stylize(photos)`` as float32: what this callback's panel shows at this
        step (before rounding to ``uint8``) when it has just logged it, computed once
        and shared; else computed now."""
        step, images = self._latest
        if model is self.model and images is not None and step == self.global_step:
            return images
        return _numpy(model.stylize(self.photos))

    def setup(self):
        self._latest = (None, None)  # (step, stylized photos) of the last log of this fit
        if not callable(getattr(self.model, "stylize", None)):
            raise ValueError(f"StylizedProbes needs a model with a stylize(images) method; "
                             f"{type(self.model).__name__} has none")
        with self.writer.as_default(step=self.global_step):
            events.image("stylized/originals", to_uint8(self.photos),
                             max_outputs=len(self.photos))

    def write(self, step, logs):
        tiles = [{"label": name, "index": i} for i, name in enumerate(self.names)]
        with self.writer.as_default(step=step):
            raw = _numpy(self.model.stylize(self.photos))
            self._latest = (step, raw)
            stylized = to_uint8(self.finite(self.tag, raw))
            if self.image_summary:
                events.image(self.tag, stylized, max_outputs=len(stylized))
            metadata.write_panel(self.panel_tag, metadata.STYLIZED,
                                 [metadata.encode_image(img) for img in stylized], tiles=tiles,
                                 description="The transform-net's output on fixed probe photos")


class TrainingProgress(keras.callbacks.Callback):
    """A progress bar per epoch: step, losses, images/s; reports skipped files.

    Use with ``fit(..., verbose=0)`` so Keras' own bar does not print too.
    """

    def __init__(self, batch_size: int, keys=("loss", "content_loss", "style_loss", "tv_loss"),
                 verbose: int = 1):
        super().__init__()
        self.batch_size = positive_int("batch_size", batch_size)
        self.keys = tuple(keys)
        self.verbose = verbose
        self._skipped = self._skipped_steps = 0

    def on_train_begin(self, logs=None):
        self._skipped = _count(self.model, "skipped_files")
        self._skipped_steps = _count(self.model, "skipped_steps")

    def on_epoch_begin(self, epoch, logs=None):
        steps = self.params.get("steps")
        epochs = self.params.get("epochs")
        if self.verbose:
            print(f"Epoch {epoch + 1}/{epochs}", flush=True)
        self.bar = keras.utils.Progbar(steps, verbose=self.verbose, stateful_metrics=["images/s"],
                                       unit_name="step")
        self._t0 = None

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        now = time.perf_counter()
        values = [(k, float(logs[k])) for k in self.keys if k in logs]
        if self._t0 is None:  # the first step includes tracing; time from its end
            self._t0, self._n0 = now, batch + 1
        elif now > self._t0:
            rate = (batch + 1 - self._n0) * self.batch_size / (now - self._t0)
            values.append(("images/s", rate))
        self.bar.update(batch + 1, values=values)

    def on_epoch_end(self, epoch, logs=None):
        skipped = _count(self.model, "skipped_files")
        if skipped > self._skipped and self.verbose:
            print(f"  skipped {skipped} unreadable image file(s) so far "
                  f"({skipped - self._skipped} this epoch); training goes on", flush=True)
        self._skipped = skipped
        steps = _count(self.model, "skipped_steps")
        if steps > self._skipped_steps and self.verbose:
            print(f"  {steps} step(s) so far had non-finite gradients (e.g. a blank image) and "
                  "were not applied", flush=True)
        self._skipped_steps = steps


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stop at the first step whose logs hold a NaN or Inf loss; :attr:`failure` says where.

    Put it first among the callbacks: those after it (e.g. :class:`Checkpointing`)
    see the failure at the same step. The logs are the replicas' reduced values,
    so under ``tf.distribute`` every worker stops at the same step.

    >>> import math
    >>> NonFiniteLossGuard.describe(7, {"loss": math.nan, "content_loss": math.nan,
    ...                                 "tv_loss": 1.0})
    'non-finite loss at step 7: content_loss = nan (also loss)'
    """

    def __init__(self):
        super().__init__()
        self.failure = None

    @staticmethod
    def describe(step, logs):
        """One line naming the step and the first non-finite loss term (parts before totals)."""
        terms = [k for k in logs if "loss" in k]
        terms.sort(key=lambda k: (k in ("loss", "style_loss"), k == "loss"))
        bad = [k for k in terms if not math.isfinite(float(np.asarray(logs[k]).reshape(-1)[0]))]
        if not bad:
            return None
        value = float(np.asarray(logs[bad[0]]).reshape(-1)[0])
        also = f" (also {', '.join(bad[1:])})" if bad[1:] else ""
        return f"non-finite loss at step {step}: {bad[0]} = {value}{also}"

    def on_train_begin(self, logs=None):
        self.failure = None

    def on_train_batch_end(self, batch, logs=None):
        if self.failure is None and logs:
            failure = self.describe(_count(self.model.optimizer, "iterations"), logs)
            if failure:
                self.failure = failure
                self.model.stop_training = True


class Checkpointing(keras.callbacks.Callback):
    """Save ``state`` (a ``TrainingState``) every ``every_n_steps`` steps and at epoch ends.

    Put it last among the callbacks: it flushes every summary writer before it
    saves, so whatever a checkpoint covers is on disk in the event files too
    (a run killed at any moment and resumed repeats at most the steps after the
    last checkpoint). ``first_epoch_offset`` is the number of steps of the first
    epoch already done before this ``fit`` (when resuming in the middle of an
    epoch). Nothing is saved once ``guard`` (a :class:`NonFiniteLossGuard`) has
    failed, nor when a weight is NaN or Inf (that sets :attr:`failure`): the last
    checkpoint on disk stays the last good one. Under ``tf.distribute`` every
    worker saves (the chief into the checkpoint folder, the others into a
    temporary one, see :class:`~style_transfer.checkpoints.TrainingState`).
    """

    def __init__(self, state, every_n_steps: int | None = None, first_epoch_offset: int = 0,
                 guard: NonFiniteLossGuard | None = None):
        super().__init__()
        self.state = state
        self.every_n_steps = positive_int("every_n_steps", every_n_steps, allow_none=True)
        self.first_epoch_offset = int(first_epoch_offset)
        self.guard = guard
        self.failure = None
        self._first_epoch = None

    def on_train_begin(self, logs=None):
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._offset = self.first_epoch_offset if epoch == self._first_epoch else 0
        self.state.epoch.assign(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.state.step_in_epoch.assign(self._offset + batch + 1)
        if self.every_n_steps and self.state.global_step % self.every_n_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self.state.epoch.assign(epoch + 1)
        self.state.step_in_epoch.assign(0)
        self._save()

    def _save(self):
        if self.failure or (self.guard is not None and self.guard.failure):
            return
        # On JAX the trained state reaches the model's variables when a callback reads its
        # model (Keras syncs it then), and the state reads those variables.
        _ = self.model
        if not self.state.weights_finite():
            self.failure = (f"a transform-net weight became NaN or Inf by step "
                            f"{self.state.global_step}")
            self.model.stop_training = True
            return
        writers.flush_all()  # first, so the logs on disk cover every saved step
        self.state.save()
