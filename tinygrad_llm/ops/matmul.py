"""Matrix products with NumPy's rules: 1-D vectors, 2-D matrices, batches that broadcast."""
from ..autograd import Function
from ..backend import array_module
from .broadcast import unbroadcast


class MatMul(Function):
    """y = a @ b  (y[..., i, j] = sum_k a[..., i, k] b[..., k, j]).

    da = dy @ b^T,  db = a^T @ dy  (transposing the last two axes), each summed over the batch
    axes its input was broadcast along. A 1-D input is a (1, k) row or a (k, 1) column for the
    product, and that axis is dropped again from its gradient. Derivation: docs/backward.md#matmul
    """

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least one dimension, got shapes "
                             f"{a.shape} and {b.shape}")
        ka, kb = a.shape[-1], (b.shape[0] if b.ndim == 1 else b.shape[-2])
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not fit: the last axis "
                             f"of the first ({ka}) must equal the "
                             f"{'only' if b.ndim == 1 else 'second-to-last'} axis of the second ({kb})")
        need_a, need_b = ctx.needs_input_grad
        ctx.save_for_backward(a if need_b else None, b if need_a else None)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        try:
            return a @ b
        except ValueError:
            raise ValueError(f"matmul: the batch axes of shapes {a.shape} and {b.shape} "
                             "cannot be broadcast together") from None

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        xp = array_module(dy)
        a_shape, b_shape = ctx.a_shape, ctx.b_shape
        if len(a_shape) == 1 and len(b_shape) == 1:  # inner product y = a . b, dy is 0-d
            return (dy * b if need_a else None, dy * a if need_b else None)
        # promote vectors to matrices so one formula serves every case
        if len(a_shape) == 1:
            dy = dy[..., None, :]
            a = a[None, :] if a is not None else None
        if len(b_shape) == 1:
            dy = dy[..., None]
            b = b[:, None] if b is not None else None
        da = db = None
        if need_a:
            da = dy @ xp.swapaxes(b, -1, -2)
            da = unbroadcast(da, a_shape if len(a_shape) > 1 else (1, a_shape[0])).reshape(a_shape)
        if need_b:
            if len(b_shape) == 2 and a.ndim > 2:
                # a shared weight matrix: fold the batch into rows, one GEMM instead of a batch
                # of them followed by a sum over the batch
                k = a.shape[-1]
                db = a.reshape(-1, k).T @ dy.reshape(-1, dy.shape[-1])
            else:
                db = xp.swapaxes(a, -1, -2) @ dy
                db = unbroadcast(db, b_shape if len(b_shape) > 1 else (b_shape[0], 1))
            db = db.reshape(b_shape)
        return da, db
