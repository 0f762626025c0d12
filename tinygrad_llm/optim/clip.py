"""Gradient clipping by global norm."""
import math

import numpy as np

from ..autograd import no_grad
from ..backend import array_module


@no_grad()
def clip_grad_norm_(params, max_norm):
    """Scale every gradient by max_norm / total_norm when total_norm > max_norm; return total_norm.

    total_norm = sqrt(sum over parameters of ||g||^2). When it is inf or nan the gradients are
    left as they are and the value is returned, so the caller sees the blow-up (and can skip the
    step) instead of getting gradients silently scaled by nan.

    On the CPU: one BLAS dot per parameter, summed as a Python float (float64), returned as a float.
    On the GPU nothing is read back to the host (a read would stall every step): the sum of squares
    is one dot per flat gradient buffer (the optimizer's buckets, which the gradients tile), the
    scale is applied as a device scalar, and the norm comes back as a 0-d device array (read it
    when it is logged).
    """
    from ..tensor import Tensor

    params = [params] if isinstance(params, Tensor) else list(params)
    grads = [p.grad.data for p in params if p.grad is not None]
    if grads and array_module(grads[0]) is not np:
        return _clip_on_device(grads, max_norm)
    total = 0.0
    for g in grads:
        flat = g.reshape(-1)
        total += float(flat @ flat)
    total = math.sqrt(total) if total == total and total != math.inf else total
    if math.isfinite(total) and total > max_norm:
        coef = max_norm / (total + 1e-6)
        for g in grads:
            g *= coef
    return total


def _clip_on_device(grads, max_norm):
    xp = array_module(grads[0])
    flats = flat_buffers(grads)
    squares = [xp.vdot(f, f) for f in flats]
    total = xp.sqrt(squares[0] if len(squares) == 1 else xp.stack(squares).sum())
    # the branch of the CPU path as a select: scale only a finite norm above max_norm
    coef = xp.where(xp.isfinite(total) & (total > max_norm), max_norm / (total + 1e-6), 1)
    for f in flats:
        f *= coef.astype(f.dtype)
    return total


def _address(a):
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return iface["data"][0]


def flat_buffers(grads):
    """1-d arrays holding exactly the gradients' elements, as few as possible: the flat buffer a
    group of gradients tiles without gap or overlap (an optimizer bucket hands out such views),
    else each gradient flattened."""
    groups = {}
    for g in grads:
        base = g.base if g.base is not None else g
        groups.setdefault(id(base), (base, []))[1].append(g)
    out = []
    for base, gs in groups.values():
        if base.ndim == 1 and base.flags.c_contiguous and _tile(base, gs):
            out.append(base)
        else:
            out.extend(g.reshape(-1) for g in gs)
    return out


def _tile(base, gs):
    """True when the contiguous views gs cover base exactly, each element once."""
    if not all(g.flags.c_contiguous and g.dtype == base.dtype for g in gs):
        return False
    start, item = _address(base), base.itemsize
    spans = sorted(((_address(g) - start) // item, g.size) for g in gs)
    at = 0
    for lo, n in spans:
        if lo != at:
            return False
        at += n
    return at == base.size
