"""Model-randomization sanity checks for attribution maps (Adebayo et al. 2018).

A heatmap that explains the model should change when the model's learned weights
are replaced by random ones. :func:`sanity_check` re-draws layers' weights from
their own initializers in a copy of the model, from the output layer down
(``cascade=True``: the top layer, then the top two, ... until every layer is
random; ``cascade=False``: one layer at a time), and returns for each step the
Spearman rank correlation between the method's map on the trained model and on
the copy. The user's model is never touched.

How to read it: near 1 after the top layers are random means the map hardly
depends on what those layers learned (Adebayo et al. found this for guided
backprop, which behaves like an edge detector of the input); a map that
explains the model falls towards 0. ``nan``: the copy's map is constant on
every image (nothing of the trained map is left, e.g. Grad-CAM's ReLU zeroing it).

Maps are compared as displayed (:func:`tbviz.methods.attribution.heatmap`: ``max |g|``
over channels for gradients), image by image; the result is their mean. The
target is held fixed: the classes the trained model predicts, unless given.

Example:
    >>> import numpy as np, keras
    >>> from tbviz.methods.attribution import sanity_check
    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="head")])
    >>> x = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> [layer for layer, rho in sanity_check(model, x, "saliency")]
    ['head', 'conv']
"""

from __future__ import annotations

import zlib

import keras
import numpy as np

from tbviz.core.layers import check_images, check_layers, children, get_layer, layer_paths, own_weights
from tbviz.methods.attribution import registry
from tbviz.methods.attribution.heatmaps import heatmap
from tbviz.methods.attribution.targets import top_classes


def ranks(values) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their average rank (as Spearman wants).

    >>> ranks([10, 30, 20, 20]).tolist()
    [1.0, 4.0, 2.5, 2.5]
    """
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally sized arrays (flattened); ``nan`` if either
    is constant.

    >>> spearman([1, 2, 3, 4], [10, 20, 40, 30])
    0.8
    """
    ra, rb = ranks(np.ravel(a)), ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float(round((ra * rb).sum() / norm, 12)) if norm > 0 else float("nan")


def weighted_layers(model) -> list[str]:
    """Paths of the leaf layers that own weights, from the output back to the input."""
    paths = [p for p in layer_paths(model) if not children(get_layer(model, p))]
    return [p for p in reversed(paths) if own_weights(get_layer(model, p))]


def _initializer(layer, variable, seed):
    name = variable.path.split("/")[-1]
    init = getattr(layer, f"{name}_initializer", None)
    if init is None:
        return None
    config = init.get_config()
    if "seed" in config:  # a seeded copy: the same random draw every check
        init = type(init).from_config({**config, "seed": seed})
    return init


class RandomizedCopy:
    """A clone of ``model`` (``keras.models.clone_model``) whose layers can be reset to the
    model's weights and re-drawn from their initializers; built once, so probes traced on
    it serve every check of a training run."""

    def __init__(self, model, seed: int = 0):
        try:
            self.copy = keras.models.clone_model(model)
        except Exception as e:  # noqa: BLE001 - Keras says why in many ways
            raise ValueError(f"sanity checks need a copy of model {model.name!r} "
                             f"(keras.models.clone_model, Sequential or Functional): {e}") from e
        self.model, self.seed = model, seed
        self.copy.set_weights(model.get_weights())

    def reset(self):
        """The copy's weights := the model's current weights."""
        self.copy.set_weights(self.model.get_weights())

    def randomize(self, path: str) -> None:
        """Re-draw every weight of layer ``path`` that has an initializer (``kernel``,
        ``bias``, BatchNorm's ``gamma``/``beta``/moving statistics, ...)."""
        layer = get_layer(self.copy, path)
        for i, v in enumerate(own_weights(layer)):
            init = _initializer(layer, v, self.seed + 100 * i + zlib.crc32(path.encode()))
            if init is not None:
                v.assign(init(v.shape, v.dtype))


def _maps(model, images, method, target, options):
    return heatmap(registry.get(method)(model, images, target, **options))


def mean_spearman(a, b) -> float:
    """Mean over images of :func:`spearman` between maps ``a[i]`` and ``b[i]`` (images whose
    maps are constant left out; ``nan`` when all are)."""
    rhos = [spearman(x, y) for x, y in zip(a, b)]
    finite = [r for r in rhos if np.isfinite(r)]
    return float(np.mean(finite)) if finite else float("nan")


def sanity_check(model, images, method: str, target=None, cascade: bool = True,
                 layers=None, options: dict | None = None, seed: int = 0,
                 randomized: RandomizedCopy | None = None) -> list[tuple[str, float]]:
    """``[(layer, rho), ...]`` from the top layer down: the Spearman correlation between
    ``method``'s maps of ``images`` on ``model`` and on a copy with ``layer`` (and, with
    ``cascade``, every layer above it) re-drawn from its initializers.

    Args:
        model: a Sequential or Functional Keras model; never modified.
        images, target: as for every :mod:`tbviz.methods.attribution` method; ``target=None``:
            the classes ``model`` predicts, held fixed for the copies.
        method: a name from :data:`tbviz.methods.attribution.METHODS`.
        cascade: randomize cumulatively from the top (True) or one layer at a time.
        layers: layer paths to randomize, top first; default every layer with weights.
        options: the method's keyword arguments, e.g. ``{"patch": 8}`` for occlusion.
        seed: seeds the re-drawn weights (initializers without a seed draw freely).
        randomized: a :class:`RandomizedCopy` of ``model`` to reuse (callbacks do).
    """
    allowed = registry.method_options(method)  # raises for an unknown method
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {method}; it takes "
                         f"{', '.join(allowed)}")
    images = check_images(model, images, "images")
    if target is None:
        target = top_classes(model, images)
    order = weighted_layers(model) if layers is None else check_layers(model, layers)
    if not order:
        raise ValueError(f"model {model.name!r} has no layer with weights to randomize")
    copy = randomized or RandomizedCopy(model, seed)
    trained = _maps(model, images, method, target, options)
    out = []
    copy.reset()
    for path in order:
        if not cascade:
            copy.reset()
        copy.randomize(path)
        out.append((path, mean_spearman(trained, _maps(copy.copy, images, method, target,
                                                         options))))
    return out
