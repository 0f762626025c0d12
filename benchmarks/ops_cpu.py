"""Forward + backward time of each fused op against (a) the same math composed from primitive ops
in this engine and (b) PyTorch on the CPU when it is installed, at the GPT's shapes.

    python benchmarks/ops_cpu.py [--repeat 15] [--only attention,layer_norm] [--torch-threads N]

Every row is measured in one process, the variants interleaved call by call, and reports medians
and the ratios prim/fused (how much fusing buys; target >= 2) and torch/fused (>= 1 means we are
no slower than PyTorch). Timings on a shared machine are noisy; ratios from the same run are not.
"""
import argparse
import math
import os
import platform
import sys
import time

# PyTorch's OpenMP threads spin for a while after each op by default, stealing the cores from
# whatever runs next (here: our variant): make them sleep instead. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tinygrad_llm.functional as F  # noqa: E402
from tinygrad_llm import Tensor  # noqa: E402
from tinygrad_llm import backend as _backend  # noqa: E402

_backend.keep_freed_memory()  # as the trainer does: freed temporaries stay mapped

SHAPES = {"small": dict(B=12, T=64, C=128, H=4, V=65), "medium": dict(B=8, T=256, C=384, H=6, V=65)}


# --- the same math from primitive ops ---------------------------------------------------------
def p_softmax(x):
    e = (x - x.max(axis=-1, keepdims=True)).exp()
    return e / e.sum(axis=-1, keepdims=True)


def p_log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - (x - m).exp().sum(axis=-1, keepdims=True).log()


def p_cross_entropy(logits, t):
    logp = p_log_softmax(logits.reshape(-1, logits.shape[-1]))
    return -logp[np.arange(t.size), t.reshape(-1)].mean()


def p_layer_norm(x, w, b, eps=1e-5):
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / ((xc * xc).mean(axis=-1, keepdims=True) + eps).sqrt() * w + b


def p_rms_norm(x, w, eps=1e-6):
    return x / ((x * x).mean(axis=-1, keepdims=True) + eps).sqrt() * w


def p_gelu(x):
    return 0.5 * x * (1.0 + ((x + 0.044715 * x ** 3) * math.sqrt(2 / math.pi)).tanh())


def p_attention(q, k, v):
    T, D = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(D))
    s = s.masked_fill(np.triu(np.ones((T, T), bool), 1), -np.inf)
    return p_softmax(s) @ v


# --- cases: name -> builder(shape dict, rng) returning (inputs, fused, prim, torch_fn) -----------
def _t(a, grad=True):
    return Tensor(a, requires_grad=grad)


def cases(S, rng, V_ce=None):
    B, T, C, H, V = S["B"], S["T"], S["C"], S["H"], S["V"]
    D = C // H
    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    tgt = rng.integers(0, V, (B, T))
    out = {
        "softmax": ([f32(B, H, T, T, scale=2)], F.softmax, p_softmax, lambda tc, x: tc.softmax(x, -1)),
        "log_softmax": ([f32(B, T, V, scale=2)], F.log_softmax, p_log_softmax,
                        lambda tc, x: tc.log_softmax(x, -1)),
        "cross_entropy": ([f32(B, T, V, scale=2)], lambda x: F.cross_entropy(x, tgt),
                          lambda x: p_cross_entropy(x, tgt),
                          lambda tc, x: tc.nn.functional.cross_entropy(x.reshape(-1, V), torch_t(tc, tgt).reshape(-1))),
        "layer_norm": ([f32(B, T, C), f32(C) + 1, f32(C)], F.layer_norm, p_layer_norm,
                       lambda tc, x, w, b: tc.nn.functional.layer_norm(x, (C,), w, b)),
        "rms_norm": ([f32(B, T, C), f32(C) + 1], F.rms_norm, p_rms_norm,
                     lambda tc, x, w: tc.nn.functional.rms_norm(x, (C,), w, 1e-6)),
        "gelu": ([f32(B, T, 4 * C)], F.gelu, p_gelu,
                 lambda tc, x: tc.nn.functional.gelu(x, approximate="tanh")),
        "silu": ([f32(B, T, 4 * C)], F.silu, lambda x: x * x.sigmoid(), lambda tc, x: tc.nn.functional.silu(x)),
        "swiglu": ([f32(B, T, 4 * C), f32(B, T, 4 * C)], F.swiglu, lambda g, u: g * g.sigmoid() * u,
                   lambda tc, g, u: tc.nn.functional.silu(g) * u),
        "embedding": ([f32(V, C)], lambda w: F.embedding(tgt, w), lambda w: w[tgt],
                      lambda tc, w: tc.nn.functional.embedding(torch_t(tc, tgt), w)),
        "dropout": ([f32(B, T, C)], lambda x: F.dropout(x, 0.1),
                    lambda x: x * Tensor((rng.random(x.shape) >= 0.1).astype(np.float32) / np.float32(0.9)),
                    lambda tc, x: tc.nn.functional.dropout(x, 0.1)),
        "attention": ([f32(B, H, T, D), f32(B, H, T, D), f32(B, H, T, D)], F.scaled_dot_product_attention,
                      p_attention,
                      lambda tc, q, k, v: tc.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)),
    }
    return out


