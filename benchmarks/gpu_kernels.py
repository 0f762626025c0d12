"""Each hand-written CUDA kernel against the bandwidth ceiling, the unfused CuPy path and PyTorch.

    python benchmarks/gpu_kernels.py                # every kernel, default sizes
    python benchmarks/gpu_kernels.py --only softmax layer_norm --reps 50

For every kernel and size it prints: the time (median of interleaved reps, CUDA events), the
achieved bandwidth counting the minimum traffic (each input read once, each output written once)
and its fraction of a device-to-device copy measured in the same run, then the ratios
cupy_ms / ours_ms (the op's plain CuPy reference: ops/*.py with the kernels off) and, when
PyTorch with CUDA is installed, torch_ms / ours_ms (> 1: ours is faster). Targets: softmax and
layer norm at >= 70% of the copy bandwidth at large sizes and no slower than PyTorch.
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

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm import backend, cuda  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(cp, fns, reps, warmup=3, budget_ms=None):
    """Median ms per call of each fn, the calls interleaved so drift hits them all alike. With
    budget_ms, slow calls get fewer reps (about budget_ms per fn, at least 2): the warm-up calls
    are timed to find the slowest."""
    start, end = cp.cuda.Event(), cp.cuda.Event()

    def elapsed(fn):
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end)

    slowest = max([elapsed(fn) for fn in fns.values() for _ in range(warmup)], default=0.0)
    if budget_ms is not None:
        reps = max(2, min(reps, int(budget_ms / max(slowest, 1e-3))))
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(elapsed(fn))
    return {k: float(np.median(v)) for k, v in times.items()}


def copy_bandwidth(cp, reps):
    """GB/s of a device-to-device copy of 1 GiB (read + write): the ceiling for our kernels."""
    n = (1 << 30) // 4
    src, dst = cp.ones(n, cp.float32), cp.empty(n, cp.float32)
    ms = median_ms(cp, {"copy": lambda: cp.copyto(dst, src)}, reps)["copy"]
    return 2 * src.nbytes / ms / 1e6


def torch_of(cp):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch


# Every family's cases are generators: their arrays are built only when the family is selected
# (--only), one size at a time, and freed before the next size is built (all of them at once
# would take 15-20 GB).
def _setup(cp, torch, dtype):
    T = (lambda a: torch.from_dlpack(a)) if torch else None
    return cp.random.default_rng(0), np.dtype(dtype).itemsize, T


def softmax_cases(cp, torch, dtype):
    """(name, shape, bytes moved, ours, cupy reference, torch or None) for each softmax size."""
    from tinygrad_llm.ops import softmax as S
    rng, s, T = _setup(cp, torch, dtype)
    for shape in ((4096, 1024), (65536, 1024), (8192, 50304)):
        x = rng.standard_normal(shape, dtype=dtype)
        dy = rng.standard_normal(shape, dtype=dtype)
        y = cuda.softmax_forward(x)
        n = x.size
        tx, ty, tdy = (T(x), T(y), T(dy)) if torch else (None,) * 3
        yield ("softmax fwd", shape, 2 * n * s, lambda x=x: cuda.softmax_forward(x),
               lambda x=x: S.softmax_forward_cpu(x),
               (lambda tx=tx: torch.softmax(tx, -1)) if torch else None)
        yield ("softmax bwd", shape, 3 * n * s, lambda y=y, dy=dy: cuda.softmax_backward(y, dy),
               lambda y=y, dy=dy: S.softmax_backward_cpu(y, dy),
               (lambda ty=ty, tdy=tdy: torch._softmax_backward_data(tdy, ty, -1, ty.dtype))
               if torch else None)


def layer_norm_cases(cp, torch, dtype):
    from tinygrad_llm.ops import norm as N
    rng, s, T = _setup(cp, torch, dtype)
    for shape in ((8192, 768), (65536, 768), (16384, 4096)):
        C = shape[1]
        x = rng.standard_normal(shape, dtype=dtype)
        w, b = rng.standard_normal(C, dtype=dtype), rng.standard_normal(C, dtype=dtype)
        dy = rng.standard_normal(shape, dtype=dtype)
        _, xhat, rstd = cuda.layer_norm_forward(x, w, b)
        n = x.size
        if torch:
            tx, tw, tb, tdy = T(x), T(w), T(b), T(dy)
            _, tmean, trstd = torch.native_layer_norm(tx, (C,), tw, tb, 1e-5)
        yield ("layer_norm fwd", shape, 3 * n * s, lambda x=x, w=w, b=b: cuda.layer_norm_forward(x, w, b),
               lambda x=x, w=w, b=b: N.layer_norm_forward_cpu(x, w, b),
               (lambda tx=tx, tw=tw, tb=tb: torch.native_layer_norm(tx, (C,), tw, tb, 1e-5))
               if torch else None)
        yield ("layer_norm bwd", shape, 3 * n * s,
               lambda dy=dy, xhat=xhat, rstd=rstd, w=w: cuda.layer_norm_backward(dy, xhat, rstd, w),
               lambda dy=dy, xhat=xhat, rstd=rstd, w=w: (N.layer_norm_backward_cpu(dy, xhat, rstd, w),
                                                         N._param_grads(dy, xhat, True, True)),
               (lambda tdy=tdy, tx=tx, tm=tmean, tr=trstd, tw=tw, tb=tb, C=C: torch.ops.aten.native_layer_norm_backward(
                   tdy, tx, (C,), tm, tr, tw, tb, [True, True, True])) if torch else None)


def cross_entropy_cases(cp, torch, dtype):
    from tinygrad_llm.ops import cross_entropy as CE
    rng, s, T = _setup(cp, torch, dtype)
    for shape in ((8192, 50304), (16384, 50304)):
        N_, V = shape
        x = rng.standard_normal(shape, dtype=dtype)
        t = cp.asarray(np.random.default_rng(1).integers(0, V, N_))
        valid = t != -100
        loss, lse = cuda.cross_entropy_forward(x, t)
        g = cp.full(N_, 1.0 / N_, dtype)
        n = x.size
        if torch:
            tx, tt = T(x).requires_grad_(), T(t)
        yield ("cross_entropy fwd", shape, n * s, lambda x=x, t=t: cuda.cross_entropy_forward(x, t),
               lambda x=x, t=t, valid=valid: CE.cross_entropy_forward_cpu(x, t, valid),
               (lambda tx=tx, tt=tt: torch.nn.functional.cross_entropy(tx.detach(), tt)) if torch else None)

        def ref_fb(x=x, t=t, valid=valid, g=g):
            _, e, r = CE.cross_entropy_forward_cpu(x, t, valid)
            return CE.cross_entropy_backward_cpu(e, r, t, valid, g)

        def torch_fb(tx=tx if torch else None, tt=tt if torch else None):
            tx.grad = None
            torch.nn.functional.cross_entropy(tx, tt).backward()
        yield ("cross_entropy fwd+bwd", shape, 3 * n * s,
               lambda x=x, t=t, g=g: cuda.cross_entropy_backward(x, t, cuda.cross_entropy_forward(x, t)[1], g),
               ref_fb, torch_fb if torch else None)


def gelu_cases(cp, torch, dtype):
    from tinygrad_llm.ops import activation as A
    rng, s, T = _setup(cp, torch, dtype)
    for n in (8192 * 3072, 65536 * 3072):
        x = rng.standard_normal(n, dtype=dtype)
        dy = rng.standard_normal(n, dtype=dtype)
        h = A.gelu_tanh_forward_cpu(x)[1]
        tx, tdy = (T(x), T(dy)) if torch else (None, None)
        yield ("gelu fwd", (n,), 2 * n * s, lambda x=x: cuda.gelu_forward(x),
               lambda x=x: A.gelu_tanh_forward_cpu(x),
               (lambda tx=tx: torch.nn.functional.gelu(tx, approximate="tanh")) if torch else None)
        yield ("gelu bwd", (n,), 3 * n * s, lambda x=x, dy=dy: cuda.gelu_backward(x, dy),
               lambda x=x, dy=dy, h=h: A.gelu_tanh_backward_cpu(dy, x, h),
               (lambda tx=tx, tdy=tdy: torch.ops.aten.gelu_backward(tdy, tx, approximate="tanh"))
               if torch else None)


def adamw_cases(cp, torch, dtype):
    rng, s, T = _setup(cp, torch, dtype)
    n = 124_000_000  # GPT-2 small's parameters in one flat bucket
    p, g, m, v = (rng.standard_normal(n, dtype=dtype) for _ in range(4))
    v = cp.abs(v)

    def adam_ref(p=p, g=g, m=m, v=v):  # the unfused update: one CuPy pass per line
        p *= 1 - 1e-3 * 0.1
        m += 0.1 * (g - m)
        v *= 0.95
        v += 0.05 * g * g
        p -= 1e-3 / 0.1 * m / (cp.sqrt(v) / 0.2 + 1e-8)

    def adam_torch():
        torch._fused_adamw_([tp], [tg], [tm], [tv], [], [tstep], lr=1e-3, beta1=0.9, beta2=0.95,
                            weight_decay=0.1, eps=1e-8, amsgrad=False, maximize=False)
    if torch:
        tp, tg, tm, tv = T(p.copy()), T(g), T(m.copy()), T(v.copy())
        tstep = torch.tensor([1.0], device="cuda")
    yield ("adamw step", (n,), 7 * n * s,
           lambda: cuda.adamw_step([p], [g], [m], [v], 1e-3, 0.9, 0.95, 1e-8, 0.1, 1),
           adam_ref, adam_torch if torch else None)


FAMILIES = {"softmax": softmax_cases, "layer_norm": layer_norm_cases,
            "cross_entropy": cross_entropy_cases, "gelu": gelu_cases, "adamw": adamw_cases}


def cases(cp, torch, dtype, only=None):
    """The selected cases, built lazily: a family is built only when some --only prefix can match
    one of its case names ("layer_norm" or "layer_norm bwd" select layer norm, "adam" AdamW)."""
    for family, build in FAMILIES.items():
        if only and not any(o.startswith(family) or family.startswith(o) for o in only):
            continue
        for case in build(cp, torch, dtype):
            if not only or any(case[0].startswith(o) for o in only):
                yield case


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--only", nargs="*", help="kernel name prefixes (softmax, layer_norm, ...)")
    args = parser.parse_args()
    if not tl.cuda_available():
        sys.exit("gpu_kernels: no GPU here (needs CuPy and an NVIDIA GPU); nothing to measure")
    cp = backend.cupy()
    torch = torch_of(cp)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    ceiling = copy_bandwidth(cp, args.reps)
    print(f"{name}; device-to-device copy {ceiling:,.0f} GB/s; {args.dtype}; medians of {args.reps} "
          f"interleaved reps; {'torch ' + torch.__version__ if torch else 'no torch with CUDA'}")
    rows = []
    header = f"{'kernel':22s} {'shape':>15s} {'ours ms':>9s} {'GB/s':>7s} {'% copy':>7s} " \
             f"{'cupy/ours':>9s} {'torch/ours':>10s}"
    print(header)
    print("-" * len(header))
    for kname, shape, nbytes, ours, ref, tfn in cases(cp, torch, np.dtype(args.dtype), args.only):
        fns = {"ours": ours, "cupy": ref}
        if tfn is not None:
            try:  # private torch entry points move between versions: skip the column, not the run
                tfn()
                fns["torch"] = tfn
            except Exception as e:  # noqa: BLE001
                print(f"  (torch {kname}: {type(e).__name__}: {e})")
        ms = median_ms(cp, fns, args.reps)
        gbs = nbytes / ms["ours"] / 1e6
        row = dict(kernel=kname, shape=list(shape), ms=ms, gb_s=gbs, frac_copy=gbs / ceiling,
                   cupy_ratio=ms["cupy"] / ms["ours"],
                   torch_ratio=ms["torch"] / ms["ours"] if "torch" in ms else None)
        rows.append(row)
        tr = f"{row['torch_ratio']:10.2f}" if row["torch_ratio"] else f"{'-':>10s}"
        print(f"{kname:22s} {str(tuple(shape)):>15s} {ms['ours']:9.3f} {gbs:7.0f} "
              f"{100 * gbs / ceiling:6.0f}% {row['cupy_ratio']:9.2f} {tr}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.date.today().isoformat()
    path = RESULTS / f"gpu_kernels_{stamp}_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.json"
    path.write_text(json.dumps(dict(device=name, date=stamp, dtype=args.dtype, copy_gb_s=ceiling,
                                    torch=torch.__version__ if torch else None, rows=rows), indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
