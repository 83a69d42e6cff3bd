"""``TensorBoardViz``: every tbviz callback in one run, each part switched and set alike.

Each part is one callback (:data:`PARTS`), and each takes ``True``, ``False`` or
a dict of that callback's own keyword arguments, checked here against its
signature. The shared ones (``log_dir``, ``probe_images`` and ``probe_labels``,
``every_n_epochs`` and ``every_n_steps``, ``strict``, ``token_grid`` and
``class_token``) are given once. On by default: ``graph``, ``losses``,
``histograms``, and with probe images ``deconvnet``, ``feature_maps`` (on conv or
token layers), ``attention`` (on a model with ``MultiHeadAttention`` layers) and
``convergence`` (with at least 4 of them); off: ``attribution`` and ``synthesis``.

Vision transformers get the same views as convolutional networks: where a model's
last spatial layers are token layers ``(N, T, D)`` (ViT, DeiT, Swin, CCT-style
tokenizers), the deconvnet's default layers are token layers (its block outputs,
:func:`tbviz.core.tokens.default_token_layers`), its feature maps are drawn on the
token grid, and its attention maps and rollout are logged.

Every part waits for Keras to build the model (:mod:`tbviz.callbacks.base`); the
parts that choose their layers from the model (deconvnet, feature maps, attention)
are added then. Notices that switch a part off (no layer to project, too few probe
images for convergence) are listed in ``tbviz/errors`` with the failures.

Example:
    >>> import numpy as np, keras, tbviz
    >>> x, y = np.random.rand(64, 16, 16, 3).astype("float32"), np.random.randint(0, 3, 64)
    >>> model = keras.Sequential([keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
    ...     keras.layers.MaxPooling2D(name="pool1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
    ...     keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(3, name="head")])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> viz = tbviz.TensorBoardViz("runs/doc_viz", probe_images=x[:4], probe_labels=y[:4],
    ...                            deconvnet={"layers": ["conv2"], "distinct": False},
    ...                            attribution={"methods": ["saliency"], "target": 0})
    >>> _ = model.fit(x, y, epochs=1, verbose=0, callbacks=[viz])

Then ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os

import keras
import numpy as np

from tbviz import backend
from tbviz.core import probes, tokens
from tbviz.core.checks import positive_int
from tbviz.core.layers import image_input_shape, is_built, layer_paths
from tbviz.summary import writers

log = logging.getLogger("tbviz")

#: Probe images whose feature maps TensorBoardViz shows (one grid each).
FEATURE_MAP_IMAGES = 4

#: Each part of TensorBoardViz and the callback (module, class) behind it.
PARTS = {
    "graph": ("tbviz.callbacks.graph", "GraphCallback"),
    "losses": ("tbviz.callbacks.losses", "LossCallback"),
    "histograms": ("tbviz.callbacks.histograms", "HistogramCallback"),
    "deconvnet": ("tbviz.callbacks.deconvnet", "DeconvnetCallback"),
    "feature_maps": ("tbviz.callbacks.feature_maps", "FeatureMapsCallback"),
    "attribution": ("tbviz.callbacks.attribution", "AttributionCallback"),
    "synthesis": ("tbviz.callbacks.synthesis", "SynthesisCallback"),
    "convergence": ("tbviz.callbacks.convergence", "ConvergenceCallback"),
    "attention": ("tbviz.callbacks.attention", "AttentionCallback"),
}


def part_options(part: str, value) -> dict | None:
    """The keyword arguments that ``value`` (``True``, ``False``/``None`` or a dict) gives
    the callback of ``part``, checked against its signature; ``None`` when the part is off.

    >>> part_options("losses", {"every_n_steps": 1})
    {'every_n_steps': 1}
    >>> part_options("graph", False) is None
    True
    >>> part_options("losses", {"every_n_step": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown losses option(s) 'every_n_step'; LossCallback takes groups, every_n_steps...
    """
    if value is None or value is False:
        return None
    cls = _callback_class(part)
    if value is True:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{part} must be True, False or a dict of {cls.__name__} options, "
                         f"got {value!r}")
    valid = _option_names(cls)
    unknown = [key for key in value if key not in valid]
    if unknown:
        raise ValueError(f"unknown {part} option(s) {', '.join(map(repr, unknown))}; "
                         f"{cls.__name__} takes {', '.join(valid)}")
    return dict(value)


def _callback_class(part: str):
    module, name = PARTS[part]  # imported only when the part is on
    return getattr(importlib.import_module(module), name)


def _option_names(cls) -> list[str]:
    """Keyword arguments of ``cls``'s constructor (the shared ``log_dir`` is given once),
    those of its base classes too where it passes ``**kwargs`` on."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.name not in names + ["self", "log_dir"]
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def default_deconvnet_layers(model, n: int = 4, image_shape=None, token_grid=None,
                             class_token=None) -> list[str]:
    """Up to ``n`` convolution layers spread evenly from the first to the last; where the
    model's last spatial layers are token layers (a vision transformer, for images of
    ``image_shape``), up to ``n`` token layers instead
    (:func:`tbviz.core.tokens.default_token_layers`).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 1))] + [keras.layers.Conv2D(1, 1, name=f"c{i}")
    ...                                                  for i in range(7)])
    >>> default_deconvnet_layers(m)
    ['c0', 'c2', 'c4', 'c6']
    """
    convs = layer_paths(model, kind=keras.layers.Conv2D)
    if image_shape is not None:
        shapes = probes.layer_output_shapes(model, image_shape)
        shown = tokens.default_token_layers(model, shapes, image_shape, n, token_grid,
                                            class_token)
        order = list(shapes)
        spatial = [p for p in order if p in convs or p in shown]
        if shown and spatial and spatial[-1] in shown:
            return shown
    if len(convs) <= n:
        return convs
    idx = sorted({round(i * (len(convs) - 1) / (n - 1)) for i in range(n)})
    return [convs[i] for i in idx]


class TensorBoardViz(keras.callbacks.Callback):
    """One callback that writes everything tbviz can show, into one run.

    Args:
        log_dir: run directory: ``<log_dir>/train`` and ``<log_dir>/validation``.
        probe_images: a small fixed batch of inputs (array, or callable ``model -> array``,
            which only the deconvnet part can use). Enables activation and gradient
            histograms, deconvnet images and feature maps.
        probe_labels: labels for ``probe_images`` (for gradient histograms).
        every_n_epochs / every_n_steps: when histograms and images are written (a part's
            own ``every_n_...`` in its dict wins). Losses are logged every epoch and
            every ``losses={"every_n_steps": n}`` steps (default 10).
        strict: passed to every part (its own dict's ``strict`` wins): a part re-raises its
            failures instead of switching itself off (see
            :class:`~tbviz.callbacks.base.VizCallback`); for tests and debugging.
        token_grid / class_token: a vision transformer's patch grid ``(h, w)`` and its leading
            tokens (``True``: a class token, ``False``: none, or a count: 2 for DeiT), for the
            parts that show token layers (deconvnet, feature maps, attention), where the
            token count and the image shape cannot tell them.
        graph, losses, histograms, deconvnet, feature_maps, attribution, synthesis, convergence,
        attention:
            ``True``, ``False`` or a dict of keyword arguments of the part's callback (see
            the module doc), e.g. ``deconvnet={"distinct": False, "channels": [0, 3]}``,
            ``attribution={"methods": ["grad_cam"], "layer": "conv4", "target": 3}``,
            ``synthesis={"maximize": {"conv3": 4}, "invert": ["conv2"]}``,
            ``graph={"graph_fn": model.compute_losses, "input_spec": spec}``. An unknown
            key is an error listing the keys the callback takes. ``feature_maps="auto"``
            (default) is on when the trained model takes the probe images and has conv or
            token layers; ``attention="auto"`` (default) when it takes them and has
            ``MultiHeadAttention`` layers; ``convergence=True`` (default) when it takes at
            least 4 (debiased CKA needs 4).
        layers, top_k, scan_data: short for ``deconvnet={"layers": ..., "top_k": ...,
            "scan_data": ...}``: the layers (paths like ``"vgg19/block3_conv1"``; default: up
            to four conv layers spread through the network, or of a vision transformer up to
            four token layers, ``[]`` for none), the units per
            layer, and the images to scan for the feature-map view (with them the deconvnet
            runs without probe images too; ``scan_limit``, ``channels`` and the others go in
            the dict).

    ``attribution`` also takes a list of methods, e.g. ``["saliency", "grad_cam"]``.
    The histograms, feature-map, attribution, synthesis and convergence parts probe the model
    being trained: with a callable ``probe_images`` or a deconvnet ``probe_model`` they get no
    probe images (give another network's probes as ``deconvnet={"probe_images": ...,
    "probe_model": ...}``). Keras' hooks are forwarded to every part; the parts use the
    training hooks only, so those are the ones forwarded.
    """

    def __init__(self, log_dir, probe_images=None, probe_labels=None, layers=None, *,
                 every_n_epochs=1, every_n_steps=None, strict=False, top_k=None,
                 scan_data=None, token_grid=None, class_token=None, graph=True, losses=True,
                 histograms=True, deconvnet=True, feature_maps="auto", attribution=None,
                 synthesis=None, convergence=True, attention="auto"):
        super().__init__()
        self.log_dir = log_dir
        self.probe_images = probe_images
        self.strict = bool(strict)
        self.every = {name: positive_int(name, value, allow_none=True) for name, value in (
            ("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps))}
        if isinstance(attribution, (str, list, tuple)):
            attribution = {"methods": attribution}
        if feature_maps not in ("auto", True, False, None) and not isinstance(feature_maps, dict):
            raise ValueError(f"feature_maps must be 'auto', True, False or a dict of "
                             f"FeatureMapsCallback options, got {feature_maps!r}")
        if attention not in ("auto", True, False, None) and not isinstance(attention, dict):
            raise ValueError(f"attention must be 'auto', True, False or a dict of "
                             f"AttentionCallback options, got {attention!r}")
        self._auto_maps = feature_maps == "auto"
        self._auto_attention = attention == "auto"
        options = {part: part_options(part, value) for part, value in (
            ("graph", graph), ("losses", losses), ("histograms", histograms),
            ("deconvnet", deconvnet), ("attribution", attribution), ("synthesis", synthesis),
            ("convergence", convergence),
            ("feature_maps", {} if self._auto_maps else feature_maps),
            ("attention", {} if self._auto_attention else attention))}
        self.token_grid, self.class_token = token_grid, class_token
        if options["deconvnet"] is not None:
            for key, value in (("layers", layers), ("top_k", top_k), ("scan_data", scan_data)):
                if value is None:
                    continue
                if key in options["deconvnet"]:
                    raise ValueError(f"{key} is given twice, as {key}= and in deconvnet=; "
                                     "give it once")
                options["deconvnet"][key] = value
        self.options = options
        # The trained model itself is probed with a fixed array (not a callable, not another
        # model): only then can the parts other than the deconvnet use the probe images.
        self.direct = (probe_images is not None and not callable(probe_images)
                       and (options["deconvnet"] or {}).get("probe_model") is None)
        probe_data = None
        if self.direct:
            probe_data = probe_images if probe_labels is None else (probe_images, probe_labels)
        # Asked for explicitly, these need probes of the trained model (convergence=True,
        # the default, is just off without them).
        for part, asked in (("attribution", options["attribution"] is not None),
                            ("convergence", isinstance(convergence, dict)),
                            ("attention", options["attention"] is not None
                             and not self._auto_attention)):
            if asked and not self.direct and "probe_images" not in options[part]:
                raise ValueError(f"{part} needs probe_images as an array for the trained model "
                                 f"(no callable, no deconvnet probe_model), or "
                                 f"{part}={{'probe_images': ...}}")
        #: Notices for the run's tbviz/errors (key -> message), said at every train begin.
        self.notices: dict = {}
        if convergence is True and (not self.direct or len(probe_images) < 4):
            if self.direct:
                self.notices["convergence"] = (
                    "tbviz: convergence scalars are off: they need at least 4 probe images, "
                    f"got {len(probe_images)}")
            options["convergence"] = None
        # What each part gets from the shared arguments; its own dict wins.
        mine = probe_images if self.direct else None
        self.shared = {
            "graph": {},
            "losses": {},
            "histograms": dict(probe_data=probe_data, **self.every),
            "attribution": dict(probe_images=mine, **self.every),
            "synthesis": dict(probe_images=mine, **self.every),
            "convergence": dict(probe_images=mine, **self.every),
            "deconvnet": dict(probe_images=probe_images, **self.every),
            "feature_maps": dict(probe_images=None if mine is None
                                 else mine[:FEATURE_MAP_IMAGES], **self.every),
            "attention": dict(probe_images=None if mine is None
                              else mine[:FEATURE_MAP_IMAGES], **self.every),
        }
        self.callbacks = [self._part(part) for part in
                          ("graph", "losses", "histograms", "attribution", "synthesis",
                           "convergence")
                          if options[part] is not None]
        self._model_dependent_added = False
        self._late = False  # the model-dependent parts wait for Keras to build the model
        self._epoch = 0

    def _part(self, part: str, **defaults):
        """The callback of ``part``: shared arguments, then ``defaults``, then its own options."""
        cls = _callback_class(part)
        kwargs = {**self.shared[part], **defaults, **self.options[part]}
        names = _option_names(cls)
        if "strict" in names:
            kwargs.setdefault("strict", self.strict)
        for key, value in (("token_grid", self.token_grid), ("class_token", self.class_token)):
            if key in names and value is not None:
                kwargs.setdefault(key, value)
        return cls(self.log_dir, **kwargs)

    def _image_shape(self, model, images):
        """The image shape the parts will probe ``model`` with, where it is known now."""
        if images is not None and not callable(images):
            return tuple(np.shape(images)[1:])
        try:
            shape = image_input_shape(model)
        except ValueError:
            return None
        return tuple(shape) if all(d is not None for d in shape) else None

    def _add_model_dependent_parts(self):
        """Deconvnet and feature maps pick default layers from the model: added at train begin."""
        if self._model_dependent_added:
            return []
        self._model_dependent_added = True
        added = []
        deconvnet = self.options["deconvnet"]
        images = (deconvnet.get("probe_images", self.probe_images) if deconvnet is not None
                  else None)
        if deconvnet is not None and (images is not None or deconvnet.get("scan_data") is not None):
            layers = deconvnet.get("layers")
            if layers is None:
                pm = deconvnet.get("probe_model")
                target = self.model if pm is None else (
                    pm if isinstance(pm, keras.Model) else pm(self.model))
                grid = {k: deconvnet.get(k, getattr(self, k))
                        for k in ("token_grid", "class_token")}
                try:
                    shape = self._image_shape(target, images)
                    layers = default_deconvnet_layers(target, image_shape=shape, **grid)
                except ValueError:  # images the model does not take: the part says so
                    layers = default_deconvnet_layers(target)
                if not layers:
                    self.notices["deconvnet"] = (
                        f"tbviz: deconvnet images are off: model {target.name!r} has no Conv2D "
                        "layer and no layer of patch tokens to project (pass layers=[...] to "
                        "project others, token_grid=(h, w) where the token count cannot tell "
                        "the grid)")
            if layers:  # layers=[] asks for none
                added.append(self._part("deconvnet", layers=layers))
        wants_maps = self.options["feature_maps"] is not None and (
            not self._auto_maps or (self.direct and self._has_spatial_layers()))
        if wants_maps:
            added.append(self._part("feature_maps"))
        wants_attention = self.options["attention"] is not None and (
            not self._auto_attention or (self.direct and layer_paths(
                self.model, kind=keras.layers.MultiHeadAttention)))
        if wants_attention:
            added.append(self._part("attention", say_unmapped=not self._auto_attention))
        for cb in added:
            cb.set_model(self.model)
            cb.set_params(self.params)
            self.callbacks.append(cb)
        return added

    def _has_spatial_layers(self) -> bool:
        """Whether the trained model has a conv layer or a layer of patch tokens to show."""
        if layer_paths(self.model, kind=keras.layers.Conv2D):
            return True
        try:
            shape = tuple(np.shape(self.probe_images)[1:])
            found = probes.layer_output_shapes(self.model, shape)
        except Exception:  # noqa: BLE001 - images the model does not take: the part says so
            return True
        return bool(tokens.token_layers(found, shape, self.token_grid, self.class_token))

    # Keras calls these on the composite; each hands the call to every part.
    def set_model(self, model):
        super().set_model(model)
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for cb in self.callbacks:
            cb.set_params(params)

    def on_train_begin(self, logs=None):
        # Choosing layers means calling the model: only once Keras has built it (a subclassed
        # model on TensorFlow: after the first training batch), never before.
        self._late = not self._model_dependent_added and not is_built(self.model)
        self._start_step = _global_step(self.model)
        if not self._late:
            self._add_model_dependent_parts()
        self._begin(self.callbacks, logs)

    def _begin(self, parts, logs, start_step=None):
        begun = []
        fresh = [] if os.path.exists(self.log_dir) else [self.log_dir]
        try:
            for cb in parts:
                if start_step is None:
                    cb.on_train_begin(logs)
                else:
                    cb.begin(logs, start_step=start_step)
                    cb.on_epoch_begin(self._epoch, logs)
                begun.append(cb)
        except Exception:
            for cb in begun:  # do not leave writers of the parts that did start open
                cb.on_train_end(logs)
            writers.remove_unused(fresh)  # nor a half-written run folder
            raise
        self._say_notices()

    def _say_notices(self):
        """TensorBoardViz's own notices, into the run's tbviz/errors through a part of it."""
        writing = [cb for cb in self.callbacks if getattr(cb, "run", None) == "train"
                   and getattr(cb, "_errors_path", None)]
        for key, message in self.notices.items():
            if writing:
                writing[0].notice(("tensorboard_viz", key), message)
            else:
                log.warning("%s", message)

    def on_train_end(self, logs=None):
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        for cb in self.callbacks:
            cb.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self._late:  # Keras has built the model now: the parts that choose layers join
            self._late = False
            self._begin(self._add_model_dependent_parts(), logs, start_step=self._start_step)
        for cb in self.callbacks:
            cb.on_train_batch_end(batch, logs)


def _global_step(model) -> int:
    opt = getattr(model, "optimizer", None)
    if opt is None or getattr(opt, "iterations", None) is None:
        return 0
    return int(backend.numpy(opt.iterations))
