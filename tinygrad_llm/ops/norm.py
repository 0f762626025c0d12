"""Layer norm and RMS norm over the last axis, each one op that saves only xhat, rstd and w.

Per row of C features: layer norm y = (x - mean) * rstd * w + b with rstd = 1 / sqrt(var + eps);
RMS norm y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps). The row reductions of products
(sum_c dy_c w_c, sum_c g_c xhat_c) use einsum, which reduces without building the product array
and, unlike `dy @ w`, never enters BLAS: a threaded OpenBLAS GEMV of (2048, 384) took 8 ms on a
busy 2-core machine where einsum takes 0.1 ms.
"""
from .. import cuda
from ..autograd import Function
from ..backend import array_module
from .row_chunks import by_row_chunks


# --- the textbook versions: the docstrings' formulas in plain xp, for reading and for the tests,
# which check the tuned *_cpu functions below against them --------------------------------------
def layer_norm_textbook(x, weight=None, bias=None, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis."""
    xp = array_module(x)
    xhat = (x - x.mean(axis=-1, keepdims=True)) / xp.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return xhat * (1.0 if weight is None else weight) + (0.0 if bias is None else bias)


def layer_norm_backward_textbook(dy, x, weight=None, eps=1e-5):
    """(dx, dw, db) for x (N, C): g = dy * w, dx = rstd (g - mean(g) - xhat mean(g xhat)),
    dw = sum_rows dy * xhat, db = sum_rows dy."""
    xp = array_module(x)
    rstd = 1.0 / xp.sqrt(x.var(axis=-1, keepdims=True) + eps)
    xhat = (x - x.mean(axis=-1, keepdims=True)) * rstd
    g = dy * (1.0 if weight is None else weight)
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def rms_norm_textbook(x, weight=None, eps=1e-6):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis."""
    xp = array_module(x)
    return x / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * (1.0 if weight is None else weight)


def rms_norm_backward_textbook(dy, x, weight=None, eps=1e-6):
    """(dx, dw) for x (N, C): g = dy * w, dx = rstd (g - xhat mean(g xhat)), dw = sum_rows dy * xhat."""
    xp = array_module(x)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * rstd
    g = dy * (1.0 if weight is None else weight)
    return rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True)), (dy * xhat).sum(axis=0)


# --- the tuned versions -----------------------------------------------------------------------
def _rows(x):
    return x.reshape(-1, x.shape[-1])  # (N, C)


def layer_norm_forward_cpu(x, weight=None, bias=None, eps=1e-5, out=None):
    """(y, xhat, rstd) for x (N, C): xhat = (x - mean) * rstd, y = xhat * w + b (into out, if
    given: a tuple of the three)."""
    xp = array_module(x)
    y, xhat, rstd = out if out is not None else (None, None, None)
    C = x.shape[-1]
    inv_c = x.dtype.type(1.0 / C)
    # centred first, so var never goes negative; row sums by einsum: 2.5-3.5x faster than
    # x.sum(axis=1) on rows of 128-384 floats
    xhat = xp.subtract(x, (xp.einsum("nc->n", x) * inv_c)[:, None], out=xhat)
    var = _row_dots(xp, xhat, xhat, rstd)
    var *= inv_c
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.reciprocal(rstd, out=rstd)
    xhat *= rstd[:, None]
    y = _times_weight(xp, xhat, weight, y)
    if bias is not None:
        y += bias
    return y, xhat, rstd


