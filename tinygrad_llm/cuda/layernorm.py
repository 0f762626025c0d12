"""Layer norm over the last axis (kernels/layernorm.cu): one warp per row forward; a fused
one-pass backward for rows up to 1024 wide (512 in float64), a dx kernel plus chunked dw/db sums
beyond. Matches ops/norm.py's layer_norm_forward_cpu, layer_norm_backward_cpu and _param_grads."""
import numpy as np

from . import runtime as rt

FILE = "layernorm.cu"
_WARP_J = {np.dtype(np.float32): (1, 2, 4, 8, 12, 16, 24, 32), np.dtype(np.float64): (1, 2, 4, 8, 12, 16)}
_ROWS_PER_BLOCK = 8
_ROWS_PER_CHUNK = 64  # rows each dw/db partial sums before the column_sum pass
rt.register(FILE, ("layernorm_forward", "layernorm_backward_dx", "layernorm_backward_dwdb", "column_sum",
                   *(f"layernorm_backward_warp<{{T}}, {j}>" for j in _WARP_J[np.dtype(np.float64)])),
            float_only=tuple(f"layernorm_backward_warp<{{T}}, {j}>" for j in (24, 32)))


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """(y, xhat, rstd) for x (N, C), like ops/norm.py's layer_norm_forward_cpu."""
    n_rows, C = rt.rows(x, "layer_norm")
    y, xhat = rt.empty(x.shape, x.dtype), rt.empty(x.shape, x.dtype)
    rstd = rt.empty(x.shape[:-1], x.dtype)
    if n_rows and C:
        grid = (-(-n_rows // _ROWS_PER_BLOCK),)
        rt.launch(FILE, "layernorm_forward", x.dtype, grid, (32, _ROWS_PER_BLOCK),
                  x, rt.NULL if weight is None else weight, rt.NULL if bias is None else bias,
                  y, xhat, rstd, n_rows, C, float(eps))
    return y, xhat, rstd


def layer_norm_backward(dy, xhat, rstd, weight=None, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of layer norm from the saved xhat and rstd (dw, db: sums over the rows).

    dy, xhat: (N, C); weight None means no affine scale (dw is then None); each output is None
    when not needed. Rows up to 1024 wide (512 in float64) take the fused one-pass kernel.
    """
    n_rows, C = rt.rows(xhat, "layer_norm backward")
    dt = xhat.dtype
    dy = rt.like(dy, xhat)
    need_dw = need_dw and weight is not None
    dx = rt.empty(xhat.shape, dt) if need_dx else None
    dw = rt.empty((C,), dt) if need_dw else None
    db = rt.empty((C,), dt) if need_db else None
    if not C or not (need_dx or need_dw or need_db):
        return dx, dw, db
    null = rt.NULL
    w_arg = null if weight is None else weight
    j = next((j for j in _WARP_J[np.dtype(dt)] if 32 * j >= C), None)
    if j is not None:
        n_blocks = max(1, min(-(-n_rows // 4), rt.sm_count() * 8))
        dw_part = rt.empty((n_blocks, C), dt) if need_dw else None
        db_part = rt.empty((n_blocks, C), dt) if need_db else None
        rt.launch(FILE, f"layernorm_backward_warp<{{T}}, {j}>", dt, (n_blocks,), (32, 4),
                  dy, xhat, w_arg, rstd, null if dx is None else dx,
                  null if dw_part is None else dw_part, null if db_part is None else db_part,
                  n_rows, C, shared_mem=2 * C * dt.itemsize)
    else:
        if need_dx and n_rows:
            grid = (-(-n_rows // _ROWS_PER_BLOCK),)
            rt.launch(FILE, "layernorm_backward_dx", dt, grid, (32, _ROWS_PER_BLOCK),
                      dy, xhat, w_arg, rstd, dx, n_rows, C)
        per_chunk = max(_ROWS_PER_CHUNK, -(-n_rows // 65535))  # gridDim.y is at most 65535
        n_blocks = max(1, -(-n_rows // per_chunk))
        dw_part = rt.empty((n_blocks, C), dt) if need_dw else None
        db_part = rt.empty((n_blocks, C), dt) if need_db else None
        if need_dw or need_db:
            # zero rows: the partial sums are written as 0, so dw and db come out 0, not garbage
            rt.launch(FILE, "layernorm_backward_dwdb", dt, (-(-C // 256), n_blocks), (256,),
                      dy, xhat, null if dw_part is None else dw_part,
                      null if db_part is None else db_part, n_rows, C, per_chunk)
    for part, out in ((dw_part, dw), (db_part, db)):
        if part is not None:
            rt.launch(FILE, "column_sum", dt, (-(-C // 256),), (256,), part, out, n_blocks, C)
    return dx, dw, db
