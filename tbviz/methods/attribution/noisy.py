"""SmoothGrad's siblings: SquareGrad and VarGrad, the second moments of the noisy gradients.

Both draw the same noisy copies as :func:`~tbviz.methods.attribution.gradients.smoothgrad`
(same ``samples``, ``noise`` and ``seed`` give the same copies), see
:func:`~tbviz.methods.attribution.gradients.noisy_moments`. Hooker et al. 2019 ("A
benchmark for interpretability methods in deep neural networks") found both more
faithful than SmoothGrad on their benchmark; Adebayo et al. 2018 introduced VarGrad.

>>> import numpy as np, keras
>>> from tbviz.methods.attribution.noisy import vargrad
>>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
>>> vargrad(m, np.random.rand(1, 8, 8, 3), target=0, samples=4).shape
(1, 8, 8, 3)
"""

from __future__ import annotations

import numpy as np

from tbviz.methods.attribution.gradients import noisy_moments
from tbviz.methods.attribution.targets import _prepare


def squaregrad(model, images, target, samples: int = 25, noise: float = 0.15,
               max_batch: int = 32, seed: int | None = 0) -> np.ndarray:
    """SquareGrad (Hooker et al. 2019): the mean over noisy copies of the squared saliency
    gradient, ``E[g^2]``, per pixel and channel (>= 0).

    As Xplique's ``SquareGrad`` and Captum's ``NoiseTunnel(nt_type="smoothgrad_sq")``;
    the noise is ``noise`` of each image's value range (Xplique takes an absolute sigma).

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> bool((squaregrad(m, np.random.rand(2, 8, 8, 3), target=1, samples=3) >= 0).all())
    True
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    _, squares = noisy_moments(model, x, idx, fn, samples, noise, max_batch, seed)
    return squares.astype(np.float32)


def vargrad(model, images, target, samples: int = 25, noise: float = 0.15,
            max_batch: int = 32, seed: int | None = 0) -> np.ndarray:
    """VarGrad (Adebayo et al. 2018): the variance over noisy copies of the saliency
    gradient, ``E[g^2] - E[g]^2`` (the population variance, dividing by ``samples``).

    As Xplique's ``VarGrad`` and Captum's ``NoiseTunnel(nt_type="vargrad")``. Zero on a
    linear model, whose gradient no noise changes.

    >>> import numpy as np, keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
    ...                       keras.layers.Dense(2)])
    >>> float(np.abs(vargrad(m, np.random.rand(1, 8, 8, 3), target=0, samples=3)).max()) < 1e-6
    True
    """
    x, idx, fn, max_batch = _prepare(model, images, target, max_batch)
    mean, squares = noisy_moments(model, x, idx, fn, samples, noise, max_batch, seed)
    return np.maximum(squares - mean * mean, 0.0).astype(np.float32)
