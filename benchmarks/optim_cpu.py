"""Optimizer step time on the CPU: ours vs torch.optim (same process, interleaved, medians).

Parameter sets with real shapes:
  gpt2-small   124M parameters (wte 50257x768 tied to the head, wpe 1024x768, 12 blocks of 768)
  shakespeare  0.8M parameters (4 layers, 128 wide, vocab 65, block 64)

Timed: one optimizer step (gradients already in place), AdamW with the decay / no-decay groups,
Muon on the hidden matrices. Reference: torch.optim.AdamW(foreach=True) and torch.optim.Muon
(which runs its Newton-Schulz iteration in bfloat16), both on the same values and torch's
default thread count; for Muon also the same update in torch with the iteration in float32, as
ours is (torch-fp32-NS). Reported: median ms per step for each, and the ratio ours / torch
(< 1: ours is faster). Runs A and B alternately so load from other processes hits both alike.

    python benchmarks/optim_cpu.py                 # all (the gpt2-small Muon row takes minutes)
    python benchmarks/optim_cpu.py --sets shakespeare --opts adamw --reps 20
    python benchmarks/optim_cpu.py --sweep-chunk   # chunk size sweep of the flat AdamW step
    python benchmarks/optim_cpu.py --opts adamw --torch-threads 1
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tinygrad_llm import nn, optim, parallel  # noqa: E402
from tinygrad_llm.optim import flat  # noqa: E402
from tinygrad_llm import backend as _backend  # noqa: E402

_backend.keep_freed_memory()  # as the trainer does: freed temporaries stay mapped


def gpt_shapes(vocab, block, n_layer, C):
    """(name, shape) of a GPT-2-style model's parameters (the head tied to wte)."""
    shapes = [("wte.weight", (vocab, C)), ("wpe.weight", (block, C))]
    for i in range(n_layer):
        h = f"h.{i}."
        shapes += [(h + "ln_1.weight", (C,)), (h + "ln_1.bias", (C,)),
                   (h + "attn.c_attn.weight", (3 * C, C)), (h + "attn.c_attn.bias", (3 * C,)),
                   (h + "attn.c_proj.weight", (C, C)), (h + "attn.c_proj.bias", (C,)),
                   (h + "ln_2.weight", (C,)), (h + "ln_2.bias", (C,)),
                   (h + "mlp.c_fc.weight", (4 * C, C)), (h + "mlp.c_fc.bias", (4 * C,)),
                   (h + "mlp.c_proj.weight", (C, 4 * C)), (h + "mlp.c_proj.bias", (C,))]
    return shapes + [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]


SETS = {"gpt2-small": gpt_shapes(50257, 1024, 12, 768), "shakespeare": gpt_shapes(65, 64, 4, 128)}


def make_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    values = [(rng.standard_normal(s, dtype=np.float32) * 0.02) for _, s in shapes]
    grads = [(rng.standard_normal(s, dtype=np.float32) * 1e-3) for _, s in shapes]
    return values, grads


def ours(shapes, values, grads, kind):
    ps = [nn.Parameter(v.copy()) for v in values]
    hidden = [i for i, (n, s) in enumerate(shapes) if len(s) == 2 and not n.startswith("w")]
    if kind == "adamw":
        decay = [p for p, (_, s) in zip(ps, shapes) if len(s) == 2]
        no_decay = [p for p, (_, s) in zip(ps, shapes) if len(s) < 2]
        opt = optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}], lr=6e-4, betas=(0.9, 0.95))
        used = ps
    else:
        used = [ps[i] for i in hidden]
        opt = optim.Muon(used, lr=0.02, weight_decay=0.0, map_fn=parallel.on_cores)  # as the trainer
    opt.zero_grad()
    index = {id(p): i for i, p in enumerate(ps)}
    for p in used:
        p.grad.data[...] = grads[index[id(p)]]
    return opt


def torch_ref(shapes, values, grads, kind, fp32_muon=False):
    import torch
    ps = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    for p, g in zip(ps, grads):
        p.grad = torch.from_numpy(g.copy())
    if kind == "adamw":
        decay = [p for p, (_, s) in zip(ps, shapes) if len(s) == 2]
        no_decay = [p for p, (_, s) in zip(ps, shapes) if len(s) < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=6e-4,
                                 betas=(0.9, 0.95), foreach=True)
    hidden = [ps[i] for i, (n, s) in enumerate(shapes) if len(s) == 2 and not n.startswith("w")]
    if fp32_muon:
        return TorchMuonFloat32(hidden, lr=0.02)
    return torch.optim.Muon(hidden, lr=0.02, weight_decay=0.0)


