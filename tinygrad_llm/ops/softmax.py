"""Softmax and log-softmax over one axis, each one op with a hand-derived backward.

The plain-xp forward/backward functions (`softmax_forward_cpu`, ...) work on the last axis; the
ops move another axis there first. They write into as few fresh arrays as possible: every pass
after the first runs in place (`out=`), because each NumPy pass is a full sweep of memory and a
fresh array costs page faults on top.
"""
from .. import cuda
from ..autograd import Function
from ..backend import array_module
from .cross_entropy import exp_rows


# --- the textbook versions: the docstrings' formulas in plain xp, for reading and for the tests,
# which check the tuned *_cpu functions below against them --------------------------------------
def softmax_textbook(x):
    """y = exp(x - max x) / sum exp(x - max x) over the last axis."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_textbook(y, dy):
    """dx = y * (dy - sum(y * dy)) over the last axis: (diag(y) - y y^T) dy per row."""
    return y * (dy - (y * dy).sum(axis=-1, keepdims=True))


def log_softmax_textbook(x):
    """y = x - max x - log sum exp(x - max x) over the last axis."""
    xp = array_module(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_backward_textbook(y, dy):
    """dx = dy - softmax(x) * sum(dy), with softmax(x) = exp(y)."""
    return dy - array_module(y).exp(y) * dy.sum(axis=-1, keepdims=True)


# --- the tuned versions -----------------------------------------------------------------------
def _row_dot(a, b):
    """sum(a * b) over the last axis, keepdims, without materialising the product."""
    xp = array_module(a)
    return xp.einsum("...i,...i->...", a, b)[..., None]


def softmax_forward_cpu(x):
    """y = exp(x - shift) / sum exp(x - shift) over the last axis (stable for any finite x).

    The shift cancels in the ratio, so it is 0 when no row overflows or vanishes (see exp_rows)
    and the row max otherwise.
    """
    y, r, _ = exp_rows(x)
    y *= r  # one divide per row, then multiplies
    return y


def softmax_backward_cpu(y, dy):
    """dx = y * (dy - sum(y * dy)) over the last axis."""
    dx = dy - _row_dot(y, dy)
    dx *= y
    return dx


def log_softmax_forward_cpu(x):
    """y = x - shift - log sum exp(x - shift) over the last axis (shift as in exp_rows)."""
    xp = array_module(x)
    _, r, shift = exp_rows(x)
    xp.log(r, out=r)  # -log rowsum
    # (x - shift) first: both are ~|x|, their difference is exact where x - (shift + log s) rounds
    y = x + r if isinstance(shift, int) else x - shift
    if not isinstance(shift, int):
        y += r
    return y


def log_softmax_backward_cpu(y, dy):
    """dx = dy - exp(y) * sum(dy) over the last axis."""
    xp = array_module(y)
    p = xp.exp(y)
    p *= dy.sum(axis=-1, keepdims=True)
    return xp.subtract(dy, p, out=p)


def _to_last(x, axis, name):
    """x with `axis` moved last (a view when it already is), and the normalised axis."""
    if x.ndim == 0:
        raise ValueError(f"{name}: needs at least one axis, got a 0-d input")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}: axis {axis} is out of range for an input of shape {x.shape}")
    axis %= x.ndim
    return (x if axis == x.ndim - 1 else array_module(x).moveaxis(x, axis, -1)), axis


def _from_last(y, axis):
    return y if axis == y.ndim - 1 else array_module(y).moveaxis(y, -1, axis)


def _rowwise(fn, *arrays):
    """fn over rows of the last axis, in one call: by_row_chunks measured slower here (its copy-out
    pass costs more than the cache gain of a 3-pass chain)."""
    shape = arrays[0].shape
    return fn(*(a.reshape(-1, shape[-1]) for a in arrays)).reshape(shape)  # (N, C)


class Softmax(Function):
    """y = exp(x - max x) / sum exp(x - max x) along `axis`.

    Backward: dx = y * (dy - sum(y * dy)), the Jacobian diag(y) - y y^T applied per row.
    Only y is saved: the input is not needed.  Derivation: docs/backward.md#softmax
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        x, ctx.axis = _to_last(x, axis, "softmax")
        y = cuda.softmax_forward(x) if cuda.serves(x) else _rowwise(softmax_forward_cpu, x)
        ctx.save_for_backward(y)
        return _from_last(y, ctx.axis)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        dy = _to_last(dy, ctx.axis, "softmax")[0]
        if cuda.serves(y):
            return _from_last(cuda.softmax_backward(y, dy), ctx.axis)
        return _from_last(_rowwise(softmax_backward_cpu, y, dy), ctx.axis)


class LogSoftmax(Function):
    """y = x - log sum exp x along `axis` (shifted by the max first, so it never overflows).

    Backward: dx = dy - softmax(x) * sum(dy), with softmax(x) = exp(y).
    Only y is saved.  Derivation: docs/backward.md#logsoftmax
    """

    @staticmethod
    def forward(ctx, x, axis=-1):
        x, ctx.axis = _to_last(x, axis, "log_softmax")
        y = _rowwise(log_softmax_forward_cpu, x)
        ctx.save_for_backward(y)
        return _from_last(y, ctx.axis)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        dy = _to_last(dy, ctx.axis, "log_softmax")[0]
        return _from_last(_rowwise(log_softmax_backward_cpu, y, dy), ctx.axis)
