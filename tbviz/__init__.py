"""tbviz: see what a Keras model is doing while it trains, in TensorBoard.

Add one callback to ``model.fit`` and open ``tensorboard --logdir runs``::

    import tbviz
    model.fit(x, y, epochs=5,
              callbacks=[tbviz.TensorBoardViz("runs/exp1", probe_images=x[:4], probe_labels=y[:4])])
"""

from tbviz.callbacks.graph import GraphCallback
from tbviz.callbacks.histograms import HistogramCallback
from tbviz.callbacks.losses import LossCallback
from tbviz.callbacks.tensorboard_viz import TensorBoardViz

__version__ = "0.1.0"

__all__ = ["GraphCallback", "HistogramCallback", "LossCallback", "TensorBoardViz"]
