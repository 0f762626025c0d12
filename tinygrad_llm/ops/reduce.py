"""Reductions over an axis, a tuple of axes, or all of them (axis=None), with NumPy's keepdims.

The backward of every reduction first puts the reduced axes back as size 1 (`expand_reduced`), so
dy broadcasts against x: the adjoint of "sum over an axis" is "copy along that axis".
"""
import numpy as np

from ..autograd import Function
from ..backend import array_module


def normalize_axes(axis, ndim, op_name):
    """axis (None, int or tuple) as a sorted tuple of non-negative ints, or a clear error."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1) or (ndim == 0 and a not in (0, -1)):
            raise ValueError(f"{op_name}: axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op_name}: repeated axis in {axis}")
    return tuple(sorted(out)) if ndim else ()


def expand_reduced(dy, in_shape, axes, keepdims):
    """dy with the reduced axes restored as size 1, so it broadcasts against the input."""
    if keepdims or not axes:
        return dy
    shape = tuple(1 if i in axes else n for i, n in enumerate(in_shape))
    return dy.reshape(shape)


class Sum(Function):
    """y = sum of x over axes.   dx = dy copied along the summed axes.

    Keeps only the input shape and axes.  Derivation: docs/backward.md#sum
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = normalize_axes(axis, x.ndim, "sum")
        ctx.in_shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        return x.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):
        xp = array_module(dy)
        return xp.broadcast_to(expand_reduced(dy, ctx.in_shape, ctx.axes, ctx.keepdims), ctx.in_shape)


class Mean(Function):
    """y = mean of x over axes (N elements each).   dx = dy / N copied along those axes.

    Keeps the input shape, axes and N.  Derivation: docs/backward.md#mean
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        axes = normalize_axes(axis, x.ndim, "mean")
        ctx.in_shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        ctx.count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        if ctx.count == 0:
            raise ValueError(f"mean: reducing axes {axes} of shape {x.shape} averages zero elements")
        return x.mean(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):
        xp = array_module(dy)
        dy = expand_reduced(dy, ctx.in_shape, ctx.axes, ctx.keepdims) * (1.0 / ctx.count)
        return xp.broadcast_to(dy.astype(dy.dtype, copy=False), ctx.in_shape)


class _Extreme(Function):
    """The forward shared by max and min; each defines its backward with `_extreme_backward`."""

    reducer = None

    @classmethod
    def forward(cls, ctx, x, axis=None, keepdims=False):
        name = cls.__name__.lower()
        axes = normalize_axes(axis, x.ndim, name)
        if x.size == 0 or any(x.shape[a] == 0 for a in axes):
            raise ValueError(f"{name}: reducing axes {axes} of shape {x.shape}: "
                             "a zero-size axis has no extreme value")
        y = getattr(x, cls.reducer)(axis=axes, keepdims=True)
        ctx.save_for_backward(x, y)
        ctx.axes, ctx.keepdims = axes, keepdims
        return y if keepdims else y.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))


def _extreme_backward(ctx, dy):
    """dy goes to the winners (x == y), split evenly among ties: k tied elements get dy / k each
    (PyTorch's amax/amin rule), so no tied element is favoured and the shares add up to dy."""
    x, y = ctx.saved
    winners = x == y
    count = winners.sum(axis=ctx.axes, keepdims=True, dtype=dy.dtype)
    dy = expand_reduced(dy, x.shape, ctx.axes, ctx.keepdims)
    return winners * (dy / count)


class Max(_Extreme):
    """y = max of x over axes.   dx = dy at the maxima (split evenly among ties), 0 elsewhere.

    x and y (keepdims) are kept to find the winners.  Derivation: docs/backward.md#max
    """
    reducer = "max"
    backward = staticmethod(_extreme_backward)


class Min(_Extreme):
    """y = min of x over axes.   dx = dy at the minima (split evenly among ties), 0 elsewhere.

    x and y (keepdims) are kept to find the winners.  Derivation: docs/backward.md#min
    """
    reducer = "min"
    backward = staticmethod(_extreme_backward)


class Var(Function):
    """y = sum (x - mean)^2 / (N - correction).   dx = 2 (x - mean) / (N - correction) * dy.

    The mean's own dependence on x drops out: sum(x - mean) = 0, so its term vanishes.
    Keeps x - mean.  Derivation: docs/backward.md#var
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, correction=0):
        axes = normalize_axes(axis, x.ndim, "var")
        n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        if n - correction <= 0:
            raise ValueError(f"var: {n} elements over axes {axes} of shape {x.shape} "
                             f"with correction={correction} leave no degrees of freedom")
        centered = x - x.mean(axis=axes, keepdims=True)
        ctx.save_for_backward(centered)
        ctx.axes, ctx.keepdims, ctx.denom = axes, keepdims, n - correction
        return (centered * centered).sum(axis=axes, keepdims=keepdims) / x.dtype.type(ctx.denom)

    @staticmethod
    def backward(ctx, dy):
        (centered,) = ctx.saved
        dy = expand_reduced(dy, centered.shape, ctx.axes, ctx.keepdims)
        return centered * (dy * (2.0 / ctx.denom)).astype(dy.dtype, copy=False)


class LogSumExp(Function):
    """y = log sum exp x over axes, computed as m + log sum exp(x - m) with m = max x (no overflow).

    dx = exp(x - y) * dy, i.e. softmax(x) * dy. x, m = max x and l = y - m are kept.
    Derivation: docs/backward.md#logsumexp
    """

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        xp = array_module(x)
        axes = normalize_axes(axis, x.ndim, "logsumexp")
        if x.size == 0:  # an empty sum: log 0 = -inf (NumPy's answer), no max to shift by
            m = xp.zeros(tuple(1 if i in axes else n for i, n in enumerate(x.shape)), x.dtype)
        else:
            m = x.max(axis=axes, keepdims=True)
            m = xp.where(xp.isfinite(m), m, x.dtype.type(0))  # rows of all -inf stay -inf, not nan
        # y = m + l. Backward uses exp((x - m) - l), not exp(x - y): rounding y = m + l in
        # float32 would cost the softmax several digits when m is large
        with np.errstate(divide="ignore"):  # log 0 = -inf is the right answer for an empty sum
            l = xp.log(xp.exp(x - m).sum(axis=axes, keepdims=True))
        y = m + l
        ctx.save_for_backward(x, m, l)
        ctx.axes, ctx.keepdims = axes, keepdims
        return y if keepdims else y.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))

    @staticmethod
    def backward(ctx, dy):
        x, m, l = ctx.saved
        xp = array_module(x)
        # a slice of all -inf has l = -inf and no gradient: exp(-inf - 0) = 0, not exp(nan)
        l = xp.where(l == -xp.inf, l.dtype.type(0), l)
        return xp.exp((x - m) - l) * expand_reduced(dy, x.shape, ctx.axes, ctx.keepdims)
