"""The fused attention kernel (kernels/attention.cu) against the unfused CuPy path and PyTorch.

    python benchmarks/attention_gpu.py --check               # correctness on the GPU (~1-2 min)
    python benchmarks/attention_gpu.py                       # the speed table (see --help)
    python benchmarks/attention_gpu.py --dtype bfloat16 --dims 64 --T 512 1024 --reps 3
    python benchmarks/attention_gpu.py --memory              # peak memory at T = 8192

Speed: causal attention, B = 8, H = 12, D = 64 and 128, T = 512 .. 8192, forward and
forward + backward, in TFLOP/s counting the useful work of a causal mask (4 B H T^2 D / 2 for the
forward, 2.5 times that for the backward), each call timed with CUDA events, the contenders
interleaved, median of --reps (fewer for calls that take seconds). Contenders in the same run and dtype:
  ours      flash_attention_forward / _backward (tinygrad_llm/cuda/attention.py)
  unfused   plain CuPy with the (B, H, T, T) scores in memory (cuBLAS matmuls, softmax by
            elementwise ops): the path the kernel replaces; float32 only unless CuPy can multiply
            bfloat16 matrices
  torch     torch.nn.functional.scaled_dot_product_attention(is_causal=True) in the same dtype
            (its flash backend in bf16), when PyTorch with CUDA is installed
Targets (issue 13): float32 >= 3x the unfused path at T >= 1024; bf16 >= 50% of PyTorch flash.

--check: outputs and gradients against a float64 reference computed on the GPU (float32 within
float32 tolerance, bf16 within 1e-2 of each tensor's largest value) for T in {1, 7, 64, 257,
1024, 4096}, D in {32, 64, 128}, with GQA and segment ids, and each backward run twice: a result
that moves between identical runs is a race.

--memory: peak bytes allocated by one forward + backward at T = 8192 (ours, unfused, torch), from
a CuPy memory hook (ours, unfused) and torch.cuda.max_memory_allocated.

Results are saved as JSON in benchmarks/results/, named by date and GPU.
"""
import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_kernels' timer

from tinygrad_llm import backend  # noqa: E402
from tinygrad_llm.cuda import attention as fa  # noqa: E402
from gpu_kernels import median_ms  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def dtype_of(name):
    return bf16() if name == "bfloat16" else np.dtype(name)


def rand(cp, shape, dtype, rng):
    return cp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


# --- the unfused path: every (B, H, T, T) matrix in memory ----------------------------------------
def unfused_forward(cp, q, k, v, scale, causal=True):
    B, H, T, D = q.shape
    g = H // k.shape[1]
    kk, vv = cp.repeat(k, g, axis=1), cp.repeat(v, g, axis=1)
    s = cp.matmul(q, kk.transpose(0, 1, 3, 2)) * scale  # (B, H, T, T)
    if causal:
        s = s + cp.triu(cp.full((T, k.shape[2]), -cp.inf, dtype=s.dtype), 1 + k.shape[2] - T)
    s -= s.max(axis=-1, keepdims=True)
    p = cp.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return cp.matmul(p, vv), p


def unfused_backward(cp, do, q, k, v, p, scale):
    B, H = q.shape[:2]
    g = H // k.shape[1]
    kk, vv = cp.repeat(k, g, axis=1), cp.repeat(v, g, axis=1)
    dv = cp.matmul(p.transpose(0, 1, 3, 2), do)
    dp = cp.matmul(do, vv.transpose(0, 1, 3, 2))
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = cp.matmul(ds, kk) * scale
    dk = cp.matmul(ds.transpose(0, 1, 3, 2), q) * scale

    def group_sum(a):  # (B, H, T, D) -> (B, Hkv, T, D)
        return a.reshape(B, -1, g, *a.shape[2:]).sum(axis=2)
    return dq, group_sum(dk), group_sum(dv)


