"""``style-transfer`` / ``python -m style_transfer``: train, stylize, demo.

Examples::

    style-transfer train --content-dir coco/train2017 --style-image wave.jpg --log-dir runs/wave
    style-transfer train ... --resume                 # continue where the run stopped
    style-transfer stylize --model runs/wave/transform_net.keras photo1.jpg photos/ --output-dir out
    style-transfer demo --log-dir runs/demo           # bundled photos + painting, a few minutes
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

#: Transform-net layers whose deconvnet projections are logged by default.
TRANSFORM_PROBE_LAYERS = ("conv1", "conv3", "res5", "up2")
#: VGG19 layers (seen through the stylized output) logged by default.
VGG_PROBE_LAYERS = ("block1_conv1", "block3_conv1", "block5_conv1")

_DEMO_MARKER = ".style_transfer_demo"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (``style-transfer --help``)."""
    from style_transfer.defaults import (CONTENT_LAYER, CONTENT_WEIGHT, STYLE_LAYERS, STYLE_SIZE,
                                         STYLE_WEIGHT, TV_WEIGHT)

    parser = argparse.ArgumentParser(
        prog="style-transfer",
        description="Fast neural style transfer (Johnson et al. 2016), instrumented with tbviz.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a transform-net for one style image",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--content-dir", required=True,
                   help="folder (searched recursively, e.g. COCO train2017/) or glob of photos")
    t.add_argument("--style-image", required=True, help="the painting")
    t.add_argument("--log-dir", required=True, help="TensorBoard run directory")
    t.add_argument("--epochs", type=_positive, default=2)
    t.add_argument("--batch-size", type=_positive, default=4,
                   help="global batch: split evenly over the replicas of --strategy")
    t.add_argument("--image-size", type=_positive, default=256,
                   help="training crop size (a multiple of 4, at least 16)")
    t.add_argument("--lr", type=_positive_float, default=1e-3,
                   help="Adam learning rate (the same whatever the number of replicas)")
    t.add_argument("--strategy", choices=["none", "mirrored", "multiworker"], default="none",
                   help="tf.distribute: 'mirrored' trains on all GPUs of this machine, "
                        "'multiworker' on the machines listed in TF_CONFIG (see the README); "
                        "only the chief writes logs, checkpoints and the model")
    # Test hooks, not in --help: logical CPU devices to mirror over on machines without
    # GPUs, and a NaN forced into the content loss at a global step.
    t.add_argument("--cpu-replicas", type=_positive, default=None, help=argparse.SUPPRESS)
    t.add_argument("--debug-nan-at-step", type=_positive, default=None, help=argparse.SUPPRESS)
    t.add_argument("--content-weight", type=_nonnegative_float, default=CONTENT_WEIGHT)
    t.add_argument("--style-weight", type=_nonnegative_float, default=STYLE_WEIGHT)
    t.add_argument("--tv-weight", type=_nonnegative_float, default=TV_WEIGHT)
    t.add_argument("--content-layer", default=CONTENT_LAYER)
    t.add_argument("--style-layers", type=_csv, default=list(STYLE_LAYERS),
                   help="comma-separated VGG19 layers")
    t.add_argument("--style-size", type=int, default=STYLE_SIZE,
                   help="longest side of the style image for its Gram matrices (0: as is)")
    t.add_argument("--vgg-weights", default="imagenet",
                   help="'imagenet' (downloads once), a VGG19 notop .h5 file, or 'random'")
    t.add_argument("--steps-per-epoch", type=_positive, default=None,
                   help="default: number of images // batch size")
    t.add_argument("--checkpoint-dir", default=None, help="default: <log-dir>/checkpoints")
    t.add_argument("--checkpoint-every", type=_positive, default=500, help="steps")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--mixed-precision", action="store_true", help="mixed_float16 policy")
    t.add_argument("--jit-compile", action="store_true", help="XLA-compile the train step")
    t.add_argument("--log-every", type=_positive, default=100,
                   help="steps between histograms and images (also written every epoch)")
    t.add_argument("--loss-every", type=_positive, default=10, help="steps between loss scalars")
    t.add_argument("--probe-images", nargs="+", default=None,
                   help="photos shown stylized and used for deconvnet (default: bundled photos)")
    t.add_argument("--probe-size", type=_positive, default=None,
                   help="probe photo size (default: min(image size, 256))")
    t.add_argument("--transform-layers", type=_csv, default=list(TRANSFORM_PROBE_LAYERS),
                   help="transform-net layers for deconvnet images ('' for none)")
    t.add_argument("--vgg-layers", type=_csv, default=list(VGG_PROBE_LAYERS),
                   help="VGG19 layers for deconvnet images, seen through the stylized output")
    t.add_argument("--scan-dir", default=None,
                   help="photos whose every feature map's top 9 is shown at each log step "
                        "(Zeiler & Fergus Fig. 2; default with --scan-images: COCO's val2017/ "
                        "beside a train2017/ --content-dir, else the last N content photos, "
                        "then held out of training)")
    t.add_argument("--scan-images", type=_positive, default=None,
                   help="how many photos to scan (default 256 with --scan-dir)")
    t.add_argument("--no-viz", action="store_true", help="no tbviz summaries (losses still print)")
    t.add_argument("--output", default=None,
                   help="final transform-net .keras file (default: <log-dir>/transform_net.keras)")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights, the data order and the crops")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("stylize", help="stylize photos with a trained transform-net",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--model", required=True, help="transform-net .keras file from train")
    s.add_argument("inputs", nargs="+", help="image files or folders")
    s.add_argument("--output-dir", required=True)
    s.add_argument("--max-size", type=int, default=2048,
                   help="photos with a longer side are stylized downscaled, then scaled back "
                        "(bounds memory); 0: no limit")

    d = sub.add_parser("demo", help="train briefly on bundled photos and a painting, then stylize",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--log-dir", default="runs/demo")
    d.add_argument("--style", default="wave", choices=["wave", "udnie", "the_scream"])
    d.add_argument("--vgg-weights", default="imagenet",
                   help="'imagenet' (falls back to 'random' when unreachable), a .h5 file, "
                        "or 'random'")
    d.add_argument("--image-size", type=_positive, default=128)
    d.add_argument("--batch-size", type=_positive, default=2)
    d.add_argument("--epochs", type=_positive, default=3)
    d.add_argument("--steps-per-epoch", type=_positive, default=40)
    return parser


# -- train ------------------------------------------------------------------------------------
def tbviz_callbacks(args, model, photos, names, scan_files=None) -> list:
    """Every tbviz callback of the train command, in one place.

    * ``tbviz.TensorBoardViz``: op graph of ``model.compute_losses`` (name scopes
      transform_net / vgg_content / vgg_transformed / losses), weight histograms
      (instance-norm scale and shift included), the losses in one chart, and
      deconvnet images of the transform-net's layers for the probe photos;
    * ``tbviz.DeconvnetCallback`` on VGG19 seen through the stylized probe photos,
      so its projections evolve as the transform-net learns;
    * :class:`~style_transfer.callbacks.StylizedProbes`: the stylized photos.

    With ``scan_files`` (``--scan-dir`` / ``--scan-images``), each log step also scans
    them (:func:`tbviz.deconvnet.scan`): the transform-net's layers on the photos,
    VGG19's on their stylized outputs (run ``train``) and on the photos themselves,
    what VGG19 learned from the content images (run ``vgg_on_photos``).
    """
    import tensorflow as tf

    import tbviz
    from style_transfer.callbacks import StylizedProbes

    every = dict(every_n_epochs=1, every_n_steps=args.log_every)
    scan = {}
    if scan_files:
        from style_transfer import data

        photos_ds = data.scan_dataset(scan_files, photos.shape[1])
        scan = dict(scan_data=photos_ds, scan_limit=len(scan_files))
    callbacks = [StylizedProbes(args.log_dir, photos, names, **every)]
    transform = {"probe_images": photos, "layers": list(args.transform_layers),
                 "probe_model": lambda m: m.transform_net, **scan}
    callbacks.append(tbviz.TensorBoardViz(
        args.log_dir, **every, deconvnet=transform if args.transform_layers else False,
        graph={"graph_fn": model.compute_losses,
               "input_spec": tf.TensorSpec([None, None, None, 3], tf.float32)},
        losses={"every_n_steps": args.loss_every}))
    if args.vgg_layers:
        stylized = {}
        if scan:  # the scanned photos as the current transform-net stylizes them
            stylized = dict(scan_data=lambda m: (m.stylize(b).numpy() for b in photos_ds),
                            scan_limit=scan["scan_limit"])
        callbacks.append(tbviz.DeconvnetCallback(
            args.log_dir, lambda m: m.stylize(photos), list(args.vgg_layers),
            probe_model=lambda m: m.vgg, **stylized, **every))
        if scan:
            callbacks.append(tbviz.DeconvnetCallback(
                args.log_dir, layers=list(args.vgg_layers), probe_model=lambda m: m.vgg,
                run="vgg_on_photos", **scan, **every))
    return callbacks


#: Photos scanned by default when only --scan-dir is given.
SCAN_IMAGES = 256


def _scan_files(args, files):
    """``(photos to scan, content files left for training)`` from --scan-dir/--scan-images."""
    from style_transfer import data

    if args.scan_dir is None and args.scan_images is None:
        return None, files
    n = args.scan_images or SCAN_IMAGES
    folder = args.scan_dir
    if folder is None:
        content = os.path.normpath(args.content_dir)
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


def _probe_photos(args):
    from style_transfer import data

    size = args.probe_size or min(args.image_size, 256)
    paths = args.probe_images or data.bundled_photos()
    return data.load_probe_photos(paths, size)


def _save_keras_atomically(net, path: str) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    try:
        net.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_creatable(path: str, option: str) -> list[str]:
    """Raise ``ValueError`` unless directory ``path`` exists writable or could be created.

    Creates nothing (an early error must leave nothing behind); returns the
    directories that creating ``path`` would make, outermost first.

    >>> check_creatable("/proc/no/such/dir", "--log-dir")
    Traceback (most recent call last):
    ...
    ValueError: --log-dir '/proc/no/such/dir': cannot create it in '/proc' (not writable); pass a folder you can write to
    """
    missing, head = [], os.path.abspath(path)
    while not os.path.exists(head):
        missing.insert(0, head)
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        where = head if not missing else f"inside {head!r}"
        raise ValueError(f"{option} {path!r}: {where} is a file, not a folder; pass a folder path")
    probe = None
    try:  # os.access says yes to root even on read-only mounts: try it for real
        fd, probe = tempfile.mkstemp(prefix=".style_transfer_write_test_", dir=head)
        os.close(fd)
    except OSError:
        place = f"cannot create it in {head!r}" if missing else "the folder is"
        raise ValueError(f"{option} {path!r}: {place} (not writable); pass a folder you can "
                         "write to") from None
    finally:
        if probe:
            os.remove(probe)
    return missing


def _check_train_args(args) -> None:
    """Every check of the train options that needs neither TensorFlow nor the disk."""
    from style_transfer.vgg import all_layers, check_layers

    size = args.image_size
    if size % 4:
        raise ValueError(f"--image-size {size} is not a multiple of 4 (the transform-net halves "
                         f"the image twice); use {max(MIN_IMAGE_SIZE, size - size % 4)} or "
                         f"{size + 4 - size % 4}")
    for option, value in (("--image-size", size), ("--probe-size", args.probe_size)):
        if value is not None and value < MIN_IMAGE_SIZE:
            raise ValueError(f"{option} {value} is too small: VGG19's deepest layers need at "
                             f"least {MIN_IMAGE_SIZE} px; use {MIN_IMAGE_SIZE} or more "
                             "(the paper trains at 256)")
    loss_layers = check_layers([args.content_layer] + list(args.style_layers))
    names = all_layers()
    deepest = max(loss_layers, key=names.index)
    for layer in args.vgg_layers:
        check_layers([layer])
        if names.index(layer) > names.index(deepest):
            raise ValueError(
                f"--vgg-layers {layer!r}: the loss network stops at {deepest!r} (the deepest of "
                f"--content-layer and --style-layers); pick from "
                f"{', '.join(names[:names.index(deepest) + 1])}")
    if args.output is not None and not args.output.endswith(".keras"):
        raise ValueError(f"--output {args.output!r} must end in .keras (Keras' model format)")
    if args.output is not None and os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a folder; pass a file path ending in .keras")
    if args.cpu_replicas and args.strategy == "multiworker":
        raise ValueError("--cpu-replicas works with --strategy mirrored or none only")
    if args.strategy == "multiworker" and not os.environ.get("TF_CONFIG"):
        raise ValueError("--strategy multiworker reads the cluster from the TF_CONFIG environment "
                         "variable, which is not set; set it on every machine (see the README), "
                         "or use --strategy mirrored on one machine")


def make_strategy(name: str, cpu_replicas: int | None = None):
    """The ``tf.distribute`` strategy of ``--strategy`` (``None`` for ``"none"``).

    ``cpu_replicas`` (tests and benchmarks on machines without GPUs): split the
    CPU into that many logical devices first, and mirror over them. Must run
    before TensorFlow executes anything.
    """
    import tensorflow as tf

    devices = None
    if cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError:  # TensorFlow already started: fine if it has the devices
            pass
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        if len(devices) < cpu_replicas:
            raise ValueError(f"--cpu-replicas {cpu_replicas}: TensorFlow already started with "
                             f"{len(devices)} CPU device(s)")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def train(args, vgg=None) -> int:
    """The ``train`` command. Returns the process exit status."""
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return _train(args, vgg)
    finally:  # --mixed-precision must not leak into whatever runs next in this process
        keras.mixed_precision.set_global_policy(policy)


def _train(args, vgg=None) -> int:
    from style_transfer import data
    from tbviz.summary import writers

    # 1. Everything a user can get wrong, checked before anything is written.
    _check_train_args(args)
    ckpt_dir = args.checkpoint_dir or os.path.join(args.log_dir, "checkpoints")
    output = args.output or os.path.join(args.log_dir, "transform_net.keras")
    if not args.resume and _has_checkpoint(ckpt_dir):
        raise ValueError(f"{ckpt_dir} already holds checkpoints of a run; pass --resume to "
                         "continue it, or another --log-dir/--checkpoint-dir to start afresh")
    try:
        files, ignored = data.list_images(args.content_dir)
    except ValueError as e:
        raise ValueError(f"--content-dir: {e}; pass a folder of photos (e.g. COCO's "
                         "train2017/) or a glob such as 'photos/*.jpg'") from None
    strategy = make_strategy(args.strategy, args.cpu_replicas)  # before any TensorFlow op
    chief = writers.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    if args.batch_size % replicas:
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) cannot be split "
                         f"evenly over {replicas} replicas; use a multiple of {replicas}")
    if strategy is not None:
        role = "" if args.strategy == "mirrored" else (
            "; this is the chief, it writes the logs" if chief
            else "; not the chief: writes nothing into --log-dir")
        print(f"strategy {args.strategy}: {replicas} replica{'s' * (replicas != 1)}, global "
              f"batch {args.batch_size} "
              f"({args.batch_size // replicas} per replica){role}", flush=True)
    to_create = []
    if chief:  # other workers write nothing there
        for path, option in ((args.log_dir, "--log-dir"), (ckpt_dir, "--checkpoint-dir"),
                             (os.path.dirname(os.path.abspath(output)), "--output")):
            to_create += check_creatable(path, option)
    scan_files, files = _scan_files(args, files)
    print(f"content: {len(files)} image file(s) in {args.content_dir}"
          + (f" ({ignored} other file(s) ignored)" if ignored else ""), flush=True)
    if scan_files:
        print(f"scan: {len(scan_files)} photo(s) from "
              f"{os.path.dirname(scan_files[0]) or '.'}, every log step", flush=True)
    try:
        data.check_readable(files)
    except ValueError as e:
        raise ValueError(f"--content-dir: {e}") from None
    style = _read("--style-image", data.read_image, args.style_image,
                  max_size=args.style_size or None)
    photos, names = _read("--probe-images", _probe_photos, args)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model, state = _build(args, style, ckpt_dir, chief, vgg)
    if args.transform_layers:
        from tbviz.layers import check_layers

        check_layers(model.transform_net, args.transform_layers)

    # 2. Create the run's folders; if it fails before its first step, remove them again.
    created = [p for p in dict.fromkeys(to_create) if not os.path.exists(p)]
    for path in (args.log_dir, ckpt_dir, os.path.dirname(os.path.abspath(output))):
        if chief:
            os.makedirs(path, exist_ok=True)
    first_step = None
    try:
        if args.resume and state.restore():
            print(f"resumed from {state.latest}: {state.describe()}", flush=True)
        elif args.resume:
            print(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch", flush=True)
        first_step = state.global_step
        with _run_writer(args, chief, first_step + 1):
            failure = _fit(args, model, state, files, photos, names, strategy, scan_files)
    except BaseException:
        if first_step is None or state.global_step == first_step:
            for path in reversed(created):  # only folders this run made
                shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        state.close()
    if failure:
        last = state.latest
        where = (f"the last good checkpoint is {last}" if last else "no checkpoint was written")
        print(f"style-transfer train: error: {failure}; stopped without saving, {where}. Lower "
              "--lr or the loss weights, check the data, then --resume", file=sys.stderr,
              flush=True)
        return 1
    if chief:
        _save_keras_atomically(model.transform_net, output)
    skipped = int(model.skipped_files.numpy())
    print((f"saved the transform-net to {output}" if chief else "worker done")
          + f" (global step {state.global_step}"
          + (f"; {skipped} unreadable image file(s) skipped" if skipped else "") + ")", flush=True)
    return 0


#: Smallest --image-size / --probe-size: VGG19's block5 sees a 16 px image as 1x1.
MIN_IMAGE_SIZE = 16


def _read(option, read, *args, **kwargs):
    try:
        return read(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None


def _has_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "checkpoint"))


