"""Run by test_backend_numbers.py under one KERAS_BACKEND: the same model and weights (a
``.weights.h5`` file, written by the first backend that runs), the same images, and every
number a user compares across backends, saved to an ``.npz``.

    KERAS_BACKEND=jax python backend_numbers.py WEIGHTS.weights.h5 OUT.npz
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tbviz import attribution, backend, deconvnet, stats  # noqa: E402

weights_path, out_path = sys.argv[1], sys.argv[2]
L = keras.layers


def model():
    """ReLU, SiLU and GELU layers, max-pooling and a dense head: every rule meets each."""
    x = keras.Input((16, 16, 3))
    y = L.Conv2D(6, 3, padding="same", activation="relu", name="relu_conv")(x)
    y = L.MaxPooling2D(name="pool")(y)
    y = L.Conv2D(8, 3, padding="same", activation="silu", name="silu_conv")(y)
    y = L.Conv2D(8, 3, activation="gelu", name="gelu_conv")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, L.Dense(4, name="head")(y), name="numbers")


m = model()
if not os.path.exists(weights_path):
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(0, 0.4, w.shape).astype("float32") for w in m.get_weights()])
    m.save_weights(weights_path)
m.load_weights(weights_path)

images = np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
out = {"backend": np.array(backend.name)}
for layer in ("relu_conv", "silu_conv", "gelu_conv"):
    units = deconvnet.strongest(m, images, layer, k=4)
    out[f"{layer}/units"] = np.array([u[:4] for u in units])
    for rule in ("deconvnet", "guided", "gradient"):
        out[f"{layer}/{rule}"] = deconvnet.project(m, images, layer, units, rule=rule)
out["saliency"] = attribution.saliency(m, images, target=[0, 1, 2, 3])
out["grad_cam"] = attribution.grad_cam(m, images, target=[0, 1, 2, 3], layer="gelu_conv")
out["occlusion"] = attribution.occlusion(m, images, target=[0, 1, 2, 3], patch=4)
found = deconvnet.scan(m, np.concatenate([images] * 8), ["silu_conv"], k=3)
out["scan/units"] = np.array([[ch] + list(u[:4]) for ch, us in found["silu_conv"].items()
                              for u in us])
acts = deconvnet.projector(m, ["relu_conv", "gelu_conv"]).activations(images)
out["cka"] = np.array(stats.cka(acts["relu_conv"], acts["gelu_conv"]))
np.savez(out_path, **out)
print("ok", backend.name)
