"""tbviz: see what a Keras model is doing while it trains, in TensorBoard.

Add one callback to ``model.fit`` and open ``tensorboard --logdir runs``::

    import tbviz
    model.fit(x, y, epochs=5,
              callbacks=[tbviz.TensorBoardViz("runs/exp1", probe_images=x[:4], probe_labels=y[:4])])

The package is laid out by concept (``docs/architecture.md`` draws it):

* ``tbviz.backend`` - the seam: what differs per Keras backend (TensorFlow, JAX, PyTorch);
* ``tbviz.core`` - what the methods share: layers, backward rules, receptive fields,
  tokens, probes, argument checks;
* ``tbviz.methods`` - the visualization methods, arrays in and arrays out;
* ``tbviz.stats`` - statistics (CKA, dead units, update ratios);
* ``tbviz.summary`` - event writing, image encoding, the panel contract;
* ``tbviz.callbacks`` - one Keras callback per file;
* ``tbviz.plugin`` - the TensorBoard dashboard.

The public names are attributes of this package, imported on first use:
the callbacks (``tbviz.TensorBoardViz``, ...) and the method modules
(``from tbviz import deconvnet``; ``tbviz.deconvnet.scan``, ``tbviz.attribution.saliency``).

>>> import tbviz
>>> tbviz.deconvnet.__name__
'tbviz.methods.deconvnet'
"""

import importlib

__version__ = "0.2.0"

# name -> module. Imported on first use (PEP 562): TensorBoard imports tbviz.plugin, the
# dashboard, into its server, which must load no backend (TensorFlow: ~5 s and ~500 MB).
_CALLBACKS = {
    "GraphCallback": "tbviz.callbacks.graph",
    "HistogramCallback": "tbviz.callbacks.histograms",
    "LossCallback": "tbviz.callbacks.losses",
    "TensorBoardViz": "tbviz.callbacks.tensorboard_viz",
    "DeconvnetCallback": "tbviz.callbacks.deconvnet",
    "AttributionCallback": "tbviz.callbacks.attribution",
    "SynthesisCallback": "tbviz.callbacks.synthesis",
    "FeatureMapsCallback": "tbviz.callbacks.feature_maps",
    "ConvergenceCallback": "tbviz.callbacks.convergence",
}

#: The public modules, by the short names the docs use.
_MODULES = {
    "deconvnet": "tbviz.methods.deconvnet",
    "scan": "tbviz.methods.scan",
    "attribution": "tbviz.methods.attribution",
    "sanity": "tbviz.methods.attribution.sanity",
    "faithfulness": "tbviz.methods.faithfulness",
    "synthesis": "tbviz.methods.synthesis",
    "objectives": "tbviz.methods.objectives",
    "parameterization": "tbviz.methods.parameterization",
    "feature_maps": "tbviz.methods.feature_maps",
    "backward_rules": "tbviz.core.backward_rules",
    "receptive_field": "tbviz.core.receptive_field",
    "tokens": "tbviz.core.tokens",
    "layers": "tbviz.core.layers",
}

__all__ = list(_CALLBACKS) + list(_MODULES)


def __getattr__(name):
    if name in _CALLBACKS:
        return getattr(importlib.import_module(_CALLBACKS[name]), name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'tbviz' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_CALLBACKS, *_MODULES])
