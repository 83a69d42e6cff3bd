"""Adebayo et al.'s model-randomization check for every attribution method, on the README's model.

Trains the network of ``make_method_pictures.py`` the same way (same seed, data and
epochs), then for each method runs :func:`tbviz.attribution.sanity_check` on 12
pictures (4 per class, targets = true classes), cascading from the top layer
down, and prints the mean Spearman correlation between the trained model's maps
and the randomized copy's after each layer. Options per method as in the pictures.

    python scripts/sanity_check_methods.py          # ~4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(here, ".."), here]

import keras  # noqa: E402
import numpy as np  # noqa: E402

import make_method_pictures as task  # noqa: E402
from tbviz import attribution  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=2400)
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    objs, texs = task.objects(), task.textures()
    x, y = task.dataset(rng, args.train, objs, texs)
    xv, yv = task.dataset(rng, 300, objs, texs)
    model = task.build_model()
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, validation_data=(xv, yv), epochs=args.epochs, batch_size=64, verbose=2)
    print(f"validation accuracy: {model.evaluate(xv, yv, verbose=0)[1]:.3f}")
    pick = np.concatenate([np.flatnonzero(yv == c)[:4] for c in range(len(task.CLASSES))])
    probes, target = xv[pick], yv[pick]
    options = {"smoothgrad": {"samples": 50},
               "occlusion": {"patch": 12, "stride": 4,
                             "baseline": probes.mean(axis=(1, 2), keepdims=True)},
               "grad_cam": {"layer": "conv4"}}
    rows = {}
    for method in attribution.METHODS:
        rows[method] = attribution.sanity_check(model, probes, method, target,
                                                options=options.get(method))
    layers = [layer for layer, _ in rows[attribution.METHODS[0]]]
    print("Spearman correlation, trained vs randomized down to (cascade from the top):")
    print("| method | " + " | ".join(layers) + " |")
    print("|---" * (len(layers) + 1) + "|")
    for method, stages in rows.items():
        print(f"| {method} | " + " | ".join(f"{rho:.2f}" for _, rho in stages) + " |")


if __name__ == "__main__":
    main()
