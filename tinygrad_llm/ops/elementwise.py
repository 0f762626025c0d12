"""Elementwise ops. Binary ones broadcast like NumPy; their backward sums back with unbroadcast.

Each backward restates its forward and gives the vector-Jacobian product; docs/backward.md has
the derivations. Backward never writes into dy: the same array may be handed to several inputs.
"""
import numpy as np

from ..autograd import Function
from ..backend import array_module
from .broadcast import broadcast_shapes, unbroadcast


def _binary(op_name, fn, a, b):
    """fn(a, b), with NumPy's broadcasting error replaced by one that names the op and shapes."""
    try:
        return fn(a, b)
    except ValueError:
        broadcast_shapes(op_name, a.shape, b.shape)  # raises with the shapes at fault
        raise


def _back(dx, shape, dtype):
    """A gradient summed to the input's shape and kept in its dtype (no silent upcasts)."""
    dx = unbroadcast(dx, shape)
    return dx if dx.dtype == dtype else dx.astype(dtype)


class Add(Function):
    """y = a + b.   da = dy, db = dy (each summed over the axes it was broadcast along).

    Keeps only the input shapes and dtypes.  Derivation: docs/backward.md#add
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return _binary("add", lambda u, v: u + v, a, b)

    @staticmethod
    def backward(ctx, dy):
        da, db = ctx.needs_input_grad
        return (_back(dy, *ctx.a_meta) if da else None, _back(dy, *ctx.b_meta) if db else None)


class Sub(Function):
    """y = a - b.   da = dy, db = -dy.

    Keeps only the input shapes and dtypes.  Derivation: docs/backward.md#sub
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return _binary("sub", lambda u, v: u - v, a, b)

    @staticmethod
    def backward(ctx, dy):
        da, db = ctx.needs_input_grad
        return (_back(dy, *ctx.a_meta) if da else None, _back(-dy, *ctx.b_meta) if db else None)


class Mul(Function):
    """y = a * b.   da = dy * b, db = dy * a.

    Keeps, for each input that needs a gradient, the other input.  Derivation: docs/backward.md#mul
    """

    @staticmethod
    def forward(ctx, a, b):
        need_a, need_b = ctx.needs_input_grad
        # each input's gradient needs the *other* input; keep only what will be used
        ctx.save_for_backward(a if need_b else None, b if need_a else None)
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return _binary("mul", lambda u, v: u * v, a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return (_back(dy * b, *ctx.a_meta) if need_a else None,
                _back(dy * a, *ctx.b_meta) if need_b else None)


class Div(Function):
    """y = a / b.   da = dy / b, db = -dy * a / b^2 = -dy * y / b.

    Keeps b, and y when b needs a gradient (y / b replaces a / b^2).  Derivation: docs/backward.md#div
    """

    @staticmethod
    def forward(ctx, a, b):
        y = _binary("div", lambda u, v: u / v, a, b)
        ctx.save_for_backward(b, y if ctx.needs_input_grad[1] else None)
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        b, y = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        da = dy / b
        return (_back(da, *ctx.a_meta) if need_a else None,
                _back(-da * y, *ctx.b_meta) if need_b else None)


class Neg(Function):
    """y = -x.   dx = -dy.

    Keeps nothing.  Derivation: docs/backward.md#neg
    """

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, dy):
        return -dy


class PowScalar(Function):
    """y = x ** c for a constant c.   dx = c * x^(c-1) * dy  (0 for c = 0, even at x = 0).

    Derivation: docs/backward.md#powscalar
    """

    @staticmethod
    def forward(ctx, x, exponent):
        if hasattr(exponent, "item"):  # a NumPy scalar would upcast float32 x to its own dtype
            exponent = exponent.item()
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"pow: the exponent must be a number or a Tensor, got {exponent!r}")
        ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)
        ctx.exponent = exponent
        return x ** exponent

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        c = ctx.exponent
        if c == 0:  # y is constant; c * x^(c-1) would give 0 * inf = nan at x = 0
            return array_module(dy).zeros_like(dy)
        if c == 1:
            return dy
        if c == 2:
            return dy * (2 * x)
        return dy * (c * x ** (c - 1))


