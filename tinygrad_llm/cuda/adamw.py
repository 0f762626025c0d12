"""One fused Adam(W) step over many tensors in one launch (kernels/adamw.cu): a table of
65,536-element chunks, each (tensor, first element), built once per list of sizes."""
import numpy as np

from .. import backend
from . import runtime as rt

FILE = "adamw.cu"
CHUNK = 65536  # elements per block
rt.register(FILE, ("adamw_step",))
_chunk_tables = {}  # tuple of sizes -> (chunk_tensor, chunk_start, sizes, n_chunks) on the device


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
            for s in range(0, n, CHUNK):
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
        if len(group) != len(params) or not rt.serves(*group) or group[0].dtype != dtype:
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

    grid = (min(n_chunks, rt.sm_count() * 8),)
    rt.launch(FILE, "adamw_step", dtype, grid, (256,), ptrs(params), ptrs(grads),
              ptrs(exp_avgs), ptrs(exp_avg_sqs), chunk_tensor, chunk_start, sizes_d, n_chunks,
              CHUNK, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
              int(bool(decoupled)), float(1 - beta1 ** step), float(1 - beta2 ** step))
