"""What the histogram callback measures: weights by layer, gradients, activations, dead ReLUs.

Pure functions over a model and arrays; no TensorBoard. ``cka`` (how alike two
representations are, for the convergence callback) lives in :mod:`tbviz.similarity`.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.stats import weights_by_layer, relu_layers, zero_fractions
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="d")])
    >>> [(tag, tuple(v.shape)) for tag, v in weights_by_layer(m)]
    [('d/kernel', (4, 3)), ('d/bias', (3,))]
    >>> relu_layers(m)
    ['d']
    >>> zero_fractions(np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]))
    (0.6666666666666666, 0.6666666666666666)
"""

from __future__ import annotations

import keras
import numpy as np

from tbviz.layers import children, layer_paths, get_layer
from tbviz.similarity import cka  # noqa: F401 - tbviz.stats.cka, documented in tbviz.similarity


def own_weights(layer) -> list:
    """The variables a layer owns itself, not those of its sub-layers."""
    inner = {id(v) for c in children(layer) for v in c.weights}
    return [v for v in layer.weights if id(v) not in inner]


def weights_by_layer(model, include_frozen: bool = False) -> list[tuple[str, object]]:
    """``[("<layer path>/<variable>", variable), ...]`` in network order.

    Layers that are frozen (``trainable=False``, e.g. a pretrained loss network)
    are left out unless ``include_frozen``; a trainable layer's non-trainable
    state (BatchNorm's moving mean and variance) is kept.
    """
    out, seen = [], set()

    def visit(layer, path, frozen):
        frozen = frozen or not layer.trainable
        if not frozen or include_frozen:
            for v in own_weights(layer):
                if id(v) not in seen:
                    seen.add(id(v))
                    name = v.name.split("/")[-1].split(":")[0]
                    out.append((f"{path}/{name}" if path else name, v))
        for c in children(layer):
            visit(c, f"{path}/{c.name}" if path else c.name, frozen)

    for c in children(model):
        visit(c, c.name, not model.trainable)
    return out


def is_relu(layer) -> bool:
    """True if the layer's output is a plain ReLU: ``activation="relu"``,
    ``keras.layers.ReLU()`` (no slope/cap) or ``Activation("relu")``."""
    if isinstance(layer, keras.layers.ReLU):
        return (not layer.negative_slope and layer.max_value is None and not layer.threshold)
    act = getattr(layer, "activation", None)
    return act is keras.activations.relu or getattr(act, "__name__", "") == "relu"


def relu_layers(model) -> list[str]:
    """Paths of the layers whose output is a ReLU (leaf layers only)."""
    return [p for p in layer_paths(model)
            if not children(get_layer(model, p)) and is_relu(get_layer(model, p))]


def zero_fractions(activation) -> tuple[float, float]:
    """``(fraction of exactly-zero outputs, fraction of dead units)`` of one layer output.

    A unit (channel: the last axis) is dead when it is exactly zero for every
    image and position of the probe batch.
    """
    a = np.asarray(activation)
    zero = a == 0
    flat = zero.reshape(-1, a.shape[-1]) if a.ndim > 1 else zero.reshape(-1, 1)
    return float(zero.mean()), float(flat.all(axis=0).mean())


def update_ratio(before, after) -> float:
    """``||after - before|| / ||before||``: how far one step moved the weights, relative
    to their size (Karpathy's rule of thumb: about 1e-3 is healthy)."""
    b = np.asarray(before, dtype=np.float64)
    a = np.asarray(after, dtype=np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan")
