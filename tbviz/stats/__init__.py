"""Statistics over representations and training: how alike two layers' features are (CKA),
dead ReLUs and how far a step moved the weights. Pure functions over arrays.

>>> import numpy as np
>>> from tbviz import stats
>>> x = np.random.default_rng(0).normal(size=(16, 8))
>>> round(stats.cka(x, 2 * x), 6)
1.0
"""

from tbviz.stats.cka import cka, cka_from_grams, features, gram  # noqa: F401
from tbviz.stats.training import update_ratio, zero_fractions  # noqa: F401