def _build(args, style, ckpt_dir, chief, vgg):
    """The compiled model and its TrainingState (under the strategy's scope, if any)."""
    import keras

    from style_transfer.checkpoints import TrainingState
    from style_transfer.model import StyleTransferModel

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(args.seed)  # the same initial weights in every run and worker
    model = StyleTransferModel(
        style, vgg_weights=args.vgg_weights, content_layer=args.content_layer,
        style_layers=args.style_layers, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight,
        style_size=args.style_size or None, vgg=vgg)
    model.debug_nan_at_step = args.debug_nan_at_step
    optimizer = keras.optimizers.Adam(args.lr)
    if args.mixed_precision:
        # The perceptual losses are ~1e5..1e7, not ~1 like a classifier's, so their float16
        # gradients overflow unless scaled *down*: Keras' default initial scale (2**15)
        # would skip the first ~25 steps finding that out. The scale still adapts.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**-8)
    model.compile(optimizer=optimizer, jit_compile=bool(args.jit_compile))
    return model, TrainingState(model, ckpt_dir, chief=chief)


@contextlib.contextmanager
def _run_writer(args, chief, step):
    """Hold the run's summary writer for the whole command (one event file per process,
    shared by every fit and callback), marked as a (re)start at ``step``."""
    from tbviz.summary import writers

    if args.no_viz or not chief:
        yield
        return
    path = os.path.join(args.log_dir, "train")
    writers.mark_start(writers.acquire(path), step)
    try:
        yield
    finally:
        writers.release(path)


