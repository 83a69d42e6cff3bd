"""A pattern planted at known positions in known images among thousands of noise images, and
a model built to find it (hand-set convolution weights), for the scan tests."""

import keras
import numpy as np

CROSS = np.zeros((5, 5))
CROSS[2, :] = CROSS[:, 2] = 1                 # 9 pixels
EX = np.minimum(np.eye(5) + np.fliplr(np.eye(5)), 1)  # 9 pixels
# (image, row, col, amplitude): the strongest first. Responses of a planted pattern of
# amplitude A lie in [27 A - 27, 27 A] (27 = 9 pixels x 3 channels of noise in [0, 1)), so
# these amplitudes give disjoint ranges, and shifted overlaps (at most 3 pixels) stay below.
PLANTED = {0: [(2999, 10, 4, 10.0), (17, 0, 22, 8.0), (1500, 27, 27, 6.0), (640, 14, 0, 4.0)],
           1: [(5, 2, 2, 9.0), (2048, 20, 12, 7.0), (17, 18, 6, 5.0)]}


def planted_images(n=3000, seed=0):
    x = np.random.default_rng(seed).uniform(0, 1, (n, 32, 32, 3)).astype("float32")
    for ch, template in ((0, CROSS), (1, EX)):
        for i, r, c, amp in PLANTED[ch]:
            x[i, r:r + 5, c:c + 5] += amp * template[..., None]
    return x


def detector():
    """conv1 channel 0 fires on the cross, channel 1 on the X; noise alone gives 0 (bias -27)."""
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(2, 5, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2, name="pool1"),
        keras.layers.Conv2D(2, 1, name="mix"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(2, name="head")], name="detector")
    kernel = np.stack([np.repeat(t[..., None], 3, -1) for t in (CROSS, EX)], -1)
    model.get_layer("conv1").set_weights([kernel.astype("float32"), np.full(2, -27.0, "f4")])
    model.get_layer("mix").set_weights([np.eye(2, dtype="float32")[None, None], np.zeros(2, "f4")])
    return model


def response(images, i, r, c, ch):
    """conv1's unit computed with NumPy, independently of the model."""
    kernel = np.repeat((CROSS, EX)[ch][..., None], 3, -1)
    return max(float((images[i, r:r + 5, c:c + 5].astype(np.float64) * kernel).sum()) - 27, 0)


