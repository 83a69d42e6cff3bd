"""Benchmark: the deconvnet and guided rules on networks without ReLU, against the gradient.

For ConvNeXtTiny (GELU, depthwise-as-grouped ``Conv2D(groups=C)``), EfficientNetB0
(swish) and a small ViT-like GELU network built from Keras layers, all with
``weights=None`` at a small input, it projects the top units of one late layer
with each rule and prints, side by side in one process:

* how far each rule's projections are from the plain gradient's
  (``|P_rule - P_gradient| / |P_gradient|``, L1; 0 would mean the rule did nothing,
  as before tbviz knew these activations) and how large they are (``|P| / |P_gradient|``),
* the time of one projection call with each rule once traced, and its ratio to
  the gradient's (a rule adds elementwise work at every activation),
* the time of saliency and Grad-CAM on the same images (first call, tracing
  included, then once traced).

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_rules.py [--size 64] [--repeats 3] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tbviz import attribution, backward_rules, deconvnet  # noqa: E402
from _tables import add_markdown_flag, print_table  # noqa: E402  (scripts/, on sys.path)

L = keras.layers


def vit_like(size: int, patch: int = 8, dim: int = 32, depth: int = 2) -> keras.Model:
    """Patch embedding, then pre-norm attention + GELU MLP blocks on the token grid."""
    grid = size // patch
    inp = keras.Input((size, size, 3))
    x = L.Conv2D(dim, patch, strides=patch, name="patch_embed")(inp)
    x = L.Reshape((grid * grid, dim))(x)
    for i in range(depth):
        h = L.LayerNormalization(name=f"block{i}_ln1")(x)
        x = L.Add()([x, L.MultiHeadAttention(4, dim // 4, name=f"block{i}_attn")(h, h)])
        h = L.LayerNormalization(name=f"block{i}_ln2")(x)
        h = L.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(h)
        x = L.Add()([x, L.Dense(dim, name=f"block{i}_mlp2")(h)])
    x = L.Reshape((grid, grid, dim), name="tokens_grid")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, name="head")(x), name="vit_like")


def convnext(size):
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(size, size, 3))
    # Untrained, every residual branch is scaled by a layer scale of 1e-6, so the signal
    # runs through the skip connections and no GELU matters (every rule gives the gradient
    # to 1e-6). Trained ConvNeXts have scales of order 0.1 to 1: use 1.
    for layer in model.layers:
        if layer.name.endswith("_layer_scale"):
            layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
    return model


def models(size):
    yield "ConvNeXtTiny", convnext(size), "convnext_tiny_stage_2_block_8_depthwise_conv"
    yield "EfficientNetB0", keras.applications.EfficientNetB0(
        weights=None, input_shape=(size, size, 3)), "block6a_expand_activation"
    yield "ViT-like", vit_like(size), "tokens_grid"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    add_markdown_flag(parser)
    args = parser.parse_args()
    table = []
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, args.size, args.size, 3)).astype("float32")
    for name, model, layer in models(args.size):
        keras.utils.set_random_seed(0)
        if name == "ViT-like":
            # One unit per image: the vectorized backward of several units of one image
            # through this network's attention crashes oneDNN (a segfault) today.
            units = [u._replace(image_index=i) for i in range(len(x))
                     for u in deconvnet.strongest(model, x[i:i + 1], layer, k=1)]
        else:
            units = deconvnet.strongest(model, x, layer, k=4)
        first, runs = {}, {rule: [] for rule in backward_rules.RULES}
        for rule in backward_rules.RULES:
            first[rule] = timed(lambda: deconvnet.project(model, x, layer, units, rule=rule))
        for _ in range(args.repeats):  # interleaved, so load changes hit every rule alike
            for rule in backward_rules.RULES:
                runs[rule].append(timed(lambda: deconvnet.project(model, x, layer, units,
                                                                  rule=rule))[1])
        grad = first["gradient"][0]
        print(f"\n{name} ({model.count_params() / 1e6:.1f} M parameters, {args.size}x{args.size}),"
              f" {len(units)} units of {layer}")
        print(f"  acted on: {len(backward_rules.rule_sites(model, 'deconvnet'))} activation "
              "sites")
        for rule in backward_rules.RULES:
            p, t_first = first[rule]
            size = np.abs(p).sum() / max(np.abs(grad).sum(), 1e-30)
            diff = np.abs(p - grad).sum() / max(np.abs(grad).sum(), 1e-30)
            t = statistics.median(runs[rule])
            ratio = t / statistics.median(runs["gradient"])
            print(f"  {rule:9s} |P - P_gradient| / |P_gradient| = {diff:8.3g}  |P| / |P_gradient| = "
                  f"{size:8.3g}   first call "
                  f"{t_first:6.1f} s   traced {t:6.2f} s  ({ratio:4.2f}x the gradient)")
            table.append([name, layer, rule, f"{diff:.3g}", f"{size:.3g}", f"{t_first:.1f}",
                          f"{t:.2f}", f"{ratio:.2f}x"])
        for method in ("saliency", "grad_cam"):
            fn = getattr(attribution, method)
            _, t_first = timed(lambda: fn(model, x, target=0))
            t = statistics.median(timed(lambda: fn(model, x, target=0))[1]
                                  for _ in range(args.repeats))
            print(f"  {method:9s} first call {t_first:6.1f} s   traced {t:6.2f} s")
            table.append([name, "", method, "", "", f"{t_first:.1f}", f"{t:.2f}", ""])
    print()
    print_table(["model", "layer", "rule / method", "|P - P_gradient| / |P_gradient|",
                 "|P| / |P_gradient|", "first call, s", "traced, s", "vs gradient"],
                table, args.markdown)


if __name__ == "__main__":
    main()