class Pow(Function):
    """y = a ** b, both tensors.   da = b * a^(b-1) * dy,  db = y * ln(a) * dy  (a > 0 for db);
    da = 0 where b = 0 and db = 0 where a = 0 <= b, as PyTorch gives (so 0^0 passes no nan).

    Keeps a, b and y.  Derivation: docs/backward.md#pow
    """

    @staticmethod
    def forward(ctx, a, b):
        y = _binary("pow", lambda u, v: u ** v, a, b)
        ctx.save_for_backward(a, b, y)
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b, y = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        xp = array_module(dy)
        zero = dy.dtype.type(0)
        da = db = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if need_a:
                # a^0 = 1 is constant in a: b * a^(b-1) would give 0 * inf = nan at a = 0
                da = _back(xp.where(b == 0, zero, dy * b * a ** (b - 1)), *ctx.a_meta)
            if need_b:
                # d/db a^b = a^b ln a: undefined (nan) for a < 0; at a = 0 with b >= 0 it is taken
                # as 0 (PyTorch's choice: y ln a -> 0 as a -> 0+ for b > 0) rather than 0 * -inf
                # = nan, or 1 * -inf at b = 0
                db = _back(xp.where((a == 0) & (b >= 0), zero, dy * y * xp.log(a)), *ctx.b_meta)
        return da, db


class Exp(Function):
    """y = e^x.   dx = y * dy (only y is kept).

    Derivation: docs/backward.md#exp
    """

    @staticmethod
    def forward(ctx, x):
        y = array_module(x).exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * y


