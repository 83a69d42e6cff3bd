"""How a synthesized image is parameterized and jittered: Olah et al. 2017 ("Feature
Visualization", Distill), as Lucid implements it, written with ``keras.ops`` for every backend.

* **Fourier parameterization** (:func:`fourier_basis`, :func:`render`): the image is the
  inverse real 2-D FFT of a spectrum whose coefficient at frequency ``f`` is scaled by
  ``1 / max(f, 1 / max(H, W))`` (``decay = 1``: the ``1/f`` amplitude of natural images)
  times ``sqrt(H W)``, then divided by 4; the spectrum starts as ``N(0, 0.01^2)``. All of
  it as Lucid's ``fft_image`` (``lucid/optvis/param/spatial.py``). Gradient steps on the
  spectrum move all frequencies at the rate natural images have them, so the high
  frequencies that pixel ascent piles up never build. The inverse FFT is two matrix
  products with a fixed cosine/sine basis: the same numbers on every backend.
* **Colour decorrelation** (:func:`to_rgb`): the parameters' 3 channels live in a
  decorrelated colour space, mapped to RGB by :data:`COLOR_CORRELATION_SQRT` (the square
  root, by SVD, of ImageNet's colour correlation, as Lucid's ``color_correlation_svd_sqrt``
  in ``lucid/optvis/param/color.py``, its columns divided by the largest column norm), then a
  sigmoid onto the value range. Images with another number of channels skip the matrix.
* **Transformation robustness** (:func:`transform_matrices`, :func:`transformed`): each
  step sees the image randomly shifted, scaled and rotated, with Lucid's
  ``standard_transforms`` (``lucid/optvis/transform.py``): pad 12 (constant 0.5), jitter 8,
  scale from ``1 + (i - 5) / 50``, ``i = 0..10``, rotate by ``-10..10`` degrees (0 five
  more times), jitter 4, all at 224 px. Here the model keeps its input size, so the
  shifts are of ``8 * side / 224`` and ``4 * side / 224`` pixels (at least 1), the padding
  is the mid-gray that the moves bring in, and the whole chain is one bilinear affine warp
  per image (``keras.ops.image.affine_transform``).

>>> import numpy as np
>>> from tbviz.methods import parameterization as pz
>>> basis = pz.fourier_basis(6, 8)
>>> basis.scale.shape        # (H, W // 2 + 1, 1): one factor per frequency
(6, 5, 1)
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np

#: Lucid's ``color_correlation_svd_sqrt`` (``lucid/optvis/param/color.py``): the square
#: root of ImageNet's RGB correlation, rows R, G, B.
COLOR_CORRELATION_SQRT = np.array([[0.26, 0.09, 0.02],
                                   [0.27, 0.00, -0.05],
                                   [0.27, -0.09, 0.03]])
#: The same, divided by its largest column norm (what Lucid multiplies by).
COLOR_MATRIX = (COLOR_CORRELATION_SQRT
                / np.linalg.norm(COLOR_CORRELATION_SQRT, axis=0).max()).astype(np.float32)

#: Lucid's ``standard_transforms``, as :func:`transform_matrices` takes them: two jitters
#: (pixels at 224 px, scaled to the image), the scales and the angles (degrees) drawn from.
STANDARD = {"jitter": (8, 4), "scales": tuple(1 + (i - 5) / 50 for i in range(11)),
            "angles": tuple(range(-10, 11)) + (0,) * 5}
#: The image side Lucid's pixel sizes are given at.
LUCID_SIDE = 224


class Basis(NamedTuple):
    """The fixed matrices of a ``(H, W)`` inverse real FFT and the spectrum's scale."""

    cos_h: np.ndarray  # (H, H): cos(2 pi u h / H) / H
    sin_h: np.ndarray
    cos_w: np.ndarray  # (W // 2 + 1, W): c_v cos(2 pi v w / W) / W, c_v the Hermitian weight
    sin_w: np.ndarray
    scale: np.ndarray  # (H, W // 2 + 1, 1)


def frequencies(h: int, w: int) -> np.ndarray:
    """``|f|`` in cycles per pixel of each coefficient of a ``(h, w)`` real FFT, ``(h, w//2+1)``.

    >>> frequencies(4, 4)[0].tolist()
    [0.0, 0.25, 0.5]
    """
    return np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)