class TorchMuonFloat32:
    """torch.optim.Muon's update written out with its Newton-Schulz iteration in float32 (torch's
    own runs it in bfloat16): the like-for-like reference for our float32 Muon."""

    def __init__(self, params, lr=0.02, momentum=0.95, a=3.4445, b=-4.7750, c=2.0315):
        import torch
        self.torch, self.params, self.lr, self.mu, self.abc = torch, params, lr, momentum, (a, b, c)
        self.bufs = [torch.zeros_like(p) for p in params]

    def step(self):
        torch = self.torch
        a, b, c = self.abc
        with torch.no_grad():
            for p, buf in zip(self.params, self.bufs):
                buf.lerp_(p.grad, 1 - self.mu)
                u = p.grad.lerp(buf, self.mu)
                X = u.T if u.size(0) > u.size(1) else u
                X = X / (X.norm() + 1e-7)
                for _ in range(5):
                    A = X @ X.T
                    B = torch.addmm(A, A, A, beta=b, alpha=c)
                    X = torch.addmm(X, B, X, beta=a)
                X = X.T if u.size(0) > u.size(1) else X
                p.add_(X, alpha=-self.lr * max(1, p.size(0) / p.size(1)) ** 0.5)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(name, kind, reps, have_torch):
    shapes = SETS[name]
    values, grads = make_params(shapes)
    arms = {"ours": ours(shapes, values, grads, kind)}
    if have_torch:
        arms["torch"] = torch_ref(shapes, values, grads, kind)
        if kind == "muon":
            arms["torch-fp32"] = torch_ref(shapes, values, grads, kind, fp32_muon=True)
    for opt in arms.values():
        opt.step()  # warm: state, scratch and the thread pool exist from here on
    times = {k: [] for k in arms}
    for _ in range(reps):
        for k, opt in arms.items():
            times[k].append(timed(opt.step))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    n = sum(int(np.prod(s)) for _, s in shapes)
    line = f"{name:12s} {kind:6s} {n / 1e6:7.2f}M  ours {med['ours']:9.2f} ms"
    if not have_torch:
        print(line + "   (torch not installed)")
        return
    line += f"  torch {med['torch']:9.2f} ms  ours/torch {med['ours'] / med['torch']:5.2f}"
    if "torch-fp32" in med:
        line += (f"  torch-fp32-NS {med['torch-fp32']:9.2f} ms  ours/torch-fp32-NS "
                 f"{med['ours'] / med['torch-fp32']:5.2f}")
    print(line, flush=True)


def sweep_chunk(name, reps):
    """The flat AdamW step for several (chunk size, threads, inline threshold) settings, against
    whole-array passes on one thread (the unchunked reference) in the same process."""
    shapes = SETS[name]
    values, grads = make_params(shapes)
    opt = ours(shapes, values, grads, "adamw")
    defaults = (flat.CHUNK, flat.THREADS, flat.MIN_PARALLEL)
    configs = {"unchunked 1 thread": (1 << 40, 1, 1 << 40), "halves 2 threads": (1 << 40, 2, 0)}
    for k in (14, 15, 16, 17, 18, 20):
        configs[f"chunk {1 << k:>7d} 1 thread"] = (1 << k, 1, 0)
        configs[f"chunk {1 << k:>7d} 2 threads"] = (1 << k, 2, 0)
    times = {c: [] for c in configs}
    for _ in range(reps):
        for c, setting in configs.items():
            flat.CHUNK, flat.THREADS, flat.MIN_PARALLEL = setting
            times[c].append(timed(opt.step))
    flat.CHUNK, flat.THREADS, flat.MIN_PARALLEL = defaults
    ref = statistics.median(times["unchunked 1 thread"])
    for c, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:12s} {c:24s}: {m * 1e3:8.2f} ms  ratio to unchunked 1 thread {m / ref:5.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["shakespeare", "gpt2-small"], choices=list(SETS))
    ap.add_argument("--opts", nargs="+", default=["adamw", "muon"], choices=["adamw", "muon"])
    ap.add_argument("--reps", type=int, default=0, help="timed steps per side (0: 30 small, 7 big)")
    ap.add_argument("--sweep-chunk", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads (0: torch's default); on a loaded machine 1 avoids "
                         "OpenMP spin-waiting, which can cost torch 10x on small steps")
    args = ap.parse_args()
    try:
        import torch
        have_torch = True
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        threads = torch.get_num_threads()
    except ImportError:
        have_torch, threads = False, 0
    print(f"numpy {np.__version__}; optimizer threads {flat.THREADS}, chunk {flat.CHUNK}; "
          f"torch threads {threads}; cpus {os.cpu_count()}")
    if args.sweep_chunk:
        for name in args.sets:
            sweep_chunk(name, args.reps or (30 if name == "shakespeare" else 5))
        return
    for name in args.sets:
        for kind in args.opts:
            reps = args.reps or (30 if name == "shakespeare" else (7 if kind == "adamw" else 3))
            compare(name, kind, reps, have_torch)


if __name__ == "__main__":
    main()
