"""The training recipe of ``style-transfer train``, as functions with keyword parameters.

:func:`train` is the whole recipe, in the order a reader would do it by hand:

1. check everything a user can get wrong before anything is written (the folders
   to write, the content photos, the style image, the probe photos);
2. build the model, under the ``tf.distribute`` strategy if there is one
   (:func:`build_model`), and its checkpointed
   :class:`~style_transfer.checkpoints.TrainingState`;
3. create the run's folders, resume from the latest checkpoint if asked, and
   train the epochs that remain (:func:`fit`) with the guard, the progress bar,
   the tbviz callbacks (:func:`tbviz_callbacks`) and the checkpointing;
4. save the transform-net, or raise :class:`TrainingStopped` when a loss went
   non-finite (the last good checkpoint stays for ``resume=True``).

The command line (:mod:`style_transfer.cli`) parses and checks the options and
calls :func:`train` with them; the demo calls it directly. Each keyword is the
command-line option of the same name (``content_dir`` is ``--content-dir``),
which is what the error messages name.

The recipe is the same on every Keras backend (``KERAS_BACKEND=tensorflow``, ``jax`` or
``torch``): the data come from :mod:`style_transfer.data` (Pillow), Keras' own
``train_step`` takes the gradients, and the tbviz callbacks write the same dashboards.
``strategy`` (``tf.distribute``) is TensorFlow's; ``jit_compile`` is XLA on TensorFlow and
``torch.compile`` on PyTorch, and JAX always compiles its step.

Example (two steps at a tiny size, a few seconds)::

    >>> from style_transfer import data
    >>> from style_transfer.train import train
    >>> path = train(content_dir=data.asset_path("photos"), log_dir="runs/tiny",
    ...              style_image=data.asset_path("styles", "wave.jpg"), vgg_weights="random",
    ...              epochs=1, steps_per_epoch=2, batch_size=2, image_size=32, style_size=32,
    ...              content_layer="block1_conv1", style_layers=["block1_conv1"],
    ...              viz=False, verbose=0)
    content: 6 image file(s) in .../photos
    saved the transform-net to runs/tiny/transform_net.keras (global step 2)
    >>> path
    'runs/tiny/transform_net.keras'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys

import keras

from style_transfer import data, distribute
from style_transfer.callbacks import (Checkpointing, NonFiniteLossGuard, StylizedProbes,
                                      TrainingProgress)
from style_transfer.checkpoints import TrainingState
from style_transfer.defaults import (CONTENT_LAYER, CONTENT_WEIGHT, STYLE_LAYERS, STYLE_SIZE,
                                     STYLE_WEIGHT, TRANSFORM_PROBE_LAYERS, TV_WEIGHT,
                                     VGG_PROBE_LAYERS)
from style_transfer.folders import check_creatable, save_keras_atomically
from style_transfer.distribute import make_strategy  # noqa: F401 (the recipe's own name)
from style_transfer.model import SkipNonFinite, StyleTransferModel
from tbviz import backend
from tbviz.core.layers import check_layers
from tbviz.summary import writers


class TrainingStopped(RuntimeError):
    """A loss or a weight went non-finite: training stopped without saving the model."""


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)`` without importing TensorFlow where it is not
    Keras' backend: Keras seeds TensorFlow too wherever it is installed, importing it.

    >>> set_random_seed(0)
    """
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    sys.modules["tensorflow"] = None  # "import tensorflow" fails: Keras seeds the rest
    try:
        keras.utils.set_random_seed(seed)
    finally:
        del sys.modules["tensorflow"]


