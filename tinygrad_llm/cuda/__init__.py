"""The CuPy glue: compiles tinygrad_llm/kernels/*.cu on first use, caches them, launches them.

An op calls a kernel only where `serves(...)` says so:

    y = cuda.softmax_forward(x) if cuda.serves(x) else softmax_forward_ref(x)

`serves` is True only for C-contiguous CuPy float32/float64 arrays (RawKernel ignores strides)
while the kernels are enabled; `TINYGRAD_LLM_KERNELS=0` in the environment, or
`set_enabled(False)`, sends every op down its plain CuPy path instead. This module imports
without CuPy: nothing here touches CuPy until an op hands it a CuPy array.

Each .cu file is compiled once per (file, dtype) through `cupy.RawModule`, with the float or
double instantiation named through `name_expressions` (the kernels are C++ templates) and the
kernels folder on the include path for common.cuh. Ints are passed as np.int32 and scalars in the
kernel's own dtype: CuPy packs each argument by its Python type, so a bare Python int would go
in as a 64-bit value and a float as a double.
"""
import os
from pathlib import Path

import numpy as np

from .. import backend

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
KERNEL_FILES = ("softmax.cu", "layernorm.cu", "cross_entropy.cu", "gelu.cu", "adamw.cu")
_WARP_J = (1, 2, 4, 8, 16, 32)  # register slots per lane of the one-warp-per-row softmax
# file -> the kernels it defines, each instantiated for float and double: a plain name is the
# template <T>; "{T}" marks where the dtype goes in a template with more arguments
KERNELS = {
    "softmax.cu": ("softmax_forward", "softmax_backward",
                   *(f"softmax_{d}_warp<{{T}}, {j}>" for d in ("forward", "backward") for j in _WARP_J)),
    "layernorm.cu": ("layernorm_forward", "layernorm_backward_dx", "layernorm_backward_dwdb",
                     "column_sum", *(f"layernorm_backward_warp<{{T}}, {j}>" for j in (1, 2, 4, 8, 12, 16))),
    "cross_entropy.cu": ("cross_entropy_forward", "cross_entropy_backward"),
    "gelu.cu": ("gelu_forward", "gelu_backward"),
    "adamw.cu": ("adamw_step",),
}
# instantiated for float only (the double versions would spill registers)
FLOAT_ONLY = {"layernorm.cu": tuple(f"layernorm_backward_warp<{{T}}, {j}>" for j in (24, 32))}
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_PACK = {np.dtype(np.float32): 4, np.dtype(np.float64): 2}  # elements per 16-byte load

_enabled = os.environ.get("TINYGRAD_LLM_KERNELS", "1") != "0"
_modules = {}  # (file, dtype) -> cupy.RawModule
_NULL = np.uint64(0)  # a null pointer argument (an optional weight or bias)


def _empty(shape, dtype):
    """Every kernel output is allocated here (the tests swap in NaN-filled arrays to prove that
    each element gets written)."""
    return backend.cupy().empty(shape, dtype=dtype)


def set_enabled(enabled):
    """Turn the hand-written kernels on or off (off: every op takes its plain CuPy path)."""
    global _enabled
    _enabled = bool(enabled)


def enabled():
    return _enabled


def serves(*arrays):
    """True when the kernels can take these arrays: all CuPy, C-contiguous, one float dtype.

    None entries (an absent bias) are skipped.
    """
    cp = backend._cupy
    if not _enabled or cp is None:
        return False
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if not isinstance(a, cp.ndarray) or not a.flags.c_contiguous or a.dtype not in _CTYPE:
            return False
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return False
    return dtype is not None


def kernel_source(filename):
    return (KERNEL_DIR / filename).read_text()


def module(filename, dtype):
    """The compiled RawModule for one kernel file and dtype (compiled on first use, then cached)."""
    dtype = np.dtype(dtype)
    key = (filename, dtype)
    mod = _modules.get(key)
    if mod is None:
        cp = backend.cupy()
        ctype = _CTYPE[dtype]
        names = KERNELS[filename] + FLOAT_ONLY.get(filename, ()) * (ctype == "float")
        mod = cp.RawModule(code=kernel_source(filename),
                           options=("-std=c++17", f"-I{KERNEL_DIR}"),
                           name_expressions=[_expr(k, ctype) for k in names])
        _modules[key] = mod
    return mod


def _expr(name, ctype):
    """The C++ name of one instantiation: softmax_forward<float>, softmax_forward_warp<float, 8>."""
    return name.format(T=ctype) if "{T}" in name else f"{name}<{ctype}>"