# --- the float64 reference for --check (on the GPU, with segment ids) -----------------------------
def reference64(cp, q, k, v, do, causal, scale, seg):
    q, k, v, do = (a.astype(cp.float64) for a in (q, k, v, do))
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    g = H // k.shape[1]
    kk, vv = cp.repeat(k, g, axis=1), cp.repeat(v, g, axis=1)
    i = cp.arange(Tq)[:, None] + (Tk - Tq)
    j = cp.arange(Tk)[None, :]
    mask = cp.broadcast_to(j <= i if causal else cp.ones((Tq, Tk), bool), (B, Tq, Tk))
    if seg is not None:
        mask = mask & (seg[:, Tk - Tq:, None] == seg[:, None, :])
    s = cp.where(mask[:, None], scale * cp.matmul(q, kk.transpose(0, 1, 3, 2)), -cp.inf)
    m = s.max(-1, keepdims=True)
    p = cp.exp(s - m)
    total = p.sum(-1, keepdims=True)
    p /= total
    o = cp.matmul(p, vv)
    lse = (m + cp.log(total))[..., 0]
    dp = cp.matmul(do, vv.transpose(0, 1, 3, 2))
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = scale * cp.matmul(ds, kk)
    dk = (scale * cp.matmul(ds.transpose(0, 1, 3, 2), q)).reshape(B, -1, g, Tk, D).sum(2)
    dv = cp.matmul(p.transpose(0, 1, 3, 2), do).reshape(B, -1, g, Tk, D).sum(2)
    return o, lse, dq, dk, dv


def check(cp, dims=(32, 64, 128), Ts=(1, 7, 64, 257, 1024, 4096)):
    """Correctness sweep; returns the rows for the results file and whether every case passed."""
    rng = np.random.default_rng(0)
    rows, ok = [], True
    for dtype in (np.dtype(np.float32), bf16()):
        for D in dims:
            for T in Ts:
                B, H, Hkv = (2, 4, 2) if T <= 1024 else (1, 4, 2)
                q, do = (rand(cp, (B, H, T, D), dtype, rng) for _ in range(2))
                k, v = (rand(cp, (B, Hkv, T, D), dtype, rng) for _ in range(2))
                seg = cp.asarray(np.cumsum(rng.random((B, T)) < 4.0 / max(T, 1), axis=1)
                                 .astype(np.int32))
                scale = 1.0 / np.sqrt(D)
                want = reference64(cp, q, k, v, do, True, scale, seg)
                o, lse = fa.flash_attention_forward(q, k, v, True, scale, segment_ids=seg)
                grads = fa.flash_attention_backward(do, q, k, v, o, lse, True, scale,
                                                    segment_ids=seg)
                again = fa.flash_attention_backward(do, q, k, v, o, lse, True, scale,
                                                    segment_ids=seg)
                identical = all(bool((a.view(cp.uint16) == b.view(cp.uint16)).all())
                                for a, b in zip(grads, again))
                errs = {}
                for name, got, w in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), want):
                    got = got.astype(cp.float64)
                    errs[name] = float(cp.abs(got - w).max() / max(float(cp.abs(w).max()), 1e-30))
                bound = 1e-2 if dtype == bf16() else 1e-4
                passed = identical and all(e <= bound for e in errs.values())
                ok &= passed
                rows.append(dict(dtype=dtype.name, D=D, T=T, B=B, H=H, Hkv=Hkv,
                                 max_rel_err=errs, bit_identical=identical, passed=passed))
                print(f"check {dtype.name:8s} D={D:3d} T={T:5d}  " +
                      "  ".join(f"{k}={e:.1e}" for k, e in errs.items()) +
                      f"  repeatable={identical}  {'ok' if passed else 'FAIL'}", flush=True)
    return rows, ok


# --- timing ---------------------------------------------------------------------------------------
def torch_of():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def contenders(cp, torch, dtype, B, H, T, D, rng):
    """{name: (forward fn, forward + backward fn)} for one shape."""
    scale = 1.0 / np.sqrt(D)
    q, k, v, do = (rand(cp, (B, H, T, D), dtype, rng) for _ in range(4))
    out = {}

    def ours_f():
        return fa.flash_attention_forward(q, k, v, True, scale)

    def ours_fb():
        o, lse = fa.flash_attention_forward(q, k, v, True, scale)
        return fa.flash_attention_backward(do, q, k, v, o, lse, True, scale)
    out["ours"] = (ours_f, ours_fb)
    try:
        unfused_forward(cp, q[:, :1, :8], k[:, :1, :8], v[:, :1, :8], scale)  # bf16 matmul?

        def unf_fb():
            o, p = unfused_forward(cp, q, k, v, scale)
            return unfused_backward(cp, do, q, k, v, p, scale)
        out["unfused"] = (lambda: unfused_forward(cp, q, k, v, scale), unf_fb)
    except Exception as e:  # CuPy without bfloat16 matmul
        print(f"  unfused path unavailable in {dtype.name}: {type(e).__name__}: {e}")
    if torch is not None:
        tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype.name]
        tq, tk, tv, tdo = (torch.randn(B, H, T, D, device="cuda", dtype=tdt) for _ in range(4))
        for t in (tq, tk, tv):
            t.requires_grad_(True)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def torch_f():
            with torch.no_grad():
                return sdpa(tq, tk, tv, is_causal=True)

        def torch_fb():
            sdpa(tq, tk, tv, is_causal=True).backward(tdo)
        out["torch"] = (torch_f, torch_fb)
    return out