def _fit(args, model, state, files, photos, names, strategy, scan_files=None):
    """Train the epochs that remain; returns why training stopped early, or ``None``."""
    import tensorflow as tf

    from style_transfer import data
    from style_transfer.callbacks import (Checkpointing, NonFiniteLossGuard,
                                          TrainingProgress)

    steps = args.steps_per_epoch or max(1, len(files) // args.batch_size)
    epoch, done = int(state.epoch.numpy()), int(state.step_in_epoch.numpy())
    if done >= steps:  # saved after an epoch's last step, before its epoch-end save
        epoch, done = epoch + 1, 0
    phases = []  # (first epoch, end epoch, steps per epoch, steps already done in the first)
    if 0 < done < steps and epoch < args.epochs:
        phases.append((epoch, epoch + 1, steps - done, done))
        epoch += 1
    if epoch < args.epochs:
        phases.append((epoch, args.epochs, steps, 0))
    if not phases:
        print(f"nothing to do: {args.epochs} epoch(s) already trained", flush=True)

    guard = NonFiniteLossGuard()
    checkpointing = Checkpointing(state, every_n_steps=args.checkpoint_every, guard=guard)
    # The guard first, so the others see its verdict at the same step; checkpointing
    # last, so every summary of a step is written (and flushed) before it is saved.
    callbacks = [guard, TrainingProgress(args.batch_size, verbose=0 if args.quiet else 1)]
    if not args.no_viz:
        callbacks += tbviz_callbacks(args, model, photos, names, scan_files)
    callbacks.append(checkpointing)
    for first, end, n_steps, offset in phases:
        checkpointing.first_epoch_offset = offset
        ds = data.training_dataset(files, args.image_size, args.batch_size, seed=args.seed,
                                   start=int(model.data_position.numpy()))
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Each worker takes its share of every global batch of the one stream.
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = \
                tf.data.experimental.AutoShardPolicy.DATA
            ds = ds.with_options(options)
        model.fit(ds, epochs=end, initial_epoch=first, steps_per_epoch=n_steps,
                  callbacks=callbacks, verbose=0, shuffle=False)
        if guard.failure or checkpointing.failure:
            return guard.failure or checkpointing.failure
    return None


# -- stylize ----------------------------------------------------------------------------------
def _unique_path(directory: str, name: str, taken: set) -> str:
    stem, ext = os.path.splitext(name)
    path, k = os.path.join(directory, name), 2
    while path in taken:
        path, k = os.path.join(directory, f"{stem}_{k}{ext}"), k + 1
    taken.add(path)
    return path


def _save_image(array, path: str) -> None:
    from PIL import Image

    from tbviz.summary.images import to_uint8

    image = Image.fromarray(to_uint8(array))
    ext = os.path.splitext(path)[1].lower()
    options = {"quality": 95} if ext in (".jpg", ".jpeg") else {}
    try:
        image.save(path, **options)
    except (KeyError, ValueError, OSError):  # an extension Pillow cannot write: PNG instead
        image.save(os.path.splitext(path)[0] + ".png")


def stylize(args) -> int:
    """The ``stylize`` command. Returns 0 when every input was stylized, else 1."""
    import numpy as np
    import tensorflow as tf

    from style_transfer import data
    from style_transfer.transform_net import MIN_SIZE, load_transform_net

    if not os.path.isfile(args.model):
        raise ValueError(f"--model {args.model!r}: no such file (the .keras file train saved)")
    if args.max_size and args.max_size < MIN_SIZE:
        raise ValueError(f"--max-size must be 0 (no limit) or at least {MIN_SIZE}")
    created = check_creatable(args.output_dir, "--output-dir")
    inputs = []
    for item in args.inputs:
        if os.path.isdir(item):
            try:
                inputs += data.list_images(item)[0]
            except ValueError as e:  # a folder with no images: said, counted, not fatal
                print(f"skipped {item}: {e}", file=sys.stderr)
                inputs.append(None)
        elif os.path.isfile(item):
            inputs.append(item)
        else:
            print(f"skipped {item}: no such file or folder", file=sys.stderr)
            inputs.append(None)
    net = _read("--model", load_transform_net, args.model)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def run(x):
        return tf.clip_by_value(tf.cast(net(x, training=False), tf.float32), 0.0, 255.0)

    os.makedirs(args.output_dir, exist_ok=True)
    taken, failed, done = set(), 0, 0
    for path in inputs:
        if path is None:
            failed += 1
            continue
        try:
            image = data.read_image(path)
        except ValueError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        h, w = image.shape[:2]
        scale = 1.0
        if args.max_size and max(h, w) > args.max_size:
            scale = args.max_size / max(h, w)
        if min(h, w) * scale < MIN_SIZE:
            scale = MIN_SIZE / min(h, w)
        work = image
        if scale != 1.0:
            size = (max(MIN_SIZE, round(h * scale)), max(MIN_SIZE, round(w * scale)))
            print(f"{path}: {w}x{h} stylized at {size[1]}x{size[0]} (--max-size {args.max_size}),"
                  " then scaled back", flush=True)
            work = tf.image.resize(image, size, method="area" if scale < 1 else "bilinear",
                                   antialias=True).numpy()
        t0 = time.perf_counter()
        out = run(work[None])[0]
        if out.shape[:2] != (h, w):
            out = tf.image.resize(out, (h, w), method="bicubic")
        out = np.asarray(out)
        target = _unique_path(args.output_dir, os.path.basename(path), taken)
        _save_image(out, target)
        done += 1
        print(f"{path} -> {target} ({w}x{h}, {time.perf_counter() - t0:.2f} s)", flush=True)
    if not done:  # leave no empty output folder behind
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
    print(f"stylized {done} image(s)" + (f", {failed} failed" if failed else ""), flush=True)
    return 1 if failed else 0


# -- demo -------------------------------------------------------------------------------------
#: scikit-image's colour photographs, scanned by the demo beside the bundled photos.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
                  "hubble_deep_field")


