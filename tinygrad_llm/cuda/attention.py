"""Launch glue for the fused attention kernels in kernels/attention.cu (forward and backward).

    o, lse = flash_attention_forward(q, k, v, causal, scale, segment_ids=None, window=None,
                                     alibi_slopes=None)
    dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, causal, scale, segment_ids=None,
                                          window=None, alibi_slopes=None)

q, do: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (grouped-query attention);
all C-contiguous CuPy arrays of one dtype: float32, bfloat16 (tensor cores, float32
accumulation) or float64 (D = 32 only on the GPU: see the instantiations in attention.cu).
lse: (B, H, Tq) float32 (float64 for float64 inputs), the per-row log-sum-exp the backward
recomputes the probabilities from. The queries are the last Tq positions: query i sits at
position p = i + Tk - Tq. segment_ids: (B, Tk) integer document ids (query i's document is
segment_ids[:, p]). window: with causal=True, query p sees keys p - window < j <= p (window keys,
itself included); None or <= 0 is no window. alibi_slopes: (H,) floats, one per query head: the
score of query p and key j gets slopes[h] * (j - p) added after the scaling, before the mask. The
backward must be given the same mask arguments as the forward. A query that sees no key gets
o = 0 and lse = -inf.

Nothing here touches CuPy until a call hands it CuPy arrays. Each launch is compiled on first
use with only the instantiations it needs (one forward kernel, or the three backward kernels, for
one element type, head dim and tile size), so the first step compiles 1-3 kernels, not all of
them; CuPy keeps them in its disk cache from 14.2 on. The tile size comes from the device's
opt-in shared-memory limit (BN = 32 rows per streamed tile, else 16: float32 at D = 128 needs
107,904 bytes per block with BN = 32, more than the 99 KB of an L4, L40S or RTX card); where
even BN = 16 does not fit (a 64 KB T4 in the float32 D = 128 backward), the unfused path below
serves that call, with a one-line warning. Functions, their shared-memory opt-in and the tile
choice are kept per device, so one process can drive several GPUs.
"""
import warnings
from collections import namedtuple

import numpy as np

from .. import backend
from . import runtime as rt

FILE = "attention.cu"
HEAD_DIMS = (32, 64, 128)
STAGES = ("forward", "backward_prep", "backward_dq", "backward_dkdv")
PASSES = {"forward": ("forward",), "backward": ("backward_prep", "backward_dq", "backward_dkdv")}
TILE_ROWS = (32, 16)  # BN, the streamed tile's rows, largest first (must match the instantiations)
GPU_DOUBLE_HEAD_DIMS = (32,)  # the double backward spills registers at larger D
_BM, _THREADS = 64, 128  # must match WARPS and BM in attention.cu
_PREP_ROWS = 8  # rows (warps) per block of attention_backward_prep
_DEFAULT_SMEM = 48 * 1024
_MAX_GRID_YZ = 65535
_UNFUSED_BLOCK_BYTES = 256 * 2**20  # the unfused path's scores per query block, at most


def kernel_name(stage, ctype, D, BN):
    """The C++ name of one instantiation: attention_forward<float, 64, 32>, attention_backward_prep<float, 64>."""
    return f"attention_{stage}<{ctype}, {D}>" if stage == "backward_prep" else \
        f"attention_{stage}<{ctype}, {D}, {BN}>"


def _registered(ctype, dims):
    return tuple(dict.fromkeys(kernel_name(s, ctype, d, bn) for d in dims for bn in TILE_ROWS
                               for s in STAGES))


# The registry's float/double view of the file (the nvcc compile check, rt.module); the glue
# compiles through _module below, one pass of one (element type, D, BN) at a time.
rt.register(FILE, tuple(n.replace("<double,", "<{T},") for n in _registered("double", GPU_DOUBLE_HEAD_DIMS)),
            float_only=tuple(n.replace("<float,", "<{T},") for n in
                             _registered("float", [d for d in HEAD_DIMS if d not in GPU_DOUBLE_HEAD_DIMS])))

Device = namedtuple("Device", "id name smem_optin compute_capability")
_modules = {}  # the tuple of name expressions -> cupy.RawModule (CuPy loads it per device)
_functions = {}  # (device id, stage, C++ element type, D, BN) -> function, its shared memory raised
_devices = {}  # device id -> Device
_noted = set()  # (device id, pass, dtype, D): the unfused fallback already announced