def build_model(style, *, vgg_weights="imagenet", vgg=None, content_layer=CONTENT_LAYER,
                style_layers=STYLE_LAYERS, content_weight=CONTENT_WEIGHT,
                style_weight=STYLE_WEIGHT, tv_weight=TV_WEIGHT, style_size=STYLE_SIZE,
                lr=1e-3, mixed_precision=False, jit_compile=False, seed=0,
                debug_nan_at_step=None) -> StyleTransferModel:
    """A compiled :class:`~style_transfer.model.StyleTransferModel` for the ``style`` array.

    Call it under the strategy's scope, if any. ``seed`` gives every run and
    every worker the same initial weights. ``mixed_precision`` sets Keras'
    global ``mixed_float16`` policy (:func:`train` restores the previous one).
    The optimizer is Adam, behind :class:`~style_transfer.model.SkipNonFinite` (or Keras'
    ``LossScaleOptimizer`` under mixed precision), so a step with non-finite gradients
    is skipped. ``jit_compile``: XLA on TensorFlow, ``torch.compile`` on PyTorch; JAX
    always compiles the step.

    >>> import numpy as np
    >>> model = build_model(np.zeros((16, 16, 3)), vgg_weights="random", lr=2e-3,
    ...                     content_layer="block1_conv1", style_layers=["block1_conv1"])
    >>> model.style_layers, round(float(model.optimizer.learning_rate), 6)
    (['block1_conv1'], 0.002)
    """
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    set_random_seed(seed)
    model = StyleTransferModel(
        style, vgg_weights=vgg_weights, content_layer=content_layer, style_layers=style_layers,
        content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
        style_size=style_size or None, vgg=vgg, debug_nan_at_step=debug_nan_at_step)
    if mixed_precision:
        # The perceptual losses are ~1e5..1e7, not ~1 like a classifier's, so their float16
        # gradients overflow unless scaled *down*: Keras' default initial scale (2**15)
        # would skip the first ~25 steps finding that out. The scale still adapts.
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(lr),
                                                        initial_scale=2.0**-8)
    else:
        optimizer = SkipNonFinite(keras.optimizers.Adam(lr))
    # JAX runs a step eagerly, op by op, unless it is compiled: that is never wanted.
    model.compile(optimizer=optimizer,
                  jit_compile=True if keras.backend.backend() == "jax" else bool(jit_compile))
    return model


def tbviz_callbacks(model, log_dir, photos, names, *, transform_layers=TRANSFORM_PROBE_LAYERS,
                    vgg_layers=VGG_PROBE_LAYERS, log_every=100, loss_every=10,
                    scan_files=None) -> list:
    """Every tbviz callback of the recipe, in one place.

    * ``tbviz.TensorBoardViz``: op graph of ``model.compute_losses`` (name scopes
      transform_net / vgg_content / vgg_transformed / losses; where tbviz can draw the
      backend's graph, else the part says so once and the rest runs), weight histograms
      (instance-norm scale and shift included), the losses in one chart, and
      deconvnet images of the transform-net's ``transform_layers`` for the probe photos;
    * ``tbviz.DeconvnetCallback`` on VGG19's ``vgg_layers`` seen through the stylized
      probe photos, so its projections evolve as the transform-net learns (its patches
      are cut from the Stylized panel, which holds those photos);
    * :class:`~style_transfer.callbacks.StylizedProbes`: the stylized photos.

    Images every ``log_every`` steps and every epoch, loss scalars every ``loss_every``.
    With ``scan_files`` (``--scan-dir`` / ``--scan-images``), each log step also scans
    them (:func:`tbviz.deconvnet.scan`): the transform-net's layers on the photos,
    VGG19's on their stylized outputs (run ``train``) and on the photos themselves,
    what VGG19 learned from the content images (run ``vgg_on_photos``).
    """
    import tbviz

    every = dict(every_n_epochs=1, every_n_steps=log_every)
    scan = {}
    if scan_files:
        photos_ds = data.scan_batches(scan_files, photos.shape[1])
        scan = dict(scan_data=photos_ds, scan_limit=len(scan_files))
    probes = StylizedProbes(log_dir, photos, names, **every)
    callbacks = [probes]
    transform = {"probe_images": photos, "layers": list(transform_layers),
                 "probe_model": lambda m: m.transform_net, **scan}
    callbacks.append(tbviz.TensorBoardViz(
        log_dir, **every, deconvnet=transform if transform_layers else False,
        graph={"graph_fn": model.compute_losses,
               "input_spec": backend.Spec((None, None, None, 3), "float32")},
        losses={"every_n_steps": loss_every}))
    if vgg_layers:
        stylized = {}
        if scan:  # the scanned photos as the current transform-net stylizes them
            stylized = dict(scan_data=lambda m: (m.stylize(b) for b in photos_ds),
                            scan_limit=scan["scan_limit"])
        # VGG19 looks at the stylized photos, which the Stylized panel already holds: the
        # patches are cut from it (README, "A light run").
        callbacks.append(tbviz.DeconvnetCallback(
            log_dir, probes.stylized, list(vgg_layers), probe_model=lambda m: m.vgg,
            probes_panel=probes.panel_tag, **stylized, **every))
        if scan:
            callbacks.append(tbviz.DeconvnetCallback(
                log_dir, layers=list(vgg_layers), probe_model=lambda m: m.vgg,
                run="vgg_on_photos", **scan, **every))
    return callbacks


