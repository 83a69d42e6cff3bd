"""The shared skeleton of every tbviz callback: when to log, where, and never ending ``fit``.

Subclasses implement three hooks, run by this class at the right moments:

* :meth:`VizCallback.check` (train begin): validate the user's arguments against
  the model. Its errors are the user's to fix, so they end ``fit`` at once, before
  any training step, with a message naming the choices.
* :meth:`VizCallback.setup` (train begin, after ``check``): prepare (trace probes).
* :meth:`VizCallback.write` (at each trigger): compute and log.

A guest is never the first to call a model: where Keras has not built the model at
train begin (a subclassed model never called, on TensorFlow; Keras builds it at the
first training step, in training mode), ``check`` and ``setup`` wait for the end of
the first training batch and then cover every layer and weight. Errors in the
arguments then end ``fit`` after that one step.

A second ``fit`` with the same callback runs ``check`` and ``setup`` again, and they
find their traces where the first one left them (cached per model, keyed by its
layers and weights, :func:`tbviz.core.layers.structure`): only what changed (a layer
frozen, the model recompiled) is traced again.

This class decides *when*: every ``every_n_epochs`` epochs and/or every
``every_n_steps`` optimizer steps, and *where*: the shared writer of
``<log_dir>/train`` (only on the chief under ``tf.distribute``).

A guest in the training run: everything after ``check`` runs behind one guard,
:meth:`VizCallback.guard`. An exception there (a trace that fails, an op without a
gradient, out of memory in a probe, a log directory that disappeared) never ends
``fit``: the part is switched off for the rest of the run (or only the layer or
method it was working on, where a subclass guards those one by one), one warning
names the part, the layer, the cause and what to do, and the text summary
``tbviz/errors`` says the same in TensorBoard. ``strict=True`` re-raises instead.
The advice goes by cause: an error that the model raises by itself (``model(x,
training=False)`` on the part's inputs, without tbviz) is said to be the model's.
Lasting problems that switch nothing off (a weight without gradient, a part with
nothing to show) are *notices* (:meth:`VizCallback.notice`): warned once, and listed in
the same ``tbviz/errors``. There is one such list per run folder, shared by every part
writing there, rewritten in full at every step it changes, so its last event lists
everything that is off and every notice of the run.
Each part's time per log is written as the scalar ``tbviz/cost/<part>`` (seconds;
``tbviz/cost/<part>_setup`` once at train begin), so users see what logging costs.

Steps are the optimizer's global step (``model.optimizer.iterations``), so
curves continue at the right place after a resume and step- and epoch-triggered
summaries of one tag share one axis, which TensorBoard's step slider needs.
``every_n_steps`` counts training batches (one optimizer step each, unless a
loss-scale optimizer skips one); each summary is labelled with the optimizer's
step at the time.

Example:
    >>> from tbviz.callbacks.base import VizCallback
    >>> from tbviz.summary import events
    >>> class LearningRate(VizCallback):
    ...     def write(self, step, logs):
    ...         with self.writer.as_default(step=step):
    ...             events.scalar("lr", float(self.model.optimizer.learning_rate))
    >>> cb = LearningRate("runs/lr", every_n_epochs=1)
    >>> cb.part
    'learning_rate'
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time

import keras
import numpy as np

from tbviz import backend
from tbviz.core.checks import positive_int
from tbviz.core.layers import call_model, input_shapes, is_built, layer_paths
from tbviz.summary import writers
from tbviz.summary import events

log = logging.getLogger("tbviz")

#: The ``tbviz/errors`` list of each run folder (absolute path): ``{(owner, key): line}`` in
#: order of arrival, from every part writing to that run (and TensorBoardViz's notices), and
#: the text last written there. Keyed by folder, not by writer: a part that fails at setup
#: may close the writer before the next part opens a new one on the same folder.
_ERRORS: dict = {}


def _fits_inputs(model, x) -> bool:
    """Whether ``x`` has the shape ``model`` was built for (free dimensions match anything):
    then an error of ``model(x)`` is the model's, not a wrong argument of tbviz's."""
    try:
        (shape,) = input_shapes(model)
    except ValueError:
        return False
    got = np.shape(x)
    return np.asarray(x).dtype.kind in "fiub" and len(got) == len(shape) and all(d is None or d == g
                                          for d, g in zip(shape[1:], got[1:]))


def part_name(cls) -> str:
    """``"DeconvnetCallback"`` -> ``"deconvnet"``, ``"FeatureMapsCallback"`` -> ``"feature_maps"``.

    >>> part_name(type("HistogramCallback", (), {}))
    'histogram'
    """
    name = cls.__name__.removesuffix("Callback") or cls.__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def advice(err: BaseException, model_error: BaseException | None = None) -> str:
    """What a user can do about ``err`` (one sentence), by the kind of failure.
    ``model_error``: what the model raised when called alone on the same inputs (the
    error is then the model's own).

    >>> advice(MemoryError())
    'lower max_batch or pass fewer probe images'
    >>> advice(TypeError("bad"), model_error=TypeError("bad")).split(" (")[0]
    'the model raises this by itself'
    """
    text = str(err)
    if model_error is not None:
        return (f"the model raises this by itself (model(x, training=False) on the same inputs, "
                f"without tbviz, fails with {_cause(model_error)}): it is the model's to fix, "
                "and predict() and evaluate() fail the same way")
    if backend.is_out_of_memory(err) or "OOM" in text:
        return "lower max_batch or pass fewer probe images"
    if isinstance(err, LookupError) or "gradient" in text.lower():
        return ("an op in the model's inference pass has no gradient, so nothing can be "
                "differentiated through it: where the part takes layers, choose ones before it")
    if backend.is_file_error(err):
        return ("the log directory cannot be written any more (deleted, full or read-only?); "
                "the next run logs again once it can")
    return "pass strict=True to raise it with its traceback, and report it with the model summary"


def _cause(err: BaseException) -> str:
    """``"Type: message"`` in one line; for an error raised while tracing, the original one
    (TensorFlow puts it last, under the user-code traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    cause = named[-1] if named else f"{type(err).__name__}: {lines[0] if lines else '?'}"
    return cause.split(". ")[0].rstrip(".")  # the first sentence; the rest is TF's essay


def failing_layer(err: BaseException, model) -> str | None:
    """The path of the model's layer named in ``err`` (a TensorFlow op name or a Keras
    "when calling" note), or ``None``; the deepest one when several are named."""
    text = str(err)
    found = None
    for path in layer_paths(model) if model is not None else []:
        name = re.escape(path.rsplit("/", 1)[-1])
        # Keras opens a layer's name scope as "name" or "name_<n>" (see tbviz.core.graphs).
        if re.search(rf"(^|[/'\" ]){name}(_\d+)?(/|'|\"|\.call)", text):
            found = path
    return found

class VizCallback(keras.callbacks.Callback):
    """Base class: frequency handling, the shared run writer, chief-only writing, the guard.

    ``strict=True``: an exception in this part re-raises (ending ``fit``) instead of
    switching the part off; tests and debugging want it.
    """

    #: Run sub-directory this callback writes to (``train`` like Keras).
    run = "train"

    def __init__(self, log_dir, every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 strict: bool = False):
        super().__init__()
        if log_dir is None or not os.fspath(log_dir):
            raise ValueError("log_dir must be a directory path, e.g. 'runs/my_run'")
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}")
        self.log_dir = os.fspath(log_dir)
        self.every_n_epochs = positive_int("every_n_epochs", every_n_epochs, allow_none=True)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps, allow_none=True)
        self.strict = strict
        self.writer = None
        self.chief = True
        self._held: list[str] = []
        self._last_step = None
        self._warned: set = set()  # keys already warned about, see warn_once()
        self.failed: dict = {}  # what is switched off for this run -> its warning
        self._deferred = False  # check() and setup() wait for the first training batch
        self.ready = False  # setup has run in this fit (or failed: then the part is off)
        self._errors_path = None
        self._model_error = None  # what the model raises alone, once asked (see guard)

    @property
    def part(self) -> str:
        """This part's name in warnings, ``tbviz/errors`` and ``tbviz/cost/<part>``."""
        return part_name(type(self))

    # -- hooks for subclasses ---------------------------------------------------------------
    def check(self) -> None:
        """Validate the user's arguments against ``self.model`` (raise ``ValueError`` naming
        the choices). Runs at train begin, unguarded: these errors end ``fit`` at once."""

    def setup(self) -> None:
        """Prepare probes (trace them). Runs at train begin after :meth:`check`, guarded."""

    def write(self, step: int, logs: dict | None) -> None:
        """Write this callback's summaries for global ``step``."""
        raise NotImplementedError

    def own_inputs(self):
        """The inputs this part runs the model on (its probe images), or ``None``: the guard
        calls the model alone on them to tell the model's own errors from tbviz's."""
        x = getattr(self, "probe_images", None)
        return x if isinstance(x, np.ndarray) else None

    def warn_once(self, key, message: str, *args) -> None:
        """Log ``message % args`` as a warning the first time ``key`` comes up, so a problem
        that lasts (NaN weights, say) is said once, not at every trigger; it is a notice of
        the run's ``tbviz/errors`` too (:meth:`notice`)."""
        self.notice(key, message % args if args else message)

    def notice(self, key, message: str) -> None:
        """Say ``message`` once per fit (a warning) and list it in ``tbviz/errors``: a lasting
        problem that switches nothing off, or a part that has nothing to show."""
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("%s", message)
        self._add_error(("notice", key), message)

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
        events.scalar(f"nonfinite/{tag}", n)
        return np.where(bad, 0, arr)

    # -- the guard ------------------------------------------------------------------------------
    def live(self, items) -> list:
        """``items`` (layers, methods) not switched off by an earlier failure."""
        return [i for i in items if i not in self.failed]

    @contextlib.contextmanager
    def guard(self, stage: str, item=None, layer: str | None = None):
        """Run the block; an exception switches off ``item`` (a method, a layer, a
        ``(kind, layer)`` pair: only that one, see :meth:`live`) or, without ``item``, this
        whole part, and is said once in a warning and in ``tbviz/errors`` instead of ending
        ``fit``; ``layer`` is the layer the block works on, when it is known. ``strict``:
        re-raise.
        """
        try:
            yield
        except Exception as err:  # noqa: BLE001 - a guest never ends the run; strict re-raises
            if self.strict:
                raise
            try:
                layer = layer or failing_layer(err, self.model)
            except Exception:  # noqa: BLE001 - naming the layer is a courtesy, never a new error
                layer = None
            self._switch_off(stage, item, layer, err)

    def _model_raises(self, err):
        """What the model raises when called alone on this part's inputs, or ``None`` (it
        runs, or there is nothing to call it on). Asked once per fit, only after a failure,
        and never for out-of-memory or file errors (those are no model's)."""
        if (backend.is_out_of_memory(err) or backend.is_file_error(err) or self.model is None
                or not is_built(self.model)):  # (a guest is never first to call a model)
            return None
        if self._model_error is None:
            self._model_error = False
            x = self.own_inputs()
            try:
                if x is not None and _fits_inputs(self.model, x):
                    call_model(self.model, x)
            except Exception as own:  # noqa: BLE001 - that is the answer
                self._model_error = own
        return self._model_error or None

    def _switch_off(self, stage, item, layer, err, own=None):
        where = f"layer {layer!r}" if layer else "the model"
        what = ("this part" if item is None else repr(item) if isinstance(item, str)
                else repr(" ".join(map(str, item))))
        cause = _cause(err)
        if own is None:
            try:
                own = self._model_raises(err)
            except Exception:  # noqa: BLE001 - telling causes apart is a courtesy
                own = None
        message = (f"tbviz: {self.part} failed at {stage} on {where} ({cause}); {what} is off "
                   f"for the rest of this run, training goes on. What to do: "
                   f"{advice(err, own)}.")
        self.failed[item] = message
        log.warning("%s", message)
        self._add_error(("off", item), message)
        if item is None:
            with contextlib.suppress(Exception):  # the writer itself may be what failed
                self._release()

    # -- the run's tbviz/errors list --------------------------------------------------------------
    def _add_error(self, key, message):
        """Add ``message`` to this run's ``tbviz/errors`` list and write the list (chief only)."""
        if not self.chief or self._errors_path is None:
            return
        entry = _ERRORS.setdefault(self._errors_path, {"lines": {}, "written": ""})
        entry["lines"].setdefault((id(self), key), "* " + message)
        self.write_errors()

    def write_errors(self):
        """Write this run's ``tbviz/errors`` list where it changed since it was last written."""
        entry = _ERRORS.get(self._errors_path)
        writer = self.writer
        if entry is None or writer is None or not self.chief:
            return
        text = "\n".join(entry["lines"].values())
        if text == entry["written"]:
            return
        try:
            with writer.as_default(step=self._last_step or self.global_step):
                events.text("tbviz/errors", text or "(nothing is off in this fit)",
                            description="tbviz parts switched off in this run, and notices")
            writer.flush()
            entry["written"] = text
        except Exception:  # noqa: BLE001 - an unwritable run: the warning has said it
            pass

    def _forget_errors(self):
        """A new fit: this part's entries of the list go (they come back if they still hold)."""
        entry = _ERRORS.get(self._errors_path)
        if entry is not None:
            for key in [k for k in entry["lines"] if k[0] == id(self)]:
                del entry["lines"][key]

    def _cost(self, name, seconds, step):
        with self.writer.as_default(step=step):
            events.scalar(f"tbviz/cost/{name}", seconds,
                              description="seconds this tbviz part took (device time included)")

    # -- writers --------------------------------------------------------------------------------
    def writer_for(self, run: str):
        """The shared writer of ``<log_dir>/<run>``, held until train end."""
        path = os.path.join(self.log_dir, run)
        self._held.append(path)
        return writers.acquire(path, chief=self.chief)

    def _release(self):
        held, self._held, self.writer = self._held, [], None
        if self.chief:
            for path in held:
                writers.release(path)

    # -- Keras callback protocol ----------------------------------------------------------------
    @property
    def global_step(self) -> int:
        opt = getattr(self.model, "optimizer", None)
        if opt is None or getattr(opt, "iterations", None) is None:
            return 0
        return int(backend.numpy(opt.iterations))

    def on_train_begin(self, logs=None):
        self.begin(logs)

    def begin(self, logs=None, start_step: int | None = None):
        """Train begin: the writer, then ``check`` and ``setup`` (now, or after the first
        training batch where Keras has not built the model yet). ``start_step``: the
        optimizer's step when ``fit`` began, for a part that joins after the first batch
        (TensorBoardViz's parts that need the built model)."""
        self.chief = backend.is_chief(self.model)
        self._fresh = []  # folders this call creates: removed again if check() fails
        if self.chief:
            self._fresh = [p for p in (self.log_dir, os.path.join(self.log_dir, self.run))
                           if not os.path.exists(p)]
            writers.check_writable(self.log_dir)
        self._release()
        self.failed, self._last_step, self._warned = {}, None, set()
        self.ready, self._model_error = False, None
        self.writer = self.writer_for(self.run)
        self._errors_path = os.path.abspath(os.path.join(self.log_dir, self.run))
        self._forget_errors()
        # Batches trained so far; the optimizer's count at start (a resumed run continues).
        self._batches = self._epoch_start = (self.global_step if start_step is None
                                             else int(start_step))
        self._deferred = not is_built(self.model)
        if not self._deferred:
            self._check_and_setup()

    def _check_and_setup(self):
        self._deferred = False
        try:
            self.check()
        except Exception as err:
            # An argument error ends fit here; but the model failing on inputs it was built
            # for (its inference pass is broken: predict() fails too) is the model's, and a
            # guest does not end fit for it.
            own = None if self.strict else self._model_raises(err)
            if own is None:
                self._release()
                writers.remove_unused(self._fresh)
                raise
            self._switch_off("train begin", None, None, err, own)
            return
        with self.guard("setup"):
            start = time.perf_counter()
            self.ready = True
            self.setup()
            self._cost(f"{self.part}_setup", time.perf_counter() - start, self.global_step)
        self.write_errors()  # a fit that begins with fewer problems than the last one says so

    def _trigger(self, logs):
        if not self.ready:
            return
        step = self.global_step
        if step == self._last_step:  # an epoch end right after a step trigger: same state
            return
        self._last_step = step
        with self.guard(f"step {step}"):
            start = time.perf_counter()
            self.write(step, logs)
            if self.writer is not None:
                self._cost(self.part, time.perf_counter() - start, step)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._batches

    def setup_if_deferred(self):
        """After the first training batch: the deferred ``check`` and ``setup`` (see module
        doc). A subclass overriding ``on_train_batch_end`` calls it first."""
        if self._deferred and self.writer is not None:
            self._check_and_setup()

    def on_train_batch_end(self, batch, logs=None):
        self.setup_if_deferred()
        # Counted from Keras' batch index, not read from the optimizer each batch (a device
        # read per step); the step a trigger is labelled with is read then. Keras reports
        # the last batch of a multi-step execution, hence "crossed a multiple of n".
        before, self._batches = self._batches, self._epoch_start + batch + 1
        n = self.every_n_steps
        if n and self.writer is not None and self._batches // n > before // n:
            self._trigger(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.setup_if_deferred()  # an epoch of no batches: set up anyway
        if self.every_n_epochs and self.writer is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._trigger(logs)
        if self.writer is not None:
            with self.guard(f"epoch {epoch} end (flushing the logs)"):
                self.writer.flush()

    def on_train_end(self, logs=None):
        with self.guard("train end (closing the logs)"):
            self._release()