def kernel(filename, name, dtype):
    return module(filename, dtype).get_function(_expr(name, _CTYPE[np.dtype(dtype)]))


def _launch(filename, name, dtype, grid, block, *args, shared_mem=0):
    """Launch a kernel; Python ints become np.int32, Python floats the kernel's dtype."""
    scalar = np.dtype(dtype).type
    packed = tuple(np.int32(a) if isinstance(a, (bool, int)) else
                   scalar(a) if isinstance(a, float) else a for a in args)
    kernel(filename, name, dtype)(tuple(grid), tuple(block), packed, shared_mem=shared_mem)


_sm_count = {}


def sm_count():
    """Streaming multiprocessors on the current device (sizes grid-stride launches)."""
    cp = backend.cupy()
    dev = cp.cuda.Device().id
    if dev not in _sm_count:
        _sm_count[dev] = cp.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]
    return _sm_count[dev]


def _like(dy, x):
    """dy as a C-contiguous array of x's dtype and shape (an incoming gradient may be a strided
    or broadcast view; the kernels read raw memory)."""
    dy = backend.cupy().ascontiguousarray(dy, dtype=x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"gradient of shape {dy.shape} does not match the saved array's {x.shape}")
    return dy


def _rows(x, what):
    """(n_rows, C) of a contiguous array reduced over its last axis."""
    if x.ndim == 0:
        raise ValueError(f"{what}: needs at least one axis, got a 0-d array")
    C = x.shape[-1]
    n_rows = x.size // C if C else 0
    if n_rows >= 2**31 or C >= 2**31:
        raise ValueError(f"{what}: shape {x.shape} is too large for the kernel's int32 indexing")
    return n_rows, C


