"""Launch glue for the fused attention kernels in kernels/attention.cu (forward and backward).

    o, lse = flash_attention_forward(q, k, v, causal, scale, segment_ids=None)
    dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, causal, scale, segment_ids=None)

q, do: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (grouped-query attention);
all C-contiguous CuPy arrays of one dtype: float32, bfloat16 (tensor cores, float32
accumulation) or float64 (D = 32 only on the GPU: see the instantiations in attention.cu).
lse: (B, H, Tq) float32 (float64 for float64 inputs), the per-row log-sum-exp the backward
recomputes the probabilities from. segment_ids: (B, Tk) integer document ids; the queries are the
last Tq positions, so query i's document is segment_ids[:, i + Tk - Tq]. A query that sees no key
gets o = 0 and lse = -inf.

Nothing here touches CuPy until a call hands it CuPy arrays. Kernels are compiled once per
element type (all head dims in one RawModule) and their shared-memory limit raised where a tile
set needs more than the default 48 KiB.
"""
import numpy as np

from .. import backend
from . import runtime as rt

FILE = "attention.cu"
HEAD_DIMS = (32, 64, 128)
STAGES = ("forward", "backward_prep", "backward_dq", "backward_dkdv")
GPU_DOUBLE_HEAD_DIMS = (32,)  # the double backward spills registers at larger D
# The registry's float/double view of the file (the compile check, rt.module); the bf16
# instantiations are compiled by _module below, which builds every element type the same way.
rt.register(FILE, tuple(f"attention_{s}<{{T}}, {d}>" for d in GPU_DOUBLE_HEAD_DIMS for s in STAGES),
            float_only=tuple(f"attention_{s}<{{T}}, {d}>" for d in HEAD_DIMS
                             if d not in GPU_DOUBLE_HEAD_DIMS for s in STAGES))
_BM, _BN, _THREADS = 64, 32, 128  # must match WARPS, BM and BN in attention.cu
_PREP_ROWS = 8  # rows (warps) per block of attention_backward_prep
_DEFAULT_SMEM = 48 * 1024
_modules = {}  # C++ element type -> cupy.RawModule
_functions = {}  # (stage, C++ element type, D) -> the module's function, looked up once


def element_type(dtype):
    """The kernels' C++ element type for a NumPy/CuPy dtype, or None if they do not take it."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # ml_dtypes' bfloat16, which CuPy carries
        return "tgl::bf16"
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}.get(dtype)


def accumulator_dtype(dtype):
    """lse and delta are float64 for float64 inputs and float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def head_dims(ctype):
    return GPU_DOUBLE_HEAD_DIMS if ctype == "double" else HEAD_DIMS


def kernel_names(ctype):
    """Every instantiation the GPU module holds for one element type."""
    return [f"attention_{s}<{ctype}, {d}>" for d in head_dims(ctype) for s in STAGES]