def _demo_scan_photos(folder: str) -> str:
    """The demo's scan data: the bundled photos plus scikit-image's, where it is installed."""
    from PIL import Image

    from style_transfer import data

    os.makedirs(folder, exist_ok=True)
    for path in data.bundled_photos():
        shutil.copy(path, folder)
    try:
        import skimage.data
    except ImportError:
        return folder
    for name in SKIMAGE_PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 (a photo scikit-image would have to download)
            continue
        if image.ndim == 3 and image.shape[-1] == 3:
            Image.fromarray(image).save(os.path.join(folder, f"skimage_{name}.png"))
    return folder


def demo(args) -> int:
    """The ``demo`` command: train briefly on bundled images, stylize the photos, say what
    to open."""
    from style_transfer import data
    from style_transfer.vgg import RANDOM_WARNING, VGGWeightsUnavailable, build_vgg

    log_dir = args.log_dir
    if os.path.isdir(log_dir) and os.listdir(log_dir):
        if not os.path.exists(os.path.join(log_dir, _DEMO_MARKER)):
            raise ValueError(f"{log_dir} exists and is not a previous demo run; pass another "
                             "--log-dir")
        shutil.rmtree(log_dir)  # a previous demo: start afresh
    os.makedirs(log_dir, exist_ok=True)
    open(os.path.join(log_dir, _DEMO_MARKER), "w").close()

    weights = args.vgg_weights
    vgg = None
    if weights == "imagenet":
        try:
            vgg = build_vgg("imagenet")
        except VGGWeightsUnavailable as e:
            print(f"\nImageNet VGG19 weights unreachable: {e}\n"
                  "==> the demo falls back to --vgg-weights random.", file=sys.stderr, flush=True)
            weights = "random"
    scan_dir = _demo_scan_photos(os.path.join(log_dir, "scan_photos"))
    train_args = build_parser().parse_args([
        "train", "--content-dir", data.asset_path("photos"),
        "--style-image", data.asset_path("styles", f"{args.style}.jpg"),
        "--log-dir", log_dir, "--vgg-weights", weights,
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--image-size", str(args.image_size), "--steps-per-epoch", str(args.steps_per_epoch),
        "--log-every", str(max(1, args.steps_per_epoch // 2)), "--loss-every", "2",
        "--checkpoint-every", str(args.steps_per_epoch), "--lr", "2e-3",
        "--scan-dir", scan_dir, "--scan-images", str(len(os.listdir(scan_dir)))])
    train(train_args, vgg=vgg)
    out_dir = os.path.join(log_dir, "stylized")
    stylize(build_parser().parse_args([
        "stylize", "--model", os.path.join(log_dir, "transform_net.keras"),
        "--output-dir", out_dir, data.asset_path("photos")]))
    print("\n" + "=" * 78)
    if weights == "random":
        print(RANDOM_WARNING.strip())
    print(f"Done. Stylized photos: {out_dir}/\n"
          f"Open TensorBoard:      tensorboard --logdir {log_dir}\n"
          "  Scalars / Custom Scalars: content, style, TV and total loss; Graphs: the op graph\n"
          "  (transform_net, vgg_content, vgg_transformed, losses); Histograms / Distributions:\n"
          "  transform-net weights incl. instance-norm gamma/beta; Images: stylized probes;\n"
          "  the tbviz tab: stylized probes and deconvnet reconstructions over time.")
    print("=" * 78)
    return 0


def main(argv=None) -> int:
    """Entry point of ``style-transfer`` and ``python -m style_transfer``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    commands = {"train": train, "stylize": stylize, "demo": demo}
    try:
        return commands[args.command](args)
    except ValueError as e:
        print(f"style-transfer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
