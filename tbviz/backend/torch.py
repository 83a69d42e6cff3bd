"""The PyTorch side of the backend seam (see :mod:`tbviz.backend` for the names).

PyTorch runs eagerly: a probe is its function called under ``torch.no_grad`` (gradients
are switched on only where one is taken), reading the model's parameters as they are at
that call. Gradients are ``torch.autograd.grad``, many units at once its
``is_grads_batched`` (vmap over the backward pass), and rules ``torch.autograd.Function``
s. Event files are written by tensorboardX (no TensorFlow).

>>> import numpy as np
>>> from tbviz.backend import torch as tb
>>> tb.function(lambda x: 2 * x)(np.ones(2, "float32")).tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import keras
import numpy as np
import torch
import torch.nn.functional as tnn

from tbviz.backend import _common

#: ``is_grads_batched`` serves many units after one forward pass where vmap covers the ops.
CAN_BATCH_PULLBACKS = True

_state = threading.local()


class Spec(NamedTuple):
    """The shape (``None`` for any size) and dtype of one probe argument."""

    shape: tuple
    dtype: str = "float32"


def _tensor(a):
    return keras.ops.convert_to_tensor(a) if isinstance(a, np.ndarray) else a


class Probe:
    """A probe: the function itself, run eagerly without autograd unless it asks for it."""

    traces = 0  # nothing is compiled

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        with torch.no_grad():
            return self._fn(*[_tensor(a) for a in args])

    def trace(self, *specs):
        """The output shapes for ``specs``, from one call on zeros (``None`` sizes as 1,
        given back as ``None`` on the batch axis)."""
        shapes, free, unknown = _common.concrete([s.shape for s in specs])
        if unknown:  # sizes only a call will tell (crops): checked then
            return None
        outs = self(*[np.zeros(shape, s.dtype) for shape, s in zip(shapes, specs)])
        return keras.tree.map_structure(lambda o: _common.with_free_batch(o.shape, free), outs)


def batch_refusals(probe: Probe, specs) -> list:
    """Ops :func:`pullback_batched` is known to refuse: none known here (a failure shows when
    the vectorized probe first runs, and units then go one row each)."""
    return []


def function(fn, models=(), signature=None) -> Probe:
    return Probe(fn)


def tracing() -> bool:
    """Activation rules apply wherever the model runs (PyTorch runs eagerly)."""
    return True


# -- gradients --------------------------------------------------------------------------------

def vjp(f, *primals, has_aux: bool = False):
    """``(f(*primals), pullback)``; ``pullback(cotangent)`` gives one gradient per primal
    (zeros where ``f`` does not depend on it); ``pullback.batched(cotangents)`` many at once.
    ``has_aux``: ``f`` returns ``(out, aux)`` and this ``(out, pullback, aux)``."""
    xs = [_tensor(p).detach().requires_grad_(True) for p in primals]
    with torch.enable_grad():
        result = f(*xs)
    ys = result[0] if has_aux else result
    flat = [y for y in keras.tree.flatten(ys)]

    def grads(cotangent, batched):
        cots = keras.tree.flatten(cotangent)
        pairs = [(y, c) for y, c in zip(flat, cots) if y.requires_grad]
        if not pairs:
            shape = (lambda x: (cots[0].shape[0],) + tuple(x.shape)) if batched else (
                lambda x: tuple(x.shape))
            return tuple(torch.zeros(shape(x), dtype=x.dtype, device=x.device) for x in xs)
        got = torch.autograd.grad([y for y, _ in pairs], xs, [c for _, c in pairs],
                                  retain_graph=True, allow_unused=True,
                                  is_grads_batched=batched)
        out = []
        for g, x in zip(got, xs):
            if g is None:
                size = ((cots[0].shape[0],) if batched else ()) + tuple(x.shape)
                g = torch.zeros(size, dtype=x.dtype, device=x.device)
            out.append(g.detach())
        return tuple(out)

    def pullback(cotangent):
        return grads(cotangent, False)

    pullback.batched = lambda cotangents: grads(cotangents, True)
    out = keras.tree.map_structure(lambda y: y.detach(), ys)
    if has_aux:
        return out, pullback, keras.tree.map_structure(
            lambda t: t.detach() if torch.is_tensor(t) else t, result[1])
    return out, pullback


def pullback_batched(pullback, cotangents):
    """``pullback`` of each row of ``cotangents`` at once (PyTorch's ``is_grads_batched``)."""
    return pullback.batched(cotangents)


def variable_gradients(fn, variables):
    """``(aux, grads)``: ``fn()`` returns ``(loss, aux)``; one gradient per variable,
    ``None`` where the loss does not depend on it (or it is frozen)."""
    variables = list(variables)
    with torch.enable_grad():
        loss, aux = fn()
    params = [v.value for v in variables]
    wanted = [i for i, p in enumerate(params) if p.requires_grad]
    grads = [None] * len(params)
    if wanted and loss.requires_grad:
        got = torch.autograd.grad(loss, [params[i] for i in wanted], allow_unused=True)
        for i, g in zip(wanted, got):
            grads[i] = None if g is None else g.detach()
    return keras.tree.map_structure(lambda t: t.detach() if torch.is_tensor(t) else t, aux), grads


# -- the activation-rule hook -----------------------------------------------------------------

class _Ruled(torch.autograd.Function):
    """A pointwise function with a backward of its own."""

    @staticmethod
    def forward(ctx, x, f, backward, needs_slope):
        ctx.f, ctx.backward, ctx.needs_slope = f, backward, needs_slope
        ctx.save_for_backward(x)
        return f(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors

        def slope():
            with torch.enable_grad():
                t = x.detach().requires_grad_(True)
                y = ctx.f(t)
                return torch.autograd.grad(y, t, torch.ones_like(y))[0]

        return ctx.backward(dy, slope if ctx.needs_slope else None), None, None, None


def ruled(fn, backward, needs_slope: bool = True):
    """``fn`` (pointwise in its first argument) whose backward is ``backward(dy, slope)``,
    ``slope()`` giving ``fn'(x)`` (autograd of ``fn`` at ``x``)."""
    def apply_ruled(x, *args, **kwargs):
        def plain(t):
            _state.inside = getattr(_state, "inside", 0) + 1
            try:
                return fn(t, *args, **kwargs)
            finally:
                _state.inside -= 1
        return _Ruled.apply(_tensor(x), plain, backward, needs_slope)
    return apply_ruled


#: The rectifiers of ``torch.nn.functional`` that raw calls (``keras.ops.relu``) reach.
_RAW_FUNCTIONS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
                  "softplus", "mish", "hardswish")


def raw_rules(rule: str, backward):
    """Within the block, calls of ``torch.nn.functional`` rectifiers outside any ruled layer
    (a custom layer's ``keras.ops.relu(x)``, ``F.gelu(x)``) get ``rule``'s backward. Yields
    ``{"ruled": [...], "missed": [...]}``, filled as the model runs."""
    return _common.rectifiers_ruled(tnn, _RAW_FUNCTIONS, rule, backward, ruled, _state,
                                    active=torch.is_grad_enabled)


#: Where a model's activations may come from besides ``keras.activations`` and ``keras.ops``.
ACTIVATION_MODULES = (tnn, torch)


def backward_fixes(layer) -> dict:
    """Nothing to fix: every Keras layer's gradient works inside probes here."""
    return {}


def tell_fixed(model, paths) -> None:
    pass


# -- the op graph -----------------------------------------------------------------------------

def op_graph(fn, specs, models=()) -> bytes:
    """The serialized ``GraphDef`` of ``fn(*specs)``, run once eagerly: one node per PyTorch
    function called, scoped by the Keras layers it runs in; see
    :mod:`tbviz.backend._graphdef`."""
    from tbviz.backend import _graphdef

    def trace(shapes):
        args = [keras.ops.zeros(shape, dtype=s.dtype) for shape, s in zip(shapes, specs)]
        return _graphdef.from_torch(fn, args, models)

    return _graphdef.drawn(trace, specs)


# -- processes, errors, event files -----------------------------------------------------------

def is_chief(model=None) -> bool:
    """Rank 0 writes when ``torch.distributed`` is initialized; otherwise this process."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError))


def is_file_error(err: BaseException) -> bool:
    return isinstance(err, OSError)


def event_sink(path: str):
    from tbviz.backend import _tensorboardx

    return _tensorboardx.Sink(path)


# -- processes of a multi-process job ---------------------------------------------------------

def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def processes(model=None) -> tuple[int, int]:
    """``(world size, rank)`` of ``torch.distributed`` where it is initialized, else ``(1, 0)``."""
    if not _distributed():
        return 1, 0
    return torch.distributed.get_world_size(), torch.distributed.get_rank()


def all_gather(tree, model=None) -> list:
    """Every rank's ``tree`` (any picklable values), in rank order
    (``torch.distributed.all_gather_object``)."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return [tree]
    every = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, tree)
    return every