def element_type(dtype):
    """The kernels' C++ element type for a NumPy/CuPy dtype, or None if they do not take it."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # ml_dtypes' bfloat16, which CuPy carries
        return "tgl::bf16"
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}.get(dtype)


def accumulator_dtype(dtype):
    """lse, delta and the ALiBi slopes are float64 for float64 inputs and float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def head_dims(ctype):
    return GPU_DOUBLE_HEAD_DIMS if ctype == "double" else HEAD_DIMS


def kernel_names(ctype):
    """Every instantiation the GPU may ask for in one element type (each D and tile size)."""
    return list(_registered(ctype, head_dims(ctype)))


def pass_names(pass_, ctype, D, BN):
    """The name expressions one compile asks NVRTC for: just that pass's kernels."""
    return [kernel_name(s, ctype, D, BN) for s in PASSES[pass_]]


def smem_bytes(stage, dtype, D, BN=TILE_ROWS[0]):
    """Dynamic shared memory of one launch: the tiles laid out at the top of each kernel."""
    e = np.dtype(dtype).itemsize
    a = accumulator_dtype(dtype).itemsize
    pad = 8 if e == 2 else 1  # Stride<E, D, BN>::pad: bf16 rows padded against bank conflicts
    ld, ldp = D + pad, BN + pad
    warps_p = (_THREADS // 32) * 16 * ldp  # each warp's 16 rows of P or dS
    if stage == "forward":  # seg_k, Q, K, V transposed, P
        return 4 * BN + e * (_BM * ld + BN * ld + D * ldp + warps_p)
    transposed = D * ldp if e == 2 else 0  # bf16: a transposed copy of a streamed tile
    if stage == "backward_dq":  # seg_k, Q, dO, K, V, (K transposed), dS
        return 4 * BN + e * (2 * _BM * ld + 2 * BN * ld + transposed + warps_p)
    if stage == "backward_dkdv":  # seg_q, lse, delta, K, V, Q, dO, (Q, dO transposed), P / dS
        return 4 * BN + 2 * a * BN + e * (2 * _BM * ld + 2 * BN * ld + 2 * transposed + warps_p)
    return 0


def pass_smem_bytes(pass_, dtype, D, BN):
    return max(smem_bytes(s, dtype, D, BN) for s in PASSES[pass_])


def tile_rows(pass_, dtype, D, smem_limit):
    """The largest BN whose tiles fit in smem_limit bytes per block, or None (the unfused path)."""
    for bn in TILE_ROWS:
        if pass_smem_bytes(pass_, dtype, D, bn) <= smem_limit:
            return bn
    return None


def _device():
    """The current CUDA device: its id, name, opt-in shared memory per block and compute capability."""
    cp = backend.cupy()
    dev = cp.cuda.Device().id
    facts = _devices.get(dev)
    if facts is None:
        props = cp.cuda.runtime.getDeviceProperties(dev)
        name = props.get("name", b"")
        facts = _devices[dev] = Device(dev, name.decode() if isinstance(name, bytes) else str(name),
                                       int(props["sharedMemPerBlockOptin"]),
                                       10 * int(props["major"]) + int(props["minor"]))
    return facts


def _module(names):
    mod = _modules.get(names)
    if mod is None:
        cp = backend.cupy()
        rt.note_cupy_cache(cp)
        mod = _modules[names] = cp.RawModule(code=rt.compile_source(FILE),
                                             options=("-std=c++17", f"-I{rt.KERNEL_DIR}"),
                                             name_expressions=names)
    return mod


def _kernel(stage, dtype, D, BN):
    """The compiled kernel for one stage, element type, head dim and tile size on the current
    device, its shared-memory limit raised where it needs more than 48 KiB (tests swap in the
    emulator)."""
    dev = _device()
    ctype = element_type(dtype)
    key = (dev.id, stage, ctype, D, BN)
    fn = _functions.get(key)
    if fn is None:
        pass_ = "forward" if stage == "forward" else "backward"
        fn = _module(tuple(pass_names(pass_, ctype, D, BN))).get_function(kernel_name(stage, ctype, D, BN))
        need = smem_bytes(stage, dtype, D, BN)
        if need > _DEFAULT_SMEM:
            fn.max_dynamic_shared_size_bytes = need  # opt in past 48 KiB, on this device
        _functions[key] = fn
    return fn


def _launch(stage, dtype, D, BN, grid, block, *args):
    _kernel(stage, dtype, D, BN)(grid, block, args, shared_mem=smem_bytes(stage, dtype, D, BN))


def _tiles(pass_, dtype, D):
    """BN for this pass on the current device, or None after a one-line note (unfused path)."""
    dev = _device()
    if element_type(dtype) == "tgl::bf16" and dev.compute_capability < 80:
        raise ValueError(f"flash attention in bfloat16 needs the bf16 tensor cores of sm_80 (Ampere) "
                         f"or newer; {dev.name} is sm_{dev.compute_capability}: use float32 on this GPU")
    bn = tile_rows(pass_, dtype, D, dev.smem_optin)
    key = (dev.id, pass_, np.dtype(dtype).name, D)
    if bn is None and key not in _noted:
        _noted.add(key)
        warnings.warn(f"flash attention {pass_}: {np.dtype(dtype).name} at head dim {D} needs "
                      f"{pass_smem_bytes(pass_, dtype, D, TILE_ROWS[-1])} bytes of shared memory per "
                      f"block, {dev.name} allows {dev.smem_optin}: the unfused path serves it "
                      "(scores per query block in GPU memory)", RuntimeWarning, stacklevel=3)
    return bn


def supported(q, k=None):
    """True when the fused kernels take q (and k): a dtype and head dim they are built for."""
    ctype = element_type(q.dtype)
    return (ctype is not None and q.ndim == 4 and q.shape[-1] in head_dims(ctype)
            and (k is None or k.dtype == q.dtype))


Mask = namedtuple("Mask", "causal window seg slopes")  # as the kernels take them


def _check(q, k, v, causal, segment_ids, window, alibi_slopes, what):
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
    # Offsets are 64-bit in the kernels (attention.cu, "Index widths"); what int32 still bounds:
    # the grid's y and z (heads, batch), positions (T), and attention_backward_prep's grid x.
    if B > _MAX_GRID_YZ or H > _MAX_GRID_YZ or max(Tq, Tk) >= 2**31 or B * H * Tq >= _PREP_ROWS * (2**31 - 1):
        raise ValueError(f"{what}: shapes {q.shape}, {k.shape} exceed the kernels' launch limits "
                         f"(batch and heads <= {_MAX_GRID_YZ}, T < 2^31)")
    cp = backend.cupy()
    seg = rt.NULL  # no document mask
    if segment_ids is not None:
        if tuple(segment_ids.shape) != (B, Tk):
            raise ValueError(f"{what}: segment_ids of shape {segment_ids.shape} must be (B, Tk) = "
                             f"({B}, {Tk})")
        seg = cp.ascontiguousarray(segment_ids, dtype=np.int32)
    w = 0 if window is None else int(window)
    if w > 0 and not causal:
        raise ValueError(f"{what}: window={w} needs causal=True (the window is the last {w} "
                         "positions up to and including the query's own)")
    w = min(w, Tk) if w > 0 else 0  # a window past the sequence start is no window at all
    slopes = rt.NULL
    if alibi_slopes is not None:
        if tuple(np.shape(alibi_slopes)) != (H,):
            raise ValueError(f"{what}: alibi_slopes of shape {tuple(np.shape(alibi_slopes))} must be "
                             f"(H,) = ({H},), one slope per query head")
        slopes = cp.ascontiguousarray(cp.asarray(alibi_slopes), dtype=accumulator_dtype(q.dtype))
    return B, H, Hkv, Tq, Tk, D, Mask(int(bool(causal)), w, seg, slopes)


def _contiguous(a, dtype):
    return backend.cupy().ascontiguousarray(a, dtype=dtype)


def flash_attention_forward(q, k, v, causal, scale, segment_ids=None, window=None, alibi_slopes=None):
    """(o, lse): o = softmax(scale q k^T + bias + mask) v per head, never holding the Tq x Tk scores."""
    B, H, Hkv, Tq, Tk, D, mask = _check(q, k, v, causal, segment_ids, window, alibi_slopes,
                                        "flash attention")
    q, k, v = (_contiguous(a, q.dtype) for a in (q, k, v))
    acc = accumulator_dtype(q.dtype)
    if not (B and H and Tq):
        return rt.empty(q.shape, q.dtype), rt.empty((B, H, Tq), acc)
    bn = _tiles("forward", q.dtype, D)
    if bn is None:
        return unfused_forward(q, k, v, scale, mask)
    o = rt.empty(q.shape, q.dtype)
    lse = rt.empty((B, H, Tq), acc)
    _launch("forward", q.dtype, D, bn, (-(-Tq // _BM), H, B), (_THREADS,), q, k, v, mask.seg,
            mask.slopes, o, lse, np.int32(H), np.int32(Hkv), np.int32(Tq), np.int32(Tk),
            np.int32(mask.causal), np.int32(mask.window), acc.type(scale))
    return o, lse


def flash_attention_backward(do, q, k, v, o, lse, causal, scale, segment_ids=None, window=None,
                             alibi_slopes=None):
    """(dq, dk, dv) from the forward's o and lse, recomputing the probabilities tile by tile.

    delta = rowsum(do * o) first; then one kernel per output side (dq over key tiles; dk, dv over
    query tiles and the heads sharing each kv head), so every element has one writer and the
    result is the same bit for bit on every run.
    """
    B, H, Hkv, Tq, Tk, D, mask = _check(q, k, v, causal, segment_ids, window, alibi_slopes,
                                        "flash attention backward")
    acc = accumulator_dtype(q.dtype)
    q, k, v, o, do = (_contiguous(a, q.dtype) for a in (q, k, v, o, do))
    lse = _contiguous(lse, acc)
    if do.shape != q.shape or o.shape != q.shape or lse.shape != (B, H, Tq):
        raise ValueError(f"flash attention backward: do {do.shape} and o {o.shape} must be "
                         f"{q.shape}, lse {lse.shape} must be {(B, H, Tq)}")
    launches = bool(B and Hkv and (Tq or Tk))
    bn = _tiles("backward", q.dtype, D) if launches else TILE_ROWS[0]
    if bn is None:
        return unfused_backward(do, q, k, v, o, lse, scale, mask)
    dq = rt.empty(q.shape, q.dtype)
    dk, dv = rt.empty(k.shape, k.dtype), rt.empty(v.shape, v.dtype)
    ints = (np.int32(H), np.int32(Hkv), np.int32(Tq), np.int32(Tk), np.int32(mask.causal),
            np.int32(mask.window))
    if B and H and Tq:
        n_rows = B * H * Tq
        delta = rt.empty((B, H, Tq), acc)
        _launch("backward_prep", q.dtype, D, bn, (-(-n_rows // _PREP_ROWS),), (32, _PREP_ROWS), o, do,
                delta, np.int64(n_rows))
        _launch("backward_dq", q.dtype, D, bn, (-(-Tq // _BM), H, B), (_THREADS,), q, k, v, do, lse,
                delta, mask.seg, mask.slopes, dq, *ints, acc.type(scale))
    else:
        delta = rt.empty((B, H, 1), acc)  # never read: no query rows
    if B and Hkv and Tk:
        _launch("backward_dkdv", q.dtype, D, bn, (-(-Tk // _BM), Hkv, B), (_THREADS,), q, k, v, do,
                lse, delta, mask.seg, mask.slopes, dk, dv, *ints, acc.type(scale))
    return dq, dk, dv


# --- the unfused path: where the device's shared memory cannot hold the kernels' tiles -----------
def _query_blocks(B, H, Tq, Tk):
    rows = max(1, min(Tq, _UNFUSED_BLOCK_BYTES // max(1, 8 * B * H * Tk)))
    return [(i, min(Tq, i + rows)) for i in range(0, Tq, rows)]


def _scores(qb, kk, i0, Tq, Tk, scale, mask, xp):
    """scale q k^T + ALiBi bias, -inf where masked: (B, H, i1 - i0, Tk) for queries i0.. of qb."""
    rows = qb.shape[2]
    pos = xp.arange(i0, i0 + rows)[:, None] + (Tk - Tq)  # (rows, 1) query positions
    j = xp.arange(Tk)[None, :]  # (1, Tk)
    s = qb @ kk.transpose(0, 1, 3, 2) * scale  # (B, H, rows, Tk)
    if mask.slopes is not rt.NULL:
        s = s + mask.slopes.astype(s.dtype)[None, :, None, None] * (j - pos).astype(s.dtype)
    seen = xp.ones((rows, Tk), bool)
    if mask.causal:
        seen &= j <= pos
    if mask.window:
        seen &= j > pos - mask.window
    seen = seen[None, None]  # (1, 1, rows, Tk)
    if mask.seg is not rt.NULL:
        seen = seen & (mask.seg[:, Tk - Tq + i0:Tk - Tq + i0 + rows, None] == mask.seg[:, None, :])[:, None]
    return xp.where(seen, s, -np.inf)


def _widen(arrays, acc):
    return [a.astype(acc) for a in arrays]


def unfused_forward(q, k, v, scale, mask):
    """(o, lse) by the textbook formula, one block of query rows at a time (T x T memory per block)."""
    xp = backend.cupy()
    acc = accumulator_dtype(q.dtype)
    B, H, Tq, D = q.shape
    Tk, G = k.shape[2], H // k.shape[1]
    qf, kk, vv = _widen((q, xp.repeat(k, G, axis=1), xp.repeat(v, G, axis=1)), acc)  # (B, H, T, D)
    o = xp.zeros((B, H, Tq, D), acc)
    lse = xp.full((B, H, Tq), -np.inf, acc)
    for i0, i1 in _query_blocks(B, H, Tq, Tk):
        s = _scores(qf[:, :, i0:i1], kk, i0, Tq, Tk, scale, mask, xp)
        m = s.max(-1, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        e = xp.exp(s - m)
        total = e.sum(-1, keepdims=True)
        o[:, :, i0:i1] = e @ vv / xp.where(total > 0, total, 1)
        t = total[..., 0]
        lse[:, :, i0:i1] = xp.where(t > 0, m[..., 0] + xp.log(xp.where(t > 0, t, 1)), -np.inf)
    return o.astype(q.dtype), lse


def unfused_backward(do, q, k, v, o, lse, scale, mask):
    """(dq, dk, dv) by the textbook formulas from lse, one block of query rows at a time."""
    xp = backend.cupy()
    acc = accumulator_dtype(q.dtype)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    qf, dof, of = _widen((q, do, o), acc)
    kk, vv = _widen((xp.repeat(k, G, axis=1), xp.repeat(v, G, axis=1)), acc)  # (B, H, Tk, D)
    dq = xp.zeros((B, H, Tq, D), acc)
    dk, dv = xp.zeros((B, H, Tk, D), acc), xp.zeros((B, H, Tk, D), acc)
    for i0, i1 in _query_blocks(B, H, Tq, Tk):
        s = _scores(qf[:, :, i0:i1], kk, i0, Tq, Tk, scale, mask, xp)
        lb = lse[:, :, i0:i1, None]
        p = xp.where(xp.isfinite(s) & xp.isfinite(lb), xp.exp(s - xp.where(xp.isfinite(lb), lb, 0)), 0)
        dob = dof[:, :, i0:i1]
        dp = dob @ vv.transpose(0, 1, 3, 2)  # (B, H, rows, Tk)
        delta = (dob * of[:, :, i0:i1]).sum(-1, keepdims=True)
        ds = p * (dp - delta)
        dq[:, :, i0:i1] = scale * ds @ kk
        dk += scale * ds.transpose(0, 1, 3, 2) @ qf[:, :, i0:i1]
        dv += p.transpose(0, 1, 3, 2) @ dob
    dk = dk.reshape(B, Hkv, G, Tk, D).sum(2)  # the heads sharing a kv head add up
    dv = dv.reshape(B, Hkv, G, Tk, D).sum(2)
    return dq.astype(q.dtype), dk.astype(q.dtype), dv.astype(q.dtype)


__all__ = ["flash_attention_forward", "flash_attention_backward", "supported", "element_type",
           "HEAD_DIMS"]