def speed(cp, torch, dtypes, dims, Ts, B, H, reps):
    rng = np.random.default_rng(1)
    rows = []
    for dtype in dtypes:
        for D in dims:
            for T in Ts:
                flops_f = 4 * B * H * T * T * D / 2  # causal: half the score matrix is work
                flops = {"fwd": flops_f, "fwd+bwd": 3.5 * flops_f}
                row = dict(dtype=dtype.name, D=D, T=T, B=B, H=H)
                try:
                    fns = contenders(cp, torch, dtype, B, H, T, D, rng)
                except cp.cuda.memory.OutOfMemoryError:
                    print(f"{dtype.name} D={D} T={T}: out of memory setting up")
                    continue
                for i, stage in enumerate(("fwd", "fwd+bwd")):
                    for name, pair in fns.items():
                        try:
                            ms = median_ms(cp, {name: pair[i]}, reps, warmup=1, budget_ms=8000)[name]
                            row[f"{name}_{stage}_tflops"] = flops[stage] / ms / 1e9
                            row[f"{name}_{stage}_ms"] = ms
                        except (cp.cuda.memory.OutOfMemoryError, RuntimeError) as e:
                            row[f"{name}_{stage}_tflops"] = None
                            row[f"{name}_{stage}_error"] = type(e).__name__
                        cp.get_default_memory_pool().free_all_blocks()
                        if torch is not None:
                            torch.cuda.empty_cache()
                rows.append(row)
                print(f"{dtype.name:8s} D={D:3d} T={T:5d}  " + "  ".join(
                    f"{k[:-7]}={v:7.2f}" if v is not None else f"{k[:-7]}=  OOM"
                    for k, v in row.items() if k.endswith("_tflops")) + "  TFLOP/s", flush=True)
                del fns
    return rows


def memory(cp, torch, dtypes, B, H, T, D):
    """Peak bytes allocated during one forward + backward, per contender."""
    import cupy.cuda.memory_hook as mh

    class Peak(mh.MemoryHook):
        name = "peak"

        def __init__(self):
            self.now = self.peak = 0

        def malloc_postprocess(self, **kw):  # device_id, size, mem_size, mem_ptr, pmem_id
            self.now += kw["mem_size"]
            self.peak = max(self.peak, self.now)

        def free_postprocess(self, **kw):
            self.now -= kw["mem_size"]

    rng = np.random.default_rng(2)
    rows = []
    for dtype in dtypes:
        fns = contenders(cp, torch, dtype, B, H, T, D, rng)
        row = dict(dtype=dtype.name, B=B, H=H, T=T, D=D)
        for name, (_, fb) in fns.items():
            cp.get_default_memory_pool().free_all_blocks()
            try:
                if name == "torch":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fb()
                    torch.cuda.synchronize()
                    row["torch_peak_GiB"] = (torch.cuda.max_memory_allocated() - base) / 2**30
                else:
                    hook = Peak()
                    with hook:
                        fb()
                        cp.cuda.Device().synchronize()
                    row[f"{name}_peak_GiB"] = hook.peak / 2**30
            except cp.cuda.memory.OutOfMemoryError:
                row[f"{name}_peak_GiB"] = "out of memory"
        rows.append(row)
        print("memory", row, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="correctness sweep only")
    ap.add_argument("--memory", action="store_true", help="peak memory at T = 8192 only")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--dims", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--T", nargs="+", type=int, default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    cp = backend.cupy()
    torch = torch_of()
    gpu = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    print(f"GPU: {gpu}; PyTorch: {torch.__version__ if torch else 'not available'}")
    dtypes = [dtype_of(d) for d in args.dtype]
    result = dict(gpu=gpu, date=datetime.date.today().isoformat(), argv=sys.argv[1:])
    ok = True
    if args.check:
        result["check"], ok = check(cp)
        kind = "check"
    elif args.memory:
        result["memory"] = memory(cp, torch, dtypes, args.B, args.H, 8192, 64)
        kind = "memory"
    else:
        result["speed"] = speed(cp, torch, dtypes, args.dims, args.T, args.B, args.H, args.reps)
        kind = "speed"
    RESULTS.mkdir(exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-")
    path = RESULTS / f"attention_gpu_{kind}_{result['date']}_{slug}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"saved {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
