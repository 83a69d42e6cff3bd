"""Run by test_distributed.py in a subprocess: fit a small model with TensorBoardViz under a
tf.distribute strategy and print the loss history as JSON on the last line.

    python distributed_fit.py LOG_DIR {single|mirrored|multiworker}

The JSON also holds ``first_step``: the weights (flattened) before and after the first
step, ``w0`` and ``w1``, and that step's ``xent``.

multiworker reads TF_CONFIG, like any MultiWorkerMirroredStrategy job. The data are
images only, labels derived from them inside the loss (as the style pipeline's are):
Keras 3.15's fit() under MultiWorkerMirroredStrategy cannot take (x, y) datasets (its
symbolic build calls strategy.reduce on the tuple of per-replica values), nor scalar
logs (tensorflow/tensorflow#72388; see Brightness.train_step).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

log_dir, mode = sys.argv[1], sys.argv[2]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif mode == "multiworker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tbviz  # noqa: E402
from models import sequential  # noqa: E402


class Brightness(keras.Model):
    """Classifies images by mean brightness (3 bins); the labels come from x itself."""

    def __init__(self, global_batch):
        super().__init__(name="brightness")
        self.net = sequential()  # no BatchNorm or Dropout: per-replica statistics would differ
        self.global_batch = global_batch

    def call(self, x, training=False):
        return self.net(x, training=training)

    def per_example_loss(self, x, y_pred):
        labels = tf.clip_by_value(tf.cast(tf.reduce_mean(x, [1, 2, 3]) * 6 - 2, tf.int32), 0, 2)
        return keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.reduce_mean(self.per_example_loss(x, y_pred))

    def train_step(self, x):
        with tf.GradientTape() as tape:
            per_example = self.per_example_loss(x, self(x, training=True))
            # Replica gradients are summed: scale by the global batch.
            scaled = tf.reduce_sum(per_example) / self.global_batch
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        loss = tf.reduce_mean(per_example)  # Keras averages the replicas' logs
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 reduces each log with strategy.reduce(..., axis=0) under this
            # strategy (tensorflow/tensorflow#72388): give it an axis.
            loss = tf.reshape(loss, [1])
        return {"xent": loss}  # not "loss": Keras would report its untouched loss tracker


class FirstStep(keras.callbacks.Callback):
    """Keeps what the first step did: the weights before and after it, and its loss."""

    def weights(self):
        return np.concatenate([w.ravel() for w in self.model.get_weights()]).tolist()

    def on_train_begin(self, logs=None):
        self.record = {"w0": self.weights()}

    def on_train_batch_end(self, batch, logs=None):
        if "w1" not in self.record:
            self.record.update(w1=self.weights(),
                               xent=float(np.asarray(logs["xent"]).reshape(-1)[0]))


keras.utils.set_random_seed(0)
GLOBAL_BATCH = 16
with strategy.scope():
    model = Brightness(GLOBAL_BATCH)
    model.compile(keras.optimizers.SGD(0.05))
    model(tf.zeros((1, 12, 12, 3)))
rng = np.random.default_rng(0)
x = rng.random((64, 12, 12, 3), dtype=np.float32)
ds = tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
ds = ds.with_options(options)  # every worker sees the same global batches, split per replica
# scan_data: every worker scans its shard of x at each trigger, merged by a collective
viz = tbviz.TensorBoardViz(log_dir, probe_images=x[:4], losses={"every_n_steps": 1},
                           attribution=["saliency", "grad_cam"],
                           deconvnet={"scan_data": x, "channels": 2})
first = FirstStep()
hist = model.fit(ds, epochs=2, verbose=0, callbacks=[first, viz])
print(json.dumps({**{k: [float(v) for v in vs] for k, vs in hist.history.items()},
                  "first_step": first.record}))