def torch_t(tc, a):
    return tc.from_numpy(np.ascontiguousarray(a))


def ce_large_cases(rng, N, V):
    x = (rng.standard_normal((N, V)) * 2).astype(np.float32)
    t = rng.integers(0, V, N)
    return {"cross_entropy": ([x], lambda a: F.cross_entropy(a, t), lambda a: p_cross_entropy(a, t),
                              lambda tc, a: tc.nn.functional.cross_entropy(a, torch_t(tc, t)))}


def step_ours(fn, arrays):
    ts = [_t(a) for a in arrays]

    def run():
        for t in ts:
            t.grad = None
        y = fn(*ts)
        y.backward(Tensor(np.ones(y.shape, y.dtype)) if y.data.size > 1 else None)
    return run


def step_torch(tc, fn, arrays):
    ts = [tc.tensor(a, requires_grad=True) for a in arrays]

    def run():
        for t in ts:
            t.grad = None
        y = fn(tc, *ts)
        y.backward(tc.ones_like(y))
    return run


def measure(variants, repeat):
    for run in variants.values():  # warm up: first calls pay imports, caches, page faults
        run()
    times = {k: [] for k in variants}
    names = list(variants)
    for i in range(repeat):
        for k in names[i % len(names):] + names[:i % len(names)]:  # rotate: no variant always follows another
            run = variants[k]
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def blas_name():
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # noqa: BLE001 - older NumPy has no dict mode
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", default="", help="comma-separated op names")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: PyTorch's default")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    try:
        import torch as tc
        if args.no_torch:
            tc = None
        elif args.torch_threads:
            tc.set_num_threads(args.torch_threads)
    except ImportError:
        tc = None
    print(f"# ops_cpu: fused forward+backward vs primitives and PyTorch, medians of {args.repeat}")
    print(f"# numpy {np.__version__} (BLAS: {blas_name()}), python {platform.python_version()}, "
          f"{os.cpu_count()} cores, torch {tc.__version__ + f' ({tc.get_num_threads()} threads)' if tc else 'absent'}")
    print(f"# OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} "
          f"TINYGRAD_LLM_THREADS={os.environ.get('TINYGRAD_LLM_THREADS', 'unset')} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'op':<14} {'shape':<32} {'fused ms':>9} {'prim ms':>9} {'prim/fused':>10} {'torch ms':>9} "
          f"{'torch/fused':>11}")
    rng = np.random.default_rng(0)
    groups = [(f"{k} B{S['B']} T{S['T']} C{S['C']} H{S['H']} V{S['V']}", cases(S, rng))
              for k, S in SHAPES.items()]
    groups += [(f"N768 V{V}", ce_large_cases(rng, 768, V)) for V in (2048, 50304)]
    for label, group in groups:
        for name, (arrays, fused, prim, torch_fn) in group.items():
            if only and name not in only:
                continue
            variants = {"fused": step_ours(fused, arrays), "prim": step_ours(prim, arrays)}
            if tc is not None:
                variants["torch"] = step_torch(tc, torch_fn, arrays)
            r = measure(variants, args.repeat)
            tms = f"{r['torch'] * 1e3:9.3f} {r['torch'] / r['fused']:11.2f}" if "torch" in r else \
                f"{'-':>9} {'-':>11}"
            print(f"{name:<14} {label:<32} {r['fused'] * 1e3:9.3f} {r['prim'] * 1e3:9.3f} "
                  f"{r['prim'] / r['fused']:10.2f} {tms}", flush=True)


if __name__ == "__main__":
    main()
