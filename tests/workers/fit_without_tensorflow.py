"""Run by test_no_tensorflow.py under KERAS_BACKEND=jax or torch: a whole ``fit`` with
``TensorBoardViz`` at its defaults, then print whether TensorFlow was ever imported.

    KERAS_BACKEND=jax python fit_without_tensorflow.py LOG_DIR
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tbviz  # noqa: E402

log_dir = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
y = rng.integers(0, 3, 32)
model = keras.Sequential([
    keras.Input((16, 16, 3)),
    keras.layers.Rescaling(1 / 255),
    keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
    keras.layers.MaxPooling2D(name="pool"),
    keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
    keras.layers.GlobalAveragePooling2D(name="gap"),
    keras.layers.Dense(3, name="head")], name="small")
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0,
          callbacks=[tbviz.TensorBoardViz(log_dir, probe_images=x[:4], probe_labels=y[:4],
                                          strict=True)])
print(json.dumps({"backend": keras.backend.backend(),
                  "tensorflow": "tensorflow" in sys.modules}))
