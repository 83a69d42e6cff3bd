"""How alike two representations of the same inputs are: linear CKA, biased and debiased.

Centered kernel alignment (Kornblith et al. 2019) compares two activation
matrices ``a`` ``(n, p)`` and ``b`` ``(n, q)`` of the same ``n`` inputs through
their ``n x n`` Gram matrices ``K = a a^T`` and ``L = b b^T``::

    CKA(K, L) = <C(K), C(L)> / (||C(K)|| ||C(L)||)        (Frobenius inner product)

a cosine between two centered Gram matrices, so it is 1 for identical inputs and
does not change under orthogonal transforms, isotropic scaling or shifts of either
side. The centering ``C`` makes the two variants:

* ``debiased=False``: double centering ``H K H`` (``H = I - 11^T/n``), i.e. the
  biased HSIC estimator of Gretton et al. 2005. It is biased upwards: for
  independent isotropic Gaussian features it is about ``sqrt(pq / ((n+p)(n+q)))``
  (``p/(n+p)`` for ``p = q``), near 0 only when there are many more inputs than
  features and near 1 when the features far outnumber the inputs.
* ``debiased=True``: U-centering (Szekely & Rizzo 2014), the inner product of which
  is the unbiased HSIC estimator of Song et al. 2012, as Nguyen et al. 2020 use for
  debiased CKA. Near 0 for independent inputs whatever the width; needs ``n >= 4``.
  Still a cosine, so within [-1, 1].

Only the Gram matrices enter, so a layer of any width is summarized exactly by an
``n x n`` matrix (:func:`gram`): that is the fixed-size sketch the convergence
callback keeps per layer, with no approximation error.

Conv activations ``(n, h, w, c)`` are reduced per input by ``reduce``:
``"flatten"`` (default) keeps every position, so CKA sees where features are;
``"pool"`` averages the channels over positions first, so it sees only which
features are present.

Example:
    >>> import numpy as np
    >>> from tbviz.stats.cka import cka
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(50, 8))
    >>> q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    >>> round(cka(a, 3 * a @ q + 1), 6)                      # rotated, scaled, shifted
    1.0
    >>> abs(cka(a, rng.normal(size=(50, 8)), debiased=True)) < 0.1
    True
"""

from __future__ import annotations

import numpy as np

REDUCTIONS = ("flatten", "pool")


def features(activation, reduce: str = "flatten") -> np.ndarray:
    """An ``(n, ...)`` activation as an ``(n, features)`` float64 matrix.

    ``reduce="flatten"``: every position and channel of an input is a feature;
    ``"pool"``: channels (last axis) averaged over the positions in between.

    >>> features(np.ones((2, 3, 3, 4)), "pool").shape
    (2, 4)
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    a = np.asarray(activation, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"activations must be (n, features) or (n, ..., channels), got shape "
                         f"{a.shape}")
    if reduce == "pool" and a.ndim > 2:
        a = a.mean(axis=tuple(range(1, a.ndim - 1)))
    return a.reshape(len(a), -1)


def gram(activation, reduce: str = "flatten") -> np.ndarray:
    """The ``(n, n)`` linear Gram matrix of the mean-centered features: all that linear CKA
    needs of one representation, whatever its width.

    Centering the features before the product (rather than the Gram matrix after it)
    keeps a large common mean, as ReLU outputs have, from swamping float rounding.

    >>> gram(np.eye(3)).round(3)
    array([[ 0.667, -0.333, -0.333],
           [-0.333,  0.667, -0.333],
           [-0.333, -0.333,  0.667]])
    """
    x = features(activation, reduce)
    x = x - x.mean(axis=0)
    return x @ x.T


def double_center(k) -> np.ndarray:
    """``H K H`` with ``H = I - 11^T/n``: rows and columns of ``k`` with mean 0."""
    k = np.asarray(k, dtype=np.float64)
    k = k - k.mean(axis=0, keepdims=True)
    return k - k.mean(axis=1, keepdims=True)


def u_center(k) -> np.ndarray:
    """The U-centered ``k`` (Szekely & Rizzo 2014): zero diagonal, and off the diagonal
    ``k_ij`` minus its row and column sums over ``n - 2`` plus its total over
    ``(n - 1)(n - 2)``. ``<u_center(K), u_center(L)> / (n (n - 3))`` is the unbiased HSIC
    estimator of Song et al. 2012."""
    k = np.array(k, dtype=np.float64)
    n = len(k)
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 inputs, got {n}")
    np.fill_diagonal(k, 0.0)
    rows = k.sum(axis=1, keepdims=True)
    u = k - rows / (n - 2) - rows.T / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def cka_from_grams(k, l, debiased: bool = False) -> float:
    """Linear CKA of two ``(n, n)`` Gram matrices of the same inputs (see the module doc).

    ``nan`` when one side is constant over the inputs (nothing to align).

    >>> k = gram(np.arange(12.0).reshape(4, 3) ** 2)
    >>> round(cka_from_grams(k, 2 * k, debiased=True), 6)
    1.0
    """
    k, l = np.asarray(k, dtype=np.float64), np.asarray(l, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"Gram matrices must be square and of one size, got {k.shape} and "
                         f"{l.shape}")
    center = u_center if debiased else double_center
    kc, lc = center(k), center(l)
    norms = np.linalg.norm(kc) * np.linalg.norm(lc)
    return float(np.sum(kc * lc) / norms) if norms > 0 else float("nan")


def cka(a, b, debiased: bool = False, reduce: str = "flatten") -> float:
    """Linear CKA between activations ``a`` and ``b`` of the same ``n`` inputs.

    ``a``, ``b``: ``(n, features)`` or ``(n, ..., channels)`` (reduced by ``reduce``:
    ``"flatten"`` or ``"pool"``); widths may differ. ``debiased=True`` uses the
    unbiased HSIC estimator (needs ``n >= 4``).

    >>> x = np.random.default_rng(1).normal(size=(20, 5))
    >>> round(cka(x, -x), 6), round(cka(x, x, debiased=True), 6)
    (1.0, 1.0)
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[:1] != b.shape[:1]:
        raise ValueError(f"a and b must hold the same inputs (same first axis), got shapes "
                         f"{a.shape} and {b.shape}")
    return cka_from_grams(gram(a, reduce), gram(b, reduce), debiased)
