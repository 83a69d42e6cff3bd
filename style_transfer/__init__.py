"""Fast neural style transfer (Johnson et al. 2016), instrumented with tbviz.

Written once with ``keras.ops``, Keras layers, NumPy and Pillow: it trains, stylizes and
logs every tbviz dashboard on each Keras 3 backend (``KERAS_BACKEND=tensorflow``, ``jax``
or ``torch``), and imports TensorFlow only where it is the backend. Importing the package
registers the transform-net's layers with Keras, so a saved transform-net loads as any
Keras model does, on any backend, and on TensorFlow imports it without its start-up
lines (:mod:`style_transfer.quiet`)::

    import keras, style_transfer
    net = keras.saving.load_model("runs/demo/transform_net.keras")
    net = style_transfer.load_transform_net("runs/demo/transform_net.keras")  # float32, checked

Modules: :mod:`~style_transfer.transform_net`, :mod:`~style_transfer.vgg` (the loss
network), :mod:`~style_transfer.losses`, :mod:`~style_transfer.data`,
:mod:`~style_transfer.model`, :mod:`~style_transfer.callbacks`,
:mod:`~style_transfer.checkpoints`, :mod:`~style_transfer.distribute` (``tf.distribute``),
:mod:`~style_transfer.train` (the recipe),
:mod:`~style_transfer.stylize`, :mod:`~style_transfer.demo` and
:mod:`~style_transfer.cli` (the ``style-transfer`` command).
"""

from style_transfer.quiet import import_tensorflow, keras_backend

if keras_backend() == "tensorflow":
    import_tensorflow()

from style_transfer.transform_net import build_transform_net, load_transform_net  # noqa: E402

__all__ = ["build_transform_net", "load_transform_net"]
