"""Training on several devices or machines: ``tf.distribute``, the one place the pipeline
needs TensorFlow for itself.

Keras 3 trains under a ``tf.distribute`` strategy on TensorFlow only (JAX and PyTorch
have distribution APIs of their own, which the pipeline does not use yet). Every
function here is backend-neutral to call: on JAX and PyTorch nothing is distributed,
and TensorFlow is never imported.

* :func:`make_strategy`: ``--strategy`` by name (``"none"``, ``"mirrored"``,
  ``"multiworker"``);
* :func:`replicas`: how many replicas share the current step (1 outside a strategy);
* :func:`is_multiworker`: whether a strategy spans several processes;
* :func:`for_logs`: a scalar log value in the shape Keras can reduce under ``strategy``.

Example:
    >>> make_strategy("none") is None
    True
    >>> replicas()
    1
"""

from __future__ import annotations

import keras

STRATEGIES = ("none", "mirrored", "multiworker")


def _tensorflow():
    """TensorFlow, when it is the backend (else ``None``): already imported by Keras then."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


def make_strategy(name: str, cpu_replicas: int | None = None):
    """The ``tf.distribute`` strategy called ``name`` (``None`` for ``"none"``).

    ``"mirrored"``: every GPU of this machine; ``"multiworker"``: the machines of
    ``TF_CONFIG``. ``cpu_replicas`` (tests and benchmarks on machines without
    GPUs): split the CPU into that many logical devices first, and mirror over
    them. Must run before TensorFlow executes anything. Other backends: ``"none"``
    only, else ``ValueError``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown --strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "none" and not cpu_replicas:
        return None
    tf = _tensorflow()
    if tf is None:
        raise ValueError(f"--strategy {name} (and --cpu-replicas) need the TensorFlow backend "
                         f"(tf.distribute); this Keras runs on {keras.backend.backend()!r}. "
                         "Set KERAS_BACKEND=tensorflow, or train on one device")
    devices = None
    if cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError:  # TensorFlow already started: fine if it has the devices
            pass
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        if len(devices) < cpu_replicas:
            raise ValueError(f"--cpu-replicas {cpu_replicas}: TensorFlow already started with "
                             f"{len(devices)} CPU device(s)")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def replicas() -> int:
    """The number of replicas of the strategy in scope (1 without one, or off TensorFlow).

    Each replica's loss is its share of the global batch's: Keras sums the replicas'
    gradients, so a loss computed by hand is divided by this, as Keras' own losses are.
    """
    tf = _tensorflow()
    return 1 if tf is None else tf.distribute.get_strategy().num_replicas_in_sync


def is_multiworker(strategy) -> bool:
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` (``False`` for ``None``)."""
    tf = _tensorflow()
    return tf is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def for_logs(value):
    """``value`` (a scalar) as Keras can reduce it across replicas: under
    ``MultiWorkerMirroredStrategy`` Keras 3 averages each log with
    ``strategy.reduce(..., axis=0)`` (tensorflow/tensorflow#72388), which needs an axis, so
    a vector of one there; unchanged elsewhere."""
    tf = _tensorflow()
    if tf is not None and is_multiworker(tf.distribute.get_strategy()):
        return keras.ops.reshape(value, (1,))
    return value
