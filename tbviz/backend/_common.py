"""What the backends' sides of the seam share: shapes for tracing (JAX, PyTorch), and
wrapping the rectifiers of a backend's functional module while a rule is on (all three:
TensorFlow for the rectifiers it writes out of several ops).

>>> concrete([(None, 8, 8, 3)])
([(1, 8, 8, 3)], True, False)
"""

from __future__ import annotations

import contextlib
import functools


def concrete(shapes):
    """``(shapes with None sizes as 1, batch free?, other sizes free?)``."""
    free = any(s and s[0] is None for s in shapes)
    unknown = any(d is None for s in shapes for d in s[1:])
    return [tuple(1 if d is None else d for d in s) for s in shapes], free, unknown


def with_free_batch(shape, free: bool) -> tuple:
    """An output ``shape`` with ``None`` on its batch axis when the inputs' batch was free."""
    return ((None,) + tuple(shape[1:])) if free and len(shape) else tuple(shape)


@contextlib.contextmanager
def rectifiers_ruled(module, names, rule: str, backward, ruled, state, active=lambda: True):
    """Within the block, ``module.<name>`` for each of ``names`` (those it has) applies
    ``rule``'s ``backward`` through ``ruled`` (the backend's hook), except under a ruled
    layer's activation (``state.inside``) or where ``active()`` says no. Yields
    ``{"ruled": [...], "missed": [...]}``, filled as calls come."""
    sites: dict = {"ruled": [], "missed": []}
    originals = {name: getattr(module, name) for name in names if hasattr(module, name)}

    def patched(name, original):
        ruled_fn = ruled(original, backward, needs_slope=rule != "deconvnet")

        @functools.wraps(original)
        def call(x, *args, **kwargs):
            if getattr(state, "inside", 0) or not active():  # state None: no such count
                return original(x, *args, **kwargs)
            label = f"{name} call"
            if label not in sites["ruled"]:
                sites["ruled"].append(label)
            return ruled_fn(x, *args, **kwargs)
        return call

    try:
        for name, original in originals.items():
            setattr(module, name, patched(name, original))
        yield sites
    finally:
        for name, original in originals.items():
            setattr(module, name, original)
