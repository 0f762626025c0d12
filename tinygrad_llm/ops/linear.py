"""The affine map of a Linear layer as one op: y = x W^T + b, weights stored (out, in)."""
from ..autograd import Function
from ..backend import array_module


def _mm(a, b):
    """a @ b in a's dtype: NumPy's bfloat16 (ml_dtypes) matmul returns float32, rounded back here
    as a GPU's float32-accumulating bfloat16 GEMM rounds its result."""
    y = a @ b
    return y if y.dtype == a.dtype else y.astype(a.dtype)


class Linear(Function):
    """y = x @ W^T + b for x (..., in), W (out, in), b (out,) or None.

    dx = dy @ W,  dW = dy^T x,  db = sum of dy over every axis but the last (ones^T dy). The
    leading axes are folded into rows first, so each of the three is one GEMM (or GEMV) whatever
    the batch shape.
    Keeps x (as rows) if W needs a gradient, W if x does.  Derivation: docs/backward.md#linear
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input of shape {x.shape} does not fit a weight of shape "
                             f"{weight.shape} (expected input (..., {weight.shape[-1]}) and weight "
                             "(out_features, in_features))")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias of shape {bias.shape} does not fit a weight of shape "
                             f"{weight.shape}; expected ({weight.shape[0]},)")
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        y = _mm(x2, weight.T)  # (N, out)
        if bias is not None:
            y += bias
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x2 if need_w else None, weight if need_x else None)
        ctx.x_shape = x.shape
        return y.reshape(x.shape[:-1] + (weight.shape[0],))

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved
        need = ctx.needs_input_grad
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
        dx = _mm(dy2, weight).reshape(ctx.x_shape) if need[0] else None
        dw = _mm(dy2.T, x2) if need[1] else None
        if len(need) == 2:
            return dx, dw
        if not need[2]:
            return dx, dw, None
        # the column sums as a GEMV, ones^T dy: BLAS streams dy once, 2-4x faster than sum(axis=0)
        ones = array_module(dy2).ones(dy2.shape[0], dtype=dy2.dtype)
        return dx, dw, _mm(ones, dy2)