#: Photos scanned by default when only --scan-dir is given.
SCAN_IMAGES = 256


def scan_files(content_dir, files, scan_dir=None, scan_images=None):
    """``(photos to scan, content files left for training)`` from --scan-dir/--scan-images:
    ``scan_dir``'s first ``scan_images`` photos, by default COCO's val2017/ beside a
    train2017/ ``content_dir``, else the last ``scan_images`` content files, held out."""
    if scan_dir is None and scan_images is None:
        return None, files
    n = scan_images or SCAN_IMAGES
    folder = scan_dir
    if folder is None:
        content = os.path.normpath(content_dir)
        val = os.path.join(os.path.dirname(content), "val2017")
        if os.path.basename(content) == "train2017" and os.path.isdir(val):
            folder = val
    if folder is None:
        if len(files) <= n:
            raise ValueError(f"--scan-images {n}: --content-dir has only {len(files)} photos, "
                             "and training needs some; scan fewer or give --scan-dir")
        return files[-n:], files[:-n]  # held out: training never sees them
    try:
        scan, _ = data.list_images(folder)
    except ValueError as e:
        raise ValueError(f"--scan-dir: {e}") from None
    return scan[:n], files


def epoch_phases(epochs: int, steps: int, epoch: int, done: int) -> list[tuple]:
    """The ``fit`` calls that train epochs ``epoch..epochs-1`` when ``done`` steps of
    ``epoch`` are already trained: ``[(first epoch, end epoch, steps per epoch, steps
    already done in the first)]``. A partial epoch is finished on its own first.

    >>> epoch_phases(epochs=3, steps=4, epoch=1, done=1)
    [(1, 2, 3, 1), (2, 3, 4, 0)]
    >>> epoch_phases(epochs=3, steps=4, epoch=0, done=4)  # saved after the epoch's last step
    [(1, 3, 4, 0)]
    """
    if done >= steps:
        epoch, done = epoch + 1, 0
    phases = []
    if 0 < done < steps and epoch < epochs:
        phases.append((epoch, epoch + 1, steps - done, done))
        epoch += 1
    if epoch < epochs:
        phases.append((epoch, epochs, steps, 0))
    return phases


def fit(model, files, *, state, callbacks, epochs, steps_per_epoch, batch_size, image_size,
        seed=0, strategy=None, checkpoint_every=500) -> str | None:
    """Train the epochs that remain after ``state``; returns why training stopped early,
    or ``None``.

    ``callbacks`` run between the non-finite guard (first, so they see its verdict
    at the same step) and the checkpointing (last, so every summary of a step is
    written and flushed before the step is saved).
    """
    phases = epoch_phases(epochs, steps_per_epoch, _int(state.epoch), _int(state.step_in_epoch))
    if not phases:
        print(f"nothing to do: {epochs} epoch(s) already trained", flush=True)
    guard = NonFiniteLossGuard()
    checkpointing = Checkpointing(state, every_n_steps=checkpoint_every, guard=guard)
    callbacks = [guard, *callbacks, checkpointing]
    for first, end, n_steps, offset in phases:
        checkpointing.first_epoch_offset = offset
        # Under a strategy every worker reads the same stream, and Keras gives each replica
        # its slice of every global batch.
        batches = data.training_batches(files, image_size, batch_size, seed=seed,
                                        start=_int(model.data_position))
        try:
            model.fit(batches, epochs=end, initial_epoch=first, steps_per_epoch=n_steps,
                      callbacks=callbacks, verbose=0, shuffle=False)
        finally:
            _close(batches)
        if guard.failure or checkpointing.failure:
            return guard.failure or checkpointing.failure
    return None


