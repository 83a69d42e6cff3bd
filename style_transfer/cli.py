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
import os
import shutil
import sys
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
    t.add_argument("--batch-size", type=_positive, default=4)
    t.add_argument("--image-size", type=_positive, default=256, help="training crop size")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
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
    t.add_argument("--no-viz", action="store_true", help="no tbviz summaries (losses still print)")
    t.add_argument("--output", default=None,
                   help="final transform-net .keras file (default: <log-dir>/transform_net.keras)")
    t.add_argument("--seed", type=int, default=0)
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
def tbviz_callbacks(args, model, photos, names) -> list:
    """Every tbviz callback of the train command, in one place.

    * ``tbviz.TensorBoardViz``: op graph of ``model.compute_losses`` (name scopes
      transform_net / vgg_content / vgg_transformed / losses), weight histograms
      (instance-norm scale and shift included), the losses in one chart, and
      deconvnet images of the transform-net's layers for the probe photos;
    * ``tbviz.DeconvnetCallback`` on VGG19 seen through the stylized probe photos,
      so its projections evolve as the transform-net learns;
    * :class:`~style_transfer.callbacks.StylizedProbes`: the stylized photos.
    """
    import tensorflow as tf

    import tbviz
    from style_transfer.callbacks import StylizedProbes

    every = dict(every_n_epochs=1, every_n_steps=args.log_every)
    callbacks = [StylizedProbes(args.log_dir, photos, names, **every)]
    callbacks.append(tbviz.TensorBoardViz(
        args.log_dir, probe_images=photos, layers=list(args.transform_layers) or None,
        probe_model=lambda m: m.transform_net, deconvnet=bool(args.transform_layers),
        graph_fn=model.compute_losses, input_spec=tf.TensorSpec([None, None, None, 3], tf.float32),
        loss_every_n_steps=args.loss_every, **every))
    if args.vgg_layers:
        callbacks.append(tbviz.DeconvnetCallback(
            args.log_dir, lambda m: m.stylize(photos), list(args.vgg_layers),
            probe_model=lambda m: m.vgg, **every))
    return callbacks


def _probe_photos(args):
    from style_transfer import data

    size = args.probe_size or min(args.image_size, 256)
    paths = args.probe_images or data.bundled_photos()
    return data.load_probe_photos(paths, size)


def _save_keras_atomically(net, path: str) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    net.save(tmp)
    os.replace(tmp, path)


def train(args, vgg=None) -> int:
    """The ``train`` command. Returns the process exit status."""
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return _train(args, vgg)
    finally:  # --mixed-precision must not leak into whatever runs next in this process
        keras.mixed_precision.set_global_policy(policy)


def _train(args, vgg=None) -> int:
    import keras

    from style_transfer import data
    from style_transfer.callbacks import Checkpointing, TrainingProgress
    from style_transfer.checkpoints import TrainingState
    from style_transfer.model import StyleTransferModel
    from tbviz.summary.writers import check_writable

    check_writable(args.log_dir)
    files, ignored = data.list_images(args.content_dir)
    print(f"content: {len(files)} image file(s) in {args.content_dir}"
          + (f" ({ignored} other file(s) ignored)" if ignored else ""), flush=True)
    data.check_readable(files)
    style = data.read_image(args.style_image)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = StyleTransferModel(
        style, vgg_weights=args.vgg_weights, content_layer=args.content_layer,
        style_layers=args.style_layers, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight,
        style_size=args.style_size or None, vgg=vgg)
    optimizer = keras.optimizers.Adam(args.lr)
    if args.mixed_precision:
        # The perceptual losses are ~1e5..1e7, not ~1 like a classifier's, so their float16
        # gradients overflow unless scaled *down*: Keras' default initial scale (2**15)
        # would skip the first ~25 steps finding that out. The scale still adapts.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**-8)
    model.compile(optimizer=optimizer, jit_compile=bool(args.jit_compile))

    ckpt_dir = args.checkpoint_dir or os.path.join(args.log_dir, "checkpoints")
    state = TrainingState(model, ckpt_dir)
    if args.resume:
        if state.restore():
            print(f"resumed from {state.manager.latest_checkpoint}: {state.describe()}", flush=True)
        else:
            print(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch", flush=True)
    elif state.manager.latest_checkpoint is not None:
        raise ValueError(f"{ckpt_dir} already holds checkpoints of a run; pass --resume to "
                         "continue it, or another --log-dir/--checkpoint-dir to start afresh")

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

    photos, names = _probe_photos(args)
    checkpointing = Checkpointing(state, every_n_steps=args.checkpoint_every)
    callbacks = [TrainingProgress(args.batch_size, verbose=0 if args.quiet else 1), checkpointing]
    if not args.no_viz:
        callbacks += tbviz_callbacks(args, model, photos, names)
    for first, end, n_steps, offset in phases:
        checkpointing.first_epoch_offset = offset
        ds = data.training_dataset(files, args.image_size, args.batch_size, seed=args.seed,
                                   start=int(model.data_position.numpy()))
        model.fit(ds, epochs=end, initial_epoch=first, steps_per_epoch=n_steps,
                  callbacks=callbacks, verbose=0, shuffle=False)

    output = args.output or os.path.join(args.log_dir, "transform_net.keras")
    _save_keras_atomically(model.transform_net, output)
    skipped = int(model.skipped_files.numpy())
    print(f"saved the transform-net to {output} (global step {state.global_step}"
          + (f"; {skipped} unreadable image file(s) skipped" if skipped else "") + ")", flush=True)
    return 0


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

    from style_transfer.callbacks import to_uint8

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
    inputs = []
    for item in args.inputs:
        if os.path.isdir(item):
            inputs += data.list_images(item)[0]
        elif os.path.isfile(item):
            inputs.append(item)
        else:
            print(f"skipped {item}: no such file or folder", file=sys.stderr)
            inputs.append(None)
    net = load_transform_net(args.model)

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
    print(f"stylized {done} image(s)" + (f", {failed} failed" if failed else ""), flush=True)
    return 1 if failed else 0


# -- demo -------------------------------------------------------------------------------------
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
    train_args = build_parser().parse_args([
        "train", "--content-dir", data.asset_path("photos"),
        "--style-image", data.asset_path("styles", f"{args.style}.jpg"),
        "--log-dir", log_dir, "--vgg-weights", weights,
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--image-size", str(args.image_size), "--steps-per-epoch", str(args.steps_per_epoch),
        "--log-every", str(max(1, args.steps_per_epoch // 2)), "--loss-every", "2",
        "--checkpoint-every", str(args.steps_per_epoch), "--lr", "2e-3"])
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
