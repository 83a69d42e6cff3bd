"""tbviz: see what a Keras model is doing while it trains, in TensorBoard.

Add one callback to ``model.fit`` and open ``tensorboard --logdir runs``::

    import tbviz
    model.fit(x, y, epochs=5,
              callbacks=[tbviz.TensorBoardViz("runs/exp1", probe_images=x[:4])])
"""

__version__ = "0.1.0"

from tbviz.callbacks.attribution import AttributionCallback  # noqa: E402
from tbviz.callbacks.feature_maps import FeatureMapsCallback  # noqa: E402
from tbviz.callbacks.synthesis import SynthesisCallback  # noqa: E402