def smem_bytes(stage, dtype, D):
    """Dynamic shared memory of one launch: the tiles laid out at the top of each kernel."""
    e = np.dtype(dtype).itemsize
    a = accumulator_dtype(dtype).itemsize
    pad = 2 if e == 2 else 1
    ld, ldp = D + pad, _BN + pad
    warps_p = (_THREADS // 32) * 16 * ldp  # each warp's 16 rows of P or dS
    if stage == "forward":  # seg_k, Q, K, V transposed, P
        return 4 * _BN + e * (_BM * ld + _BN * ld + D * ldp + warps_p)
    transposed = D * ldp if e == 2 else 0  # bf16: a transposed copy of a streamed tile
    if stage == "backward_dq":  # seg_k, Q, dO, K, V, (K transposed), dS
        return 4 * _BN + e * (2 * _BM * ld + 2 * _BN * ld + transposed + warps_p)
    if stage == "backward_dkdv":  # seg_q, lse, delta, K, V, Q, dO, (Q, dO transposed), P / dS
        return 4 * _BN + 2 * a * _BN + e * (2 * _BM * ld + 2 * _BN * ld + 2 * transposed + warps_p)
    return 0


def _module(ctype):
    mod = _modules.get(ctype)
    if mod is None:
        cp = backend.cupy()
        mod = cp.RawModule(code=rt.compile_source(FILE), options=("-std=c++17", f"-I{rt.KERNEL_DIR}"),
                           name_expressions=kernel_names(ctype))
        _modules[ctype] = mod
    return mod


def _kernel(stage, dtype, D):
    """The compiled kernel for one stage, element type and head dim (tests swap in the emulator)."""
    ctype = element_type(dtype)
    key = (stage, ctype, D)
    fn = _functions.get(key)
    if fn is None:
        if ctype == "tgl::bf16" and int(backend.cupy().cuda.Device().compute_capability) < 80:
            raise ValueError("flash attention in bfloat16 needs the bf16 tensor cores of sm_80 "
                             "(Ampere) or newer; use float32 on this GPU")
        fn = _module(ctype).get_function(f"attention_{stage}<{ctype}, {D}>")
        need = smem_bytes(stage, dtype, D)
        if need > _DEFAULT_SMEM:
            fn.max_dynamic_shared_size_bytes = need  # opt in past 48 KiB (Volta and later)
        _functions[key] = fn
    return fn


def _launch(stage, dtype, D, grid, block, *args):
    _kernel(stage, dtype, D)(grid, block, args, shared_mem=smem_bytes(stage, dtype, D))


def supported(q, k=None):
    """True when the fused kernels take q (and k): a dtype and head dim they are built for."""
    ctype = element_type(q.dtype)
    return (ctype is not None and q.ndim == 4 and q.shape[-1] in head_dims(ctype)
            and (k is None or k.dtype == q.dtype))


def _check(q, k, v, causal, segment_ids, what):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{what}: q, k, v must be (B, H, T, D), got shapes {q.shape}, {k.shape}, "
                         f"{v.shape}")
    B, H, Tq, D = q.shape
    Bk, Hkv, Tk, Dk = k.shape
    if k.shape != v.shape or Bk != B or Dk != D:
        raise ValueError(f"{what}: k {k.shape} and v {v.shape} must be (B, Hkv, Tk, D) with the "
                         f"batch and head dim of q {q.shape}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"{what}: {H} query heads are not a multiple of {Hkv} key/value heads")
    ctype = element_type(q.dtype)
    if ctype is None or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{what}: q, k, v must share one dtype among float32, bfloat16, float64; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if D not in head_dims(ctype):
        raise ValueError(f"{what}: head dim {D} is not one of {head_dims(ctype)} for {q.dtype}")
    if (causal or segment_ids is not None) and Tq > Tk:
        raise ValueError(f"{what}: {Tq} queries but {Tk} keys; with a causal mask or segment ids "
                         "the queries are the last Tq of the key positions, so Tq <= Tk")
    if max(B * H * Tq * D, B * Hkv * Tk * D) >= 2**31 or B > 65535 or H > 65535:
        raise ValueError(f"{what}: shapes {q.shape}, {k.shape} exceed the kernels' int32 indexing")
    seg = rt.NULL  # no document mask
    if segment_ids is not None:
        if tuple(segment_ids.shape) != (B, Tk):
            raise ValueError(f"{what}: segment_ids of shape {segment_ids.shape} must be (B, Tk) = "
                             f"({B}, {Tk})")
        seg = backend.cupy().ascontiguousarray(segment_ids, dtype=np.int32)
    return B, H, Hkv, Tq, Tk, D, seg


def _contiguous(a, dtype):
    return backend.cupy().ascontiguousarray(a, dtype=dtype)


def flash_attention_forward(q, k, v, causal, scale, segment_ids=None):
    """(o, lse): o = softmax(scale q k^T + mask) v per head, never holding the Tq x Tk scores."""
    B, H, Hkv, Tq, Tk, D, seg = _check(q, k, v, causal, segment_ids, "flash attention")
    q, k, v = (_contiguous(a, q.dtype) for a in (q, k, v))
    acc = accumulator_dtype(q.dtype)
    o = rt.empty(q.shape, q.dtype)
    lse = rt.empty((B, H, Tq), acc)
    if B and H and Tq:
        _launch("forward", q.dtype, D, (-(-Tq // _BM), H, B), (_THREADS,), q, k, v, seg, o, lse,
                np.int32(H), np.int32(Hkv), np.int32(Tq), np.int32(Tk), np.int32(bool(causal)),
                acc.type(scale))
    return o, lse


def flash_attention_backward(do, q, k, v, o, lse, causal, scale, segment_ids=None):
    """(dq, dk, dv) from the forward's o and lse, recomputing the probabilities tile by tile.

    delta = rowsum(do * o) first; then one kernel per output side (dq over key tiles; dk, dv over
    query tiles and the heads sharing each kv head), so every element has one writer and the
    result is the same bit for bit on every run.
    """
    B, H, Hkv, Tq, Tk, D, seg = _check(q, k, v, causal, segment_ids, "flash attention backward")
    acc = accumulator_dtype(q.dtype)
    q, k, v, o, do = (_contiguous(a, q.dtype) for a in (q, k, v, o, do))
    lse = _contiguous(lse, acc)
    if do.shape != q.shape or o.shape != q.shape or lse.shape != (B, H, Tq):
        raise ValueError(f"flash attention backward: do {do.shape} and o {o.shape} must be "
                         f"{q.shape}, lse {lse.shape} must be {(B, H, Tq)}")
    dq = rt.empty(q.shape, q.dtype)
    dk, dv = rt.empty(k.shape, k.dtype), rt.empty(v.shape, v.dtype)
    ints = (np.int32(H), np.int32(Hkv), np.int32(Tq), np.int32(Tk), np.int32(bool(causal)))
    if B and H and Tq:
        n_rows = B * H * Tq
        delta = rt.empty((B, H, Tq), acc)
        _launch("backward_prep", q.dtype, D, (-(-n_rows // _PREP_ROWS),), (32, _PREP_ROWS), o, do,
                delta, np.int32(n_rows))
        _launch("backward_dq", q.dtype, D, (-(-Tq // _BM), H, B), (_THREADS,), q, k, v, do, lse,
                delta, seg, dq, *ints, acc.type(scale))
    else:
        delta = rt.empty((B, H, 1), acc)  # never read: no query rows
    if B and Hkv and Tk:
        _launch("backward_dkdv", q.dtype, D, (-(-Tk // _BM), Hkv, B), (_THREADS,), q, k, v, do,
                lse, delta, seg, dk, dv, *ints, acc.type(scale))
    return dq, dk, dv


__all__ = ["flash_attention_forward", "flash_attention_backward", "supported", "element_type",
           "HEAD_DIMS"]