class Log(Function):
    """y = ln x.   dx = dy / x.

    Keeps x.  Derivation: docs/backward.md#log
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).log(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy / x


class Sqrt(Function):
    """y = sqrt(x).   dx = dy / (2 y).

    Keeps y, not x: the derivative needs only y.  Derivation: docs/backward.md#sqrt
    """

    @staticmethod
    def forward(ctx, x):
        y = array_module(x).sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy / (2 * y)


class Abs(Function):
    """y = |x|.   dx = sign(x) * dy (sign(0) = 0: the subgradient PyTorch picks).

    Keeps x.  Derivation: docs/backward.md#abs
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return array_module(x).abs(x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy * array_module(x).sign(x)


class Tanh(Function):
    """y = tanh x.   dx = (1 - y^2) * dy.

    Keeps y.  Derivation: docs/backward.md#tanh
    """

    @staticmethod
    def forward(ctx, x):
        y = array_module(x).tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * (1 - y * y)


def one_over_one_plus_exp(t):
    """1 / (1 + exp(t)) = sigmoid(-t), computed in place in t (a float array of our own).

    The one formulation of the logistic function in the package (sigmoid, SiLU, SwiGLU, the GELU
    tanh form's h, and the GPU's gelu.cu), chosen for its numerics: exp(t) overflowing to inf
    gives 1 / inf = 0, the right limit, and no step cancels, so a result near 0 keeps its full
    relative precision. The other common form, 0.5 (1 - tanh(t / 2)), subtracts two numbers
    near 1 there and keeps none (float32: every digit lost below about 1e-8).
    """
    xp = array_module(t)
    with np.errstate(over="ignore"):
        xp.exp(t, out=t)
    t += 1.0
    return xp.reciprocal(t, out=t)


def sigmoid_cpu(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), a fresh array (see one_over_one_plus_exp for the numerics)."""
    xp = array_module(x)
    return one_over_one_plus_exp(xp.negative(x, out=xp.empty_like(x)))  # out=: a 0-d x stays an array


class Sigmoid(Function):
    """y = 1 / (1 + e^-x).   dx = y (1 - y) dy.

    Keeps y.  Derivation: docs/backward.md#sigmoid
    """

    @staticmethod
    def forward(ctx, x):
        y = sigmoid_cpu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * (y * (1 - y))


class ReLU(Function):
    """y = max(x, 0).   dx = dy where x > 0, else 0 (0 at x = 0).

    Keeps y: y > 0 exactly where x > 0.  Derivation: docs/backward.md#relu
    """

    @staticmethod
    def forward(ctx, x):
        y = array_module(x).maximum(x, 0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * (y > 0)


class Maximum(Function):
    """y = max(a, b) elementwise.   The larger input gets dy; on a tie each gets dy / 2.

    Keeps a and b to find the winner.  Derivation: docs/backward.md#maximum
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return _binary("maximum", array_module(a).maximum, a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return _split_extreme(dy, a > b, a == b, need_a, need_b, ctx.a_meta, ctx.b_meta)


class Minimum(Function):
    """y = min(a, b) elementwise.   The smaller input gets dy; on a tie each gets dy / 2.

    Keeps a and b to find the winner.  Derivation: docs/backward.md#minimum
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return _binary("minimum", array_module(a).minimum, a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return _split_extreme(dy, a < b, a == b, need_a, need_b, ctx.a_meta, ctx.b_meta)


def _split_extreme(dy, a_wins, tie, need_a, need_b, a_meta, b_meta):
    """Route dy to the winning input of maximum/minimum; a tie gives each half."""
    xp = array_module(dy)
    # weights in dy's dtype: a bool + 0.5 * bool would be float64 and upcast a float32 gradient
    wa = xp.add(a_wins, tie * dy.dtype.type(0.5), dtype=dy.dtype)
    da = _back(dy * wa, *a_meta) if need_a else None
    db = _back(dy * (1 - wa), *b_meta) if need_b else None
    return da, db


class Clip(Function):
    """y = min(max(x, lo), hi).   dx = dy where lo <= x <= hi, else 0 (either bound may be None).

    Keeps x.  Derivation: docs/backward.md#clip
    """

    @staticmethod
    def forward(ctx, x, lo=None, hi=None):
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"clip: min {lo} is greater than max {hi}")
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        if lo is None and hi is None:
            return x.copy()
        return array_module(x).clip(x, lo, hi)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        inside = True
        if ctx.lo is not None:
            inside = x >= ctx.lo
        if ctx.hi is not None:
            inside = inside & (x <= ctx.hi)
        return dy * inside


class Where(Function):
    """y = a where cond else b (cond a boolean array).   da = dy where cond, db = dy where not.

    Keeps the condition.  Derivation: docs/backward.md#where
    """

    @staticmethod
    def forward(ctx, a, b, cond):
        xp = array_module(a)
        broadcast_shapes("where", cond.shape, a.shape, b.shape)
        ctx.save_for_backward(cond)
        ctx.a_meta, ctx.b_meta = (a.shape, a.dtype), (b.shape, b.dtype)
        return xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, dy):
        xp = array_module(dy)
        need_a, need_b = ctx.needs_input_grad
        (cond,) = ctx.saved
        zero = dy.dtype.type(0)
        return (_back(xp.where(cond, dy, zero), *ctx.a_meta) if need_a else None,
                _back(xp.where(cond, zero, dy), *ctx.b_meta) if need_b else None)


class MaskedFill(Function):
    """y = value where mask else x; mask broadcasts to x's shape.   dx = dy where not mask, else 0.

    A causal attention mask is masked_fill(scores, upper_triangle, -inf).
    Keeps the mask.  Derivation: docs/backward.md#maskedfill
    """

    @staticmethod
    def forward(ctx, x, mask, value):
        xp = array_module(x)
        mask = xp.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"masked_fill: the mask must be boolean, got {mask.dtype}")
        if broadcast_shapes("masked_fill", mask.shape, x.shape) != x.shape:
            raise ValueError(f"masked_fill: mask of shape {mask.shape} does not broadcast to the "
                             f"tensor's shape {x.shape}")
        ctx.save_for_backward(mask)
        return xp.where(mask, x.dtype.type(value), x)

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved
        return array_module(dy).where(mask, dy.dtype.type(0), dy)


class Cast(Function):
    """y = x converted to dtype.   dx = dy converted back to x's dtype.

    Keeps the input dtype.  Derivation: docs/backward.md#cast
    """

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, dy):
        return dy.astype(ctx.in_dtype)
