"""tbviz: see what a Keras model is doing while it trains, in TensorBoard.

Add one callback to ``model.fit`` and open ``tensorboard --logdir runs``::

    import tbviz
    model.fit(x, y, epochs=5,
              callbacks=[tbviz.TensorBoardViz("runs/exp1", probe_images=x[:4], probe_labels=y[:4])])
"""

import importlib

__version__ = "0.1.0"

# name -> module. Imported on first use (PEP 562): TensorBoard imports tbviz.plugin, the
# dashboard, into its server, which must not load TensorFlow (~5 s and ~500 MB).
_EXPORTS = {
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

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tbviz' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
