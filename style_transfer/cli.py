"""``style-transfer`` / ``python -m style_transfer``: the parser, the checks of the options,
and the dispatch to :func:`style_transfer.train.train`, :func:`style_transfer.stylize.stylize`
and :func:`style_transfer.demo.demo`.

Examples::

    style-transfer train --content-dir coco/train2017 --style-image wave.jpg --log-dir runs/wave
    style-transfer train ... --resume                 # continue where the run stopped
    style-transfer stylize --model runs/wave/transform_net.keras photo1.jpg photos/ --output-dir out
    style-transfer demo --log-dir runs/demo           # bundled photos + painting, a few minutes
    tensorboard --logdir runs

The training recipe, stylizing and the demo live in their own modules; this one only
turns options into their keyword arguments. Errors in the options exit with status 2
and one line naming the option.
"""

from __future__ import annotations

import argparse
import os
import sys

from style_transfer.defaults import (CONTENT_LAYER, CONTENT_WEIGHT, DEMO_STYLES, MIN_IMAGE_SIZE,
                                     STYLE_LAYERS, STYLE_SIZE, STYLE_WEIGHT,
                                     TRANSFORM_PROBE_LAYERS, TV_WEIGHT, VGG_PROBE_LAYERS)


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
                   help="tf.distribute (TensorFlow backend): 'mirrored' trains on all GPUs of "
                        "this machine, 'multiworker' on the machines listed in TF_CONFIG (see "
                        "the README); only the chief writes logs, checkpoints and the model")
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
    t.add_argument("--jit-compile", action="store_true",
                   help="compile the train step: XLA on TensorFlow, torch.compile on PyTorch "
                        "(JAX always compiles it)")
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
    d.add_argument("--style", default="wave", choices=DEMO_STYLES)
    d.add_argument("--vgg-weights", default="imagenet",
                   help="'imagenet' (falls back to 'random' when unreachable), a .h5 file, "
                        "or 'random'")
    d.add_argument("--image-size", type=_positive, default=128)
    d.add_argument("--batch-size", type=_positive, default=2)
    d.add_argument("--epochs", type=_positive, default=3)
    d.add_argument("--steps-per-epoch", type=_positive, default=40)
    return parser




# -- checks: everything about the options that needs neither the backend nor the disk ---------
def check_train_options(args) -> None:
    """Raise ``ValueError`` naming the option for a bad combination of ``train`` options."""
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


# -- dispatch -----------------------------------------------------------------------------------
def train_command(args) -> int:
    """``style-transfer train``: 0 when the transform-net was saved, 1 when training stopped."""
    from style_transfer.train import TrainingStopped, make_strategy, train

    check_train_options(args)
    strategy = make_strategy(args.strategy, args.cpu_replicas)  # before any TensorFlow op
    try:
        train(content_dir=args.content_dir, style_image=args.style_image, log_dir=args.log_dir,
              epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
              lr=args.lr, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
              strategy=strategy, vgg_weights=args.vgg_weights,
              content_layer=args.content_layer, style_layers=args.style_layers,
              content_weight=args.content_weight, style_weight=args.style_weight,
              tv_weight=args.tv_weight, style_size=args.style_size,
              checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
              resume=args.resume, mixed_precision=args.mixed_precision,
              jit_compile=args.jit_compile, viz=not args.no_viz, log_every=args.log_every,
              loss_every=args.loss_every, probe_images=args.probe_images,
              probe_size=args.probe_size, transform_layers=args.transform_layers,
              vgg_layers=args.vgg_layers, output=args.output, verbose=0 if args.quiet else 1,
              debug_nan_at_step=args.debug_nan_at_step, scan_dir=args.scan_dir,
              scan_images=args.scan_images)
    except TrainingStopped as e:
        print(f"style-transfer train: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def stylize_command(args) -> int:
    """``style-transfer stylize``: 0 when every input was stylized, else 1."""
    from style_transfer.stylize import stylize

    done, failed = stylize(args.model, args.inputs, args.output_dir, max_size=args.max_size)
    return 1 if failed else 0


def demo_command(args) -> int:
    """``style-transfer demo``."""
    from style_transfer.demo import demo

    demo(log_dir=args.log_dir, style=args.style, vgg_weights=args.vgg_weights,
         image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs,
         steps_per_epoch=args.steps_per_epoch)
    return 0


COMMANDS = {"train": train_command, "stylize": stylize_command, "demo": demo_command}


def main(argv=None) -> int:
    """Entry point of ``style-transfer`` and ``python -m style_transfer``."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as e:
        print(f"style-transfer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
