"""GELU, tanh or exact (kernels/gelu.cu): grid-stride elementwise kernels, 16-byte packs where
the buffers allow; float, double and bfloat16 (computed in float). Matches ops/activation.py's
gelu_*_cpu functions."""
import numpy as np

from . import runtime as rt

FILE = "gelu.cu"
rt.register(FILE, ("gelu_forward", "gelu_backward"), bf16=True)


def _elementwise_grid(n, dtype, threads=256):
    packs = -(-n // rt.pack(dtype))
    return (max(1, min(-(-packs // threads), rt.sm_count() * 16)),), (threads,)


def gelu_forward(x, approximate="tanh"):
    y = rt.empty(x.shape, x.dtype)
    if x.size:
        grid, block = _elementwise_grid(x.size, x.dtype)
        rt.launch(FILE, "gelu_forward", x.dtype, grid, block, x, y, np.int64(x.size),
                  int(approximate == "tanh"))
    return y


def gelu_backward(x, dy, approximate="tanh"):
    dy = rt.like(dy, x)
    dx = rt.empty(x.shape, x.dtype)
    if x.size:
        grid, block = _elementwise_grid(x.size, x.dtype)
        rt.launch(FILE, "gelu_backward", x.dtype, grid, block, x, dy, dx, np.int64(x.size),
                  int(approximate == "tanh"))
    return dx
