"""Gradient clipping by global norm."""
import math

from ..autograd import no_grad


@no_grad()
def clip_grad_norm_(params, max_norm):
    """Scale every gradient by max_norm / total_norm when total_norm > max_norm; return total_norm.

    total_norm = sqrt(sum over parameters of ||g||^2): one BLAS dot per parameter, summed across
    parameters as a Python float (float64). When it is inf or
    nan the gradients are left as they are and the value is returned, so the caller sees the
    blow-up (and can skip the step) instead of getting gradients silently scaled by nan.
    """
    from ..tensor import Tensor

    params = [params] if isinstance(params, Tensor) else list(params)
    grads = [p.grad.data for p in params if p.grad is not None]
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