def fourier_basis(h: int, w: int, decay: float = 1.0) -> Basis:
    """The :class:`Basis` of ``(h, w)`` images: :func:`render` of a spectrum ``F`` (real and
    imaginary parts, scaled by ``scale``) is ``numpy.fft.irfft2(F, s=(h, w))``."""
    u = np.arange(h)
    ang_h = 2 * np.pi * np.outer(u, u) / h
    v, x = np.arange(w // 2 + 1), np.arange(w)
    ang_w = 2 * np.pi * np.outer(v, x) / w
    weight = np.full(len(v), 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0  # the Nyquist column stands for itself
    scale = 1.0 / np.maximum(frequencies(h, w), 1.0 / max(h, w)) ** decay * np.sqrt(h * w)
    f32 = np.float32
    return Basis((np.cos(ang_h) / h).astype(f32), (np.sin(ang_h) / h).astype(f32),
                 (weight[:, None] * np.cos(ang_w) / w).astype(f32),
                 (weight[:, None] * np.sin(ang_w) / w).astype(f32), scale[..., None].astype(f32))


def spectrum(rng, batch: int, h: int, w: int, channels: int, sd: float = 0.01) -> np.ndarray:
    """A start spectrum ``(B, 2, H, W // 2 + 1, C)`` (real, imaginary), ``N(0, sd^2)``."""
    return rng.normal(0, sd, (batch, 2, h, w // 2 + 1, channels)).astype(np.float32)


def irfft2(real, imag, basis: Basis):
    """The inverse real 2-D FFT of ``(B, H, W // 2 + 1, C)`` parts, ``(B, H, W, C)``: along
    the height a complex inverse DFT, along the width a real one, by matrix products."""
    g_re = (keras.ops.einsum("hu,buvc->bhvc", basis.cos_h, real)
            - keras.ops.einsum("hu,buvc->bhvc", basis.sin_h, imag))
    g_im = (keras.ops.einsum("hu,buvc->bhvc", basis.sin_h, real)
            + keras.ops.einsum("hu,buvc->bhvc", basis.cos_h, imag))
    return (keras.ops.einsum("bhvc,vw->bhwc", g_re, basis.cos_w)
            - keras.ops.einsum("bhvc,vw->bhwc", g_im, basis.sin_w))


def to_rgb(t, decorrelate: bool):
    """``(B, H, W, C)`` unbounded values to ``[0, 1]``: the colour matrix (3 channels, when
    ``decorrelate``), then a sigmoid."""
    if decorrelate and t.shape[-1] == 3:
        t = keras.ops.einsum("bhwc,dc->bhwd", t, COLOR_MATRIX)
    return keras.ops.sigmoid(t)


def render(params, basis: Basis, decorrelate: bool, lo: float, hi: float):
    """The image ``(B, H, W, C)`` in ``[lo, hi]`` of a spectrum ``(B, 2, H, W//2+1, C)``."""
    # keras.ops, not *: NumPy times a torch tensor fails
    real = keras.ops.multiply(params[:, 0], basis.scale)
    imag = keras.ops.multiply(params[:, 1], basis.scale)
    t = irfft2(real, imag, basis) / 4.0
    return lo + (hi - lo) * to_rgb(t, decorrelate)


def check_transforms(transforms) -> dict | None:
    """``"standard"`` (:data:`STANDARD`), ``None`` (no transforms) or a dict with any of
    ``jitter`` (pixels at 224 px, one number or several applied in turn), ``scales`` and
    ``angles`` (degrees) to draw from; returns the dict, or a ``ValueError``.

    >>> check_transforms({"angles": [0, 5]})["scales"]
    (1.0,)
    """
    if transforms is None:
        return None
    if isinstance(transforms, str):
        if transforms != "standard":
            raise ValueError(f"transforms must be 'standard', None or a dict with jitter, "
                             f"scales and angles; got {transforms!r}")
        return dict(STANDARD)
    if not isinstance(transforms, dict) or set(transforms) - {"jitter", "scales", "angles"}:
        raise ValueError(f"transforms must be 'standard', None or a dict with jitter, scales "
                         f"and angles; got {transforms!r}")
    jitter = transforms.get("jitter", ())
    out = {"jitter": tuple(np.atleast_1d(jitter).tolist()),
           "scales": tuple(np.atleast_1d(transforms.get("scales", (1.0,))).tolist()),
           "angles": tuple(np.atleast_1d(transforms.get("angles", (0,))).tolist())}
    if any(j < 0 for j in out["jitter"]) or any(s <= 0 for s in out["scales"]):
        raise ValueError(f"transforms: jitter must be >= 0 and scales > 0; got {transforms!r}")
    return out


def transform_matrices(rng, spec: dict, batch: int, h: int, w: int) -> np.ndarray:
    """``(B, 8)`` affine warps, one random draw per image: ``keras.ops.image.affine_transform``
    rows mapping each output pixel ``(x, y)`` to the input point it samples. The image is
    shifted by each jitter in turn (a crop's offset, ``0..j`` pixels from the centred crop,
    ``j = max(1, round(jitter * side / 224))``), scaled and rotated about its centre."""
    side = min(h, w)
    shift = np.zeros((batch, 2))
    for j in spec["jitter"]:
        j = max(1, round(j * side / LUCID_SIDE)) if j else 0
        shift += rng.integers(0, j + 1, (batch, 2)) - j / 2
    scale = np.asarray(spec["scales"])[rng.integers(0, len(spec["scales"]), batch)]
    theta = np.deg2rad(np.asarray(spec["angles"])[rng.integers(0, len(spec["angles"]), batch)])
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    # input = R(-theta) / s (output - centre) + centre - shift
    a0, a1, b0, b1 = cos, sin, -sin, cos
    a2 = cx - shift[:, 1] - (a0 * cx + a1 * cy)
    b2 = cy - shift[:, 0] - (b0 * cx + b1 * cy)
    zero = np.zeros(batch)
    return np.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1).astype(np.float32)


def transformed(x, matrices, fill: float):
    """``x`` ``(B, H, W, C)`` warped by :func:`transform_matrices`' rows, bilinearly, with
    ``fill`` where the warp brings in what lies outside the image."""
    return keras.ops.image.affine_transform(x, matrices, interpolation="bilinear",
                                            fill_mode="constant", fill_value=fill)


def high_frequency_share(images) -> np.ndarray:
    """The share of each image's spectral power (per channel, mean removed, summed over
    channels) at radial frequencies above half the Nyquist frequency, 0.25 cycles per pixel:
    ``(N,)``; about 0.1-0.2 for photos, higher for noise (white noise: ``1 - pi/16``).

    >>> rng = np.random.default_rng(0)
    >>> float(high_frequency_share(rng.normal(size=(1, 64, 64, 1)))[0].round(1))
    0.8
    """
    x = np.asarray(images, np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.rfft2(x, axes=(1, 2))) ** 2).sum(-1)
    h, w = x.shape[1:3]
    weight = np.full(w // 2 + 1, 2.0)  # the half spectrum stands for both halves
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    power = power * weight
    high = frequencies(h, w) > 0.25
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * high).sum(axis=(1, 2)) / np.where(total > 0, total, 1),
                    0.0)
