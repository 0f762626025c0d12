"""Softmax over the last axis (kernels/softmax.cu): one warp per row up to 1024 columns, one
block per row beyond. Matches ops/softmax.py's softmax_forward_cpu / softmax_backward_cpu."""
from . import runtime as rt

FILE = "softmax.cu"
WARP_J = (1, 2, 4, 8, 16, 32)  # register slots per lane of the one-warp-per-row kernels
WARP_ROWS = 8  # rows (warps) per block for the one-warp-per-row kernels
rt.register(FILE, ("softmax_forward", "softmax_backward",
                   *(f"softmax_{d}_warp<{{T}}, {j}>" for d in ("forward", "backward") for j in WARP_J)))


def _warp_j(C):
    """Slots per lane for the register-cached warp kernels, or None when the row is too long."""
    return next((j for j in WARP_J if 32 * j >= C), None)


def softmax_forward(x):
    """Softmax over the last axis (matches ops/softmax.py's softmax_forward_cpu)."""
    y = rt.empty(x.shape, x.dtype)
    n_rows, C = rt.rows(x, "softmax")
    if n_rows and C:
        j = _warp_j(C)
        if j is not None:
            rt.launch(FILE, f"softmax_forward_warp<{{T}}, {j}>", x.dtype,
                      (-(-n_rows // WARP_ROWS),), (32, WARP_ROWS), x, y, n_rows, C)
        else:
            rt.launch(FILE, "softmax_forward", x.dtype, (n_rows,),
                      (rt.row_threads(C, x.dtype),), x, y, n_rows, C)
    return y


def softmax_backward(y, dy):
    """dx = y * (dy - sum(y * dy)) over the last axis."""
    dy = rt.like(dy, y)
    dx = rt.empty(y.shape, y.dtype)
    n_rows, C = rt.rows(y, "softmax backward")
    if n_rows and C:
        j = _warp_j(C)
        if j is not None:
            rt.launch(FILE, f"softmax_backward_warp<{{T}}, {j}>", y.dtype,
                      (-(-n_rows // WARP_ROWS),), (32, WARP_ROWS), y, dy, dx, n_rows, C)
        else:
            rt.launch(FILE, "softmax_backward", y.dtype, (n_rows,),
                      (rt.row_threads(C, y.dtype),), y, dy, dx, n_rows, C)
    return dx