def _row_threads(C, dtype):
    """Threads for one-block-per-row kernels: enough for one 16-byte pack each, 32..512."""
    packs = -(-C // _PACK[np.dtype(dtype)])
    return max(32, min(512, -(-packs // 32) * 32))


# --- softmax ------------------------------------------------------------------------------------
_WARP_ROWS = 8  # rows (warps) per block for the one-warp-per-row kernels


def _warp_j(C):
    """Slots per lane for the register-cached warp kernels, or None when the row is too long."""
    return next((j for j in _WARP_J if 32 * j >= C), None)


def softmax_forward(x):
    """Softmax over the last axis (matches ops/softmax.py's softmax_forward_ref)."""
    y = _empty(x.shape, x.dtype)
    n_rows, C = _rows(x, "softmax")
    if n_rows and C:
        j = _warp_j(C)
        if j is not None:
            _launch("softmax.cu", f"softmax_forward_warp<{{T}}, {j}>", x.dtype,
                    (-(-n_rows // _WARP_ROWS),), (32, _WARP_ROWS), x, y, n_rows, C)
        else:
            _launch("softmax.cu", "softmax_forward", x.dtype, (n_rows,),
                    (_row_threads(C, x.dtype),), x, y, n_rows, C)
    return y


def softmax_backward(y, dy):
    """dx = y * (dy - sum(y * dy)) over the last axis."""
    dy = _like(dy, y)
    dx = _empty(y.shape, y.dtype)
    n_rows, C = _rows(y, "softmax backward")
    if n_rows and C:
        j = _warp_j(C)
        if j is not None:
            _launch("softmax.cu", f"softmax_backward_warp<{{T}}, {j}>", y.dtype,
                    (-(-n_rows // _WARP_ROWS),), (32, _WARP_ROWS), y, dy, dx, n_rows, C)
        else:
            _launch("softmax.cu", "softmax_backward", y.dtype, (n_rows,),
                    (_row_threads(C, y.dtype),), y, dy, dx, n_rows, C)
    return dx


# --- layer norm ---------------------------------------------------------------------------------
_LN_ROWS_PER_BLOCK = _WARP_ROWS
_LN_ROWS_PER_CHUNK = 64  # rows each dw/db partial sums before the column_sum pass


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """(y, xhat, rstd) for x (N, C), like ops/norm.py's layer_norm_forward_ref."""
    n_rows, C = _rows(x, "layer_norm")
    y, xhat = _empty(x.shape, x.dtype), _empty(x.shape, x.dtype)
    rstd = _empty(x.shape[:-1], x.dtype)
    if n_rows and C:
        grid = (-(-n_rows // _LN_ROWS_PER_BLOCK),)
        _launch("layernorm.cu", "layernorm_forward", x.dtype, grid, (32, _LN_ROWS_PER_BLOCK),
                x, _NULL if weight is None else weight, _NULL if bias is None else bias,
                y, xhat, _NULL, rstd, n_rows, C, float(eps))
    return y, xhat, rstd


_LN_WARP_J = {np.dtype(np.float32): (1, 2, 4, 8, 12, 16, 24, 32), np.dtype(np.float64): (1, 2, 4, 8, 12, 16)}


def layer_norm_backward(dy, xhat, rstd, weight=None, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of layer norm from the saved xhat and rstd (dw, db: sums over the rows).

    dy, xhat: (N, C); weight None means no affine scale (dw is then None); each output is None
    when not needed. Rows up to 1024 wide (512 in float64) take the fused one-pass kernel.
    """
    n_rows, C = _rows(xhat, "layer_norm backward")
    dt = xhat.dtype
    dy = _like(dy, xhat)
    need_dw = need_dw and weight is not None
    dx = _empty(xhat.shape, dt) if need_dx else None
    dw = _empty((C,), dt) if need_dw else None
    db = _empty((C,), dt) if need_db else None
    if not C or not (need_dx or need_dw or need_db):
        return dx, dw, db
    w_arg = _NULL if weight is None else weight
    j = next((j for j in _LN_WARP_J[np.dtype(dt)] if 32 * j >= C), None)
    if j is not None:
        n_blocks = max(1, min(-(-n_rows // 4), sm_count() * 8))
        dw_part = _empty((n_blocks, C), dt) if need_dw else None
        db_part = _empty((n_blocks, C), dt) if need_db else None
        _launch("layernorm.cu", f"layernorm_backward_warp<{{T}}, {j}>", dt, (n_blocks,), (32, 4),
                dy, xhat, w_arg, rstd, _NULL if dx is None else dx,
                _NULL if dw_part is None else dw_part, _NULL if db_part is None else db_part,
                n_rows, C, shared_mem=2 * C * dt.itemsize)
    else:
        if need_dx and n_rows:
            grid = (-(-n_rows // _LN_ROWS_PER_BLOCK),)
            _launch("layernorm.cu", "layernorm_backward_dx", dt, grid, (32, _LN_ROWS_PER_BLOCK),
                    dy, xhat, w_arg, _NULL, rstd, dx, n_rows, C)
        per_chunk = max(_LN_ROWS_PER_CHUNK, -(-n_rows // 65535))  # gridDim.y is at most 65535
        n_blocks = max(1, -(-n_rows // per_chunk))
        dw_part = _empty((n_blocks, C), dt) if need_dw else None
        db_part = _empty((n_blocks, C), dt) if need_db else None
        if need_dw or need_db:
            # zero rows: the partial sums are written as 0, so dw and db come out 0, not garbage
            _launch("layernorm.cu", "layernorm_backward_dwdb", dt, (-(-C // 256), n_blocks), (256,),
                    dy, xhat, _NULL, rstd, _NULL if dw_part is None else dw_part,
                    _NULL if db_part is None else db_part, n_rows, C, per_chunk)
    for part, out in ((dw_part, dw), (db_part, db)):
        if part is not None:
            _launch("layernorm.cu", "column_sum", dt, (-(-C // 256),), (256,), part, out, n_blocks, C)
    return dx, dw, db


# --- cross-entropy ------------------------------------------------------------------------------
def _targets64(targets, n_rows):
    cp = backend.cupy()
    t = cp.ascontiguousarray(targets, dtype=cp.int64)
    if t.shape != (n_rows,):
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not fit "
                         f"{n_rows} rows of logits")
    return t


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """(loss, lse), one per row of logits (N, V): loss = lse - logits[target], 0 where ignored."""
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy kernel: logits must be (N, V), got shape {logits.shape}")
    n_rows, V = _rows(logits, "cross_entropy")
    t = _targets64(targets, n_rows)
    loss = _empty((n_rows,), logits.dtype)
    lse = _empty((n_rows,), logits.dtype)
    if n_rows and V:
        _launch("cross_entropy.cu", "cross_entropy_forward", logits.dtype, (n_rows,),
                (_row_threads(V, logits.dtype),), logits, t, loss, lse, n_rows, V,
                np.int64(ignore_index))
    return loss, lse


def cross_entropy_backward(logits, targets, lse, dloss, ignore_index=-100):
    """dlogits = (softmax(logits) - onehot(targets)) * dloss per row; zero rows where ignored.

    dloss: a 0-d array (one scale for every row: the mean reduction's dy / count) or (N,).
    """
    cp = backend.cupy()
    n_rows, V = _rows(logits, "cross_entropy backward")
    t = _targets64(targets, n_rows)
    dloss = cp.ascontiguousarray(dloss, dtype=logits.dtype)
    if dloss.size == 1:
        stride = 0
    elif dloss.shape == (n_rows,):
        stride = 1
    else:
        raise ValueError(f"cross_entropy backward: dloss of shape {dloss.shape} must be a scalar "
                         f"or ({n_rows},)")
    dlogits = _empty(logits.shape, logits.dtype)
    if n_rows and V:
        _launch("cross_entropy.cu", "cross_entropy_backward", logits.dtype, (n_rows,),
                (_row_threads(V, logits.dtype),), logits, t, lse, dloss, stride, dlogits, n_rows,
                V, np.int64(ignore_index))
    return dlogits


# --- GELU ---------------------------------------------------------------------------------------
def _elementwise_grid(n, dtype, threads=256):
    packs = -(-n // _PACK[np.dtype(dtype)])
    return (max(1, min(-(-packs // threads), sm_count() * 16)),), (threads,)


def gelu_forward(x, approximate="tanh"):
    y = _empty(x.shape, x.dtype)
    if x.size:
        grid, block = _elementwise_grid(x.size, x.dtype)
        _launch("gelu.cu", "gelu_forward", x.dtype, grid, block, x, y, np.int64(x.size),
                int(approximate == "tanh"))
    return y


def gelu_backward(x, dy, approximate="tanh"):
    dy = _like(dy, x)
    dx = _empty(x.shape, x.dtype)
    if x.size:
        grid, block = _elementwise_grid(x.size, x.dtype)
        _launch("gelu.cu", "gelu_backward", x.dtype, grid, block, x, dy, dx, np.int64(x.size),
                int(approximate == "tanh"))
    return dx


# --- AdamW --------------------------------------------------------------------------------------
_ADAM_CHUNK = 65536  # elements per block
_chunk_tables = {}  # tuple of sizes -> (chunk_tensor, chunk_start, sizes) on the device


def _ptr(a):
    """A device array's address (a kernel argument inside a pointer list)."""
    return a.data.ptr


def _chunk_table(sizes):
    """Per-chunk (tensor index, first element), tabulated once per list of parameter sizes."""
    key = tuple(sizes)
    table = _chunk_tables.get(key)
    if table is None:
        cp = backend.cupy()
        tensor_of, start_of = [], []
        for i, n in enumerate(sizes):
            for s in range(0, n, _ADAM_CHUNK):
                tensor_of.append(i)
                start_of.append(s)
        table = (cp.asarray(np.asarray(tensor_of, np.int32)),
                 cp.asarray(np.asarray(start_of, np.int64)),
                 cp.asarray(np.asarray(sizes, np.int64)), len(tensor_of))
        _chunk_tables[key] = table
    return table


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay, step,
               decoupled=True):
    """One Adam(W) step over lists of same-dtype contiguous CuPy arrays, in place, one launch.

    step is the 1-based step count t (bias corrections 1 - beta^t are computed here);
    decoupled=True is AdamW (p *= 1 - lr wd), False is Adam with L2 (g += wd p).
    """
    if not params:
        return
    cp = backend.cupy()
    dtype = params[0].dtype
    for group in (params, grads, exp_avgs, exp_avg_sqs):
        if len(group) != len(params) or not serves(*group) or group[0].dtype != dtype:
            raise ValueError("adamw_step: params, grads and both moment lists must be equally long "
                             f"lists of contiguous CuPy arrays of one dtype ({dtype})")
    sizes = [p.size for p in params]
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if not (p.shape == g.shape == m.shape == v.shape):
            raise ValueError(f"adamw_step: shapes differ: param {p.shape}, grad {g.shape}, "
                             f"exp_avg {m.shape}, exp_avg_sq {v.shape}")
    chunk_tensor, chunk_start, sizes_d, n_chunks = _chunk_table(sizes)
    if n_chunks == 0:
        return

    def ptrs(arrays):
        return cp.asarray(np.asarray([_ptr(a) for a in arrays], dtype=np.uint64))

    grid = (min(n_chunks, sm_count() * 8),)
    _launch("adamw.cu", "adamw_step", dtype, grid, (256,), ptrs(params), ptrs(grads),
            ptrs(exp_avgs), ptrs(exp_avg_sqs), chunk_tensor, chunk_start, sizes_d, n_chunks,
            _ADAM_CHUNK, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
            int(bool(decoupled)), float(1 - beta1 ** step), float(1 - beta2 ** step))


__all__ = ["serves", "set_enabled", "enabled", "module", "kernel", "softmax_forward",
           "softmax_backward", "layer_norm_forward", "layer_norm_backward", "cross_entropy_forward",
           "cross_entropy_backward", "gelu_forward", "gelu_backward", "adamw_step", "KERNEL_DIR",
           "KERNEL_FILES"]