def layer_norm_backward_cpu(dy, xhat, rstd, weight=None, out=None):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w (three terms, per row)."""
    xp = array_module(dy)
    C = dy.shape[-1]
    inv_c = dy.dtype.type(1.0 / C)
    g = _times_weight(xp, dy, weight, out)
    # from dy and w directly: no pass over g
    mean_g = (xp.einsum("nc,c->n", dy, weight) if weight is not None else xp.einsum("nc->n", dy)) * inv_c
    mean_gx = xp.einsum("nc,nc->n", g, xhat) * inv_c
    g -= mean_g[:, None]
    tmp = xhat * mean_gx[:, None]
    g -= tmp
    g *= rstd[:, None]
    return g


def rms_norm_forward_cpu(x, weight=None, eps=1e-6, out=None):
    """(y, xhat, rstd) for x (N, C): xhat = x * rstd, y = xhat * w (into out, if given)."""
    xp = array_module(x)
    y, xhat, rstd = out if out is not None else (None, None, None)
    C = x.shape[-1]
    ms = _row_dots(xp, x, x, rstd)
    ms *= x.dtype.type(1.0 / C)
    ms += eps
    rstd = xp.sqrt(ms, out=ms)
    xp.reciprocal(rstd, out=rstd)
    xhat = xp.multiply(x, rstd[:, None], out=xhat)
    y = _times_weight(xp, xhat, weight, y)
    return y, xhat, rstd


def _row_dots(xp, a, b, out):
    """sum_c a_nc b_nc per row, into out when given (CuPy's einsum takes no out=)."""
    if out is None:
        return xp.einsum("nc,nc->n", a, b)
    return xp.einsum("nc,nc->n", a, b, out=out)


def _times_weight(xp, a, weight, out):
    """a * weight (a copy of a without one), into out when given."""
    if weight is not None:
        return xp.multiply(a, weight, out=out)
    if out is None:
        return a.copy()
    out[...] = a
    return out


def rms_norm_backward_cpu(dy, xhat, rstd, weight=None, out=None):
    """dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w."""
    xp = array_module(dy)
    g = _times_weight(xp, dy, weight, out)
    mean_gx = xp.einsum("nc,nc->n", g, xhat) * dy.dtype.type(1.0 / dy.shape[-1])
    tmp = xhat * mean_gx[:, None]
    g -= tmp
    g *= rstd[:, None]
    return g


def _param_grads(dy, xhat, need_w, need_b):
    """dw = sum over rows of dy * xhat, db = sum over rows of dy."""
    xp = array_module(dy)
    dw = xp.einsum("nc,nc->c", dy, xhat) if need_w else None
    # db as the GEMV ones^T dy, as in Linear: 3-4x faster than dy.sum(axis=0)
    db = xp.ones(dy.shape[0], dtype=dy.dtype) @ dy if need_b else None
    return dw, db


def _check(name, x, **params):
    if x.ndim == 0:
        raise ValueError(f"{name}: input must have a feature axis, got a 0-d input")
    C = x.shape[-1]
    for pname, p in params.items():
        if p is not None and p.shape != (C,):
            raise ValueError(f"{name}: {pname} of shape {p.shape} does not fit an input of shape "
                             f"{x.shape}; expected ({C},)")


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis; w and b optional.

    Backward, with xhat = (x - mean) * rstd and g = dy * w:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw = sum_rows dy * xhat,  db = sum_rows dy.
    Saved: xhat and rstd (one number per row), and w: x and the mean are not needed again.
    Derivation: docs/backward.md#layernorm
    """

    @staticmethod
    def forward(ctx, x, *params, has_weight=True, has_bias=True, eps=1e-5):
        # only the arrays that exist are inputs: (x, w, b), (x, w), (x, b) or (x,)
        params = list(params)
        weight = params.pop(0) if has_weight else None
        bias = params.pop(0) if has_bias else None
        _check("layer_norm", x, weight=weight, bias=bias)
        x2 = _rows(x)
        if cuda.serves(x2, weight, bias):
            y, xhat, rstd = cuda.layer_norm_forward(x2, weight, bias, eps)
        else:
            y, xhat, rstd = by_row_chunks(lambda x, out=None: layer_norm_forward_cpu(x, weight, bias, eps, out),
                                          x2, inplace=True)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.layout = (x.shape, weight is not None, bias is not None)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved
        shape, has_w, has_b = ctx.layout
        need = ctx.needs_input_grad
        dy2 = _rows(dy)
        if cuda.serves(xhat, rstd, weight):
            dx, dw, db = cuda.layer_norm_backward(dy2, xhat, rstd, weight, need[0],
                                                  has_w and need[1], has_b and need[-1])
            dx = dx.reshape(shape) if dx is not None else None
            return (dx,) + ((dw,) if has_w else ()) + ((db,) if has_b else ())
        dx = by_row_chunks(lambda dy, xh, rs, out=None: layer_norm_backward_cpu(dy, xh, rs, weight, out),
                           dy2, xhat, rstd, inplace=True).reshape(shape) if need[0] else None
        dw, db = _param_grads(dy2, xhat, has_w and need[1], has_b and need[-1])
        return (dx,) + ((dw,) if has_w else ()) + ((db,) if has_b else ())


class RMSNorm(Function):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis; w optional.

    Backward, with xhat = x * rstd and g = dy * w:
        dx = rstd * (g - xhat * mean(g * xhat)),  dw = sum_rows dy * xhat.
    Saved: xhat and rstd, and w.  Derivation: docs/backward.md#rmsnorm
    """

    @staticmethod
    def forward(ctx, x, weight=None, eps=1e-6):
        _check("rms_norm", x, weight=weight)
        y, xhat, rstd = by_row_chunks(lambda x, out=None: rms_norm_forward_cpu(x, weight, eps, out), _rows(x),
                                      inplace=True)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.x_shape = x.shape
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved
        need = ctx.needs_input_grad
        dy2 = _rows(dy)
        dx = by_row_chunks(lambda dy, xh, rs, out=None: rms_norm_backward_cpu(dy, xh, rs, weight, out),
                           dy2, xhat, rstd, inplace=True).reshape(ctx.x_shape) if need[0] else None
        if weight is None:
            return dx
        return dx, (_param_grads(dy2, xhat, True, False)[0] if need[1] else None)