def _int(variable) -> int:
    return int(keras.ops.convert_to_numpy(variable))


def _close(generator):
    """Stop a data generator's threads (unless TensorFlow's prefetching still runs it:
    it stops when that ends)."""
    try:
        generator.close()
    except ValueError:  # "generator already executing"
        pass


@contextlib.contextmanager
def run_writer(log_dir, step: int, enabled: bool = True):
    """Hold the run's summary writer for the whole run (one event file per process,
    shared by every fit and callback), marked as a (re)start at ``step``."""
    if not enabled:
        yield
        return
    path = os.path.join(log_dir, "train")
    writers.mark_start(writers.acquire(path), step)
    try:
        yield
    finally:
        writers.release(path)


@contextlib.contextmanager
def _global_policy_restored():
    policy = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _read(option, read, *args, **kwargs):
    try:
        return read(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


def train(*, content_dir, style_image, log_dir, epochs=2, batch_size=4, image_size=256,
          lr=1e-3, steps_per_epoch=None, seed=0, strategy=None,
          vgg_weights="imagenet", vgg=None, content_layer=CONTENT_LAYER,
          style_layers=STYLE_LAYERS, content_weight=CONTENT_WEIGHT, style_weight=STYLE_WEIGHT,
          tv_weight=TV_WEIGHT, style_size=STYLE_SIZE, checkpoint_dir=None,
          checkpoint_every=500, resume=False, mixed_precision=False, jit_compile=False,
          viz=True, log_every=100, loss_every=10, probe_images=None, probe_size=None,
          transform_layers=TRANSFORM_PROBE_LAYERS, vgg_layers=VGG_PROBE_LAYERS, output=None,
          verbose=1, debug_nan_at_step=None, scan_dir=None, scan_images=None) -> str | None:
    """Train a transform-net for one style image; see the module docstring.

    Returns the path of the saved transform-net (``None`` on a worker that is
    not the chief). Raises ``ValueError`` for bad input, before anything is
    written, and :class:`TrainingStopped` when a loss went non-finite.

    ``strategy``: a ``tf.distribute`` strategy
    (:func:`~style_transfer.distribute.make_strategy`) or ``None``;
    ``batch_size`` is the global batch. ``vgg``: a ready loss network (else
    ``vgg_weights`` builds one). ``probe_images``: photo paths shown stylized and
    used for deconvnet images (default: the bundled photos), cropped to
    ``probe_size`` (default ``min(image_size, 256)``). ``viz=False``: no tbviz
    summaries. ``output``: default ``<log_dir>/transform_net.keras``;
    ``checkpoint_dir``: default ``<log_dir>/checkpoints``. ``scan_dir`` / ``scan_images``:
    photos scanned at every log step (see :func:`scan_files`).
    """
    with _global_policy_restored():  # mixed precision must not leak into what runs next
        # 1. Everything a user can get wrong, checked before anything is written.
        ckpt_dir = checkpoint_dir or os.path.join(log_dir, "checkpoints")
        output = output or os.path.join(log_dir, "transform_net.keras")
        if not resume and os.path.isfile(os.path.join(ckpt_dir, "checkpoint")):
            raise ValueError(f"{ckpt_dir} already holds checkpoints of a run; pass --resume to "
                             "continue it, or another --log-dir/--checkpoint-dir to start afresh")
        try:
            files, ignored = data.list_images(content_dir)
        except ValueError as e:
            raise ValueError(f"--content-dir: {e}; pass a folder of photos (e.g. COCO's "
                             "train2017/) or a glob such as 'photos/*.jpg'") from None
        scanned, files = scan_files(content_dir, files, scan_dir, scan_images)
        chief = backend.is_chief()
        replicas = strategy.num_replicas_in_sync if strategy else 1
        if batch_size % replicas:
            raise ValueError(f"--batch-size {batch_size} (the global batch) cannot be split "
                             f"evenly over {replicas} replicas; use a multiple of {replicas}")
        if strategy is not None:
            multiworker = distribute.is_multiworker(strategy)
            role = "" if not multiworker else (
                "; this is the chief, it writes the logs" if chief
                else "; not the chief: writes nothing into --log-dir")
            print(f"strategy {'multiworker' if multiworker else 'mirrored'}: {replicas} "
                  f"replica{'s' * (replicas != 1)}, global batch {batch_size} "
                  f"({batch_size // replicas} per replica){role}", flush=True)
        folders = (log_dir, ckpt_dir, os.path.dirname(os.path.abspath(output)))
        to_create = []
        if chief:  # other workers write nothing there
            for path, option in zip(folders, ("--log-dir", "--checkpoint-dir", "--output")):
                to_create += check_creatable(path, option)
        print(f"content: {len(files)} image file(s) in {content_dir}"
              + (f" ({ignored} other file(s) ignored)" if ignored else ""), flush=True)
        if scanned:
            print(f"scan: {len(scanned)} photo(s) from "
                  f"{os.path.dirname(scanned[0]) or '.'}, every log step", flush=True)
        try:
            data.check_readable(files)
        except ValueError as e:
            raise ValueError(f"--content-dir: {e}") from None
        style = _read("--style-image", data.read_image, style_image, max_size=style_size or None)
        photos, names = _read("--probe-images", data.load_probe_photos,
                              probe_images or data.bundled_photos(),
                              probe_size or min(image_size, 256))

        # 2. The model and its training state, under the strategy's scope.
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = build_model(
                style, vgg_weights=vgg_weights, vgg=vgg, content_layer=content_layer,
                style_layers=style_layers, content_weight=content_weight, style_weight=style_weight,
                tv_weight=tv_weight, style_size=style_size, lr=lr, mixed_precision=mixed_precision,
                jit_compile=jit_compile, seed=seed, debug_nan_at_step=debug_nan_at_step)
            state = TrainingState(model, ckpt_dir, chief=chief)
        if transform_layers:
            check_layers(model.transform_net, transform_layers)

        # 3. Create the run's folders; if it fails before its first step, remove them again.
        created = [p for p in dict.fromkeys(to_create) if not os.path.exists(p)]
        if chief:
            for path in folders:
                os.makedirs(path, exist_ok=True)
        first_step = None
        try:
            if resume and state.restore():
                print(f"resumed from {state.latest}: {state.describe()}", flush=True)
            elif resume:
                print(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch", flush=True)
            first_step = state.global_step
            callbacks = [TrainingProgress(batch_size, verbose=verbose)]
            if viz:
                callbacks += tbviz_callbacks(model, log_dir, photos, names,
                                             transform_layers=transform_layers,
                                             vgg_layers=vgg_layers, log_every=log_every,
                                             loss_every=loss_every, scan_files=scanned)
            with run_writer(log_dir, first_step + 1, enabled=viz and chief):
                failure = fit(model, files, state=state, callbacks=callbacks, epochs=epochs,
                              steps_per_epoch=steps_per_epoch or max(1, len(files) // batch_size),
                              batch_size=batch_size, image_size=image_size, seed=seed,
                              strategy=strategy, checkpoint_every=checkpoint_every)
        except BaseException:
            if first_step is None or state.global_step == first_step:
                for path in reversed(created):  # only folders this run made
                    shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            state.close()

        # 4. The transform-net, or why there is none.
        if failure:
            last = state.latest
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise TrainingStopped(f"{failure}; stopped without saving, {where}. Lower --lr or the "
                                  "loss weights, check the data, then --resume")
        if chief:
            save_keras_atomically(model.transform_net, output)
        skipped = _int(model.skipped_files)
        print((f"saved the transform-net to {output}" if chief else "worker done")
              + f" (global step {state.global_step}"
              + (f"; {skipped} unreadable image file(s) skipped" if skipped else "") + ")",
              flush=True)
        return output if chief else None
