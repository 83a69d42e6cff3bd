"""One scan of a fixed model and data, single-device or under a tf.distribute strategy.

Usage: scan_shards.py single|mirrored|multiworker  (multiworker reads TF_CONFIG).
Prints the units, the sums of their crops and ``(process count, index)`` as one JSON line.
Under MultiWorkerMirroredStrategy each worker scans every other image of the same
tf.data pipeline and the workers' top-k are merged by one collective all_gather.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

mode = sys.argv[1]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import models  # noqa: E402
from tbviz import backend  # noqa: E402
from tbviz.methods.deconvnet import scan  # noqa: E402

if mode == "single":
    strategy = tf.distribute.get_strategy()
elif mode == "mirrored":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

rng = np.random.default_rng(0)
# 203 images in batches of 16: the last global batch leaves some replicas little or nothing
images = rng.uniform(0, 255, (203, 16, 16, 3)).astype("float32")
labels = rng.integers(0, 3, 203)
with strategy.scope():
    model = models.sequential((16, 16, 3))
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.weights])
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    found = scan(model, ds, ["conv1", "conv2", "head"], k=5, max_batch=8)
    processes = backend.processes(model)  # (count, index): the share this process scanned

units = {f"{layer}:{ch}": [list(u) for u in us]
         for layer in found for ch, us in found[layer].items()}
crop_sums = [float(c.sum()) for layer in found for ch in found[layer]
             for c in found.crops[layer][ch]]
print(json.dumps({"n_images": found.n_images, "units": units, "crop_sums": crop_sums,
                  "processes": processes}))
