"""Where one training step goes on this host: per op forward and backward, GEMMs by shape, the
optimizer (Muon's Newton-Schulz apart), what is left for Python, and page faults.

    python benchmarks/profile_step.py                                  # the default run's model, Muon
    python benchmarks/profile_step.py --optimizer adamw --vocab-size 65   # nanoGPT's CPU config
    python benchmarks/profile_step.py --n-layer 6 --n-embd 384 --n-head 6 --block-size 256

The step is forward, loss.backward(), clip, opt.step() on one thread (one row shard), so every
op's time is its own and the parts add up to the step; the trainer's thread shards split the
same work over the cores. Each op's forward is timed by wrapping its class's forward, each
backward through autograd.add_backward_observer, each GEMM of the linear op by wrapping
ops.linear._mm. "Python and the graph" is the step minus all of those: building the graph,
the walk, gradient accumulation, the clip's norm. The timers themselves add a little; the
step time printed first is measured without them.

The header names the CPU (model, AVX-512/AMX flags) and NumPy's BLAS: hosts here differ.
"""
import argparse
import collections
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from host import describe  # noqa: E402
from tinygrad_llm import Tensor, autograd, backend, optim  # noqa: E402
from tinygrad_llm.models.gpt import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.ops import linear as linear_op  # noqa: E402
from tinygrad_llm.optim import muon as muon_module  # noqa: E402


def build(args):
    rng = np.random.default_rng(0)
    cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                    block_size=args.block_size, vocab_size=args.vocab_size)
    model = GPT(cfg)
    if args.optimizer == "muon":
        opt = optim.muon_hybrid(model, muon_lr=0.02, adamw_lr=1e-3, ns_schedule=args.ns_schedule)
    else:
        opt = optim.AdamW(optim.param_groups_for_weight_decay(model, 0.1), lr=1e-3)
    x = rng.integers(0, args.vocab_size, (args.batch_size, args.block_size))
    y = rng.integers(0, args.vocab_size, (args.batch_size, args.block_size))
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        opt.zero_grad()
        _, loss = model(Tensor(x), Tensor(y))
        loss.backward()
        optim.clip_grad_norm_(params, 1.0)
        opt.step()
    return step


class Timers:
    """Seconds and calls per key, in the order keys first appear."""

    def __init__(self):
        self.seconds, self.calls = collections.defaultdict(float), collections.Counter()

    def add(self, key, s):
        self.seconds[key] += s
        self.calls[key] += 1


def instrument(fwd, bwd, gemm, opt_timer):
    """Wrap every op's forward, the linear op's GEMM and the optimizers' updates; observe backward."""
    ops = set()
    todo = list(autograd.Function.__subclasses__())
    while todo:
        cls = todo.pop()
        ops.add(cls)
        todo += cls.__subclasses__()
    for cls in ops:
        if "forward" not in cls.__dict__:
            continue
        inner = cls.__dict__["forward"].__func__

        def forward(ctx, *a, _inner=inner, _name=cls.__name__, **k):
            t = time.perf_counter()
            out = _inner(ctx, *a, **k)
            fwd.add(_name, time.perf_counter() - t)
            return out
        cls.forward = staticmethod(forward)

    def observe(ctx, dy, dxs, seconds):
        bwd.add(ctx.fn.__name__ if ctx.fn is not None else "?", seconds)
    autograd.add_backward_observer(observe)

    mm = linear_op._mm

    def timed_mm(a, b):
        t = time.perf_counter()
        out = mm(a, b)
        gemm.add(f"{'x'.join(map(str, a.shape))} @ {'x'.join(map(str, b.shape))}", time.perf_counter() - t)
        return out
    linear_op._mm = timed_mm

    ns = muon_module.newton_schulz

    def timed_ns(X, *a, **k):
        t = time.perf_counter()
        out = ns(X, *a, **k)
        opt_timer.add(f"newton_schulz {'x'.join(map(str, X.shape))}", time.perf_counter() - t)
        return out
    muon_module.newton_schulz = timed_ns
    for cls in (optim.Muon, optim.AdamW):
        inner = cls._update

        def update(self, group, bucket, _inner=inner, _name=cls.__name__):
            t = time.perf_counter()
            _inner(self, group, bucket)
            opt_timer.add(f"{_name} update (all)", time.perf_counter() - t)
        cls._update = update


def table(title, timers, steps, total_ms, top):
    rows = sorted(timers.seconds.items(), key=lambda kv: -kv[1])[:top]
    print(f"\n{title}")
    for key, s in rows:
        ms = s / steps * 1e3
        print(f"  {key:<38} {ms:8.2f} ms/step {100 * ms / total_ms:6.1f}%  {timers.calls[key] // steps:5d} calls")
    return sum(timers.seconds.values()) / steps * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--optimizer", choices=("muon", "adamw"), default="muon")
    ap.add_argument("--ns-schedule", choices=("jordan", "polar_express"), default="jordan")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    backend.keep_freed_memory()  # as the trainer runs
    step = build(args)
    for _ in range(3):
        step()
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    step_ms = float(np.median(times)) * 1e3
    print(describe())
    print(f"GPT {args.n_layer}x{args.n_embd} T={args.block_size} B={args.batch_size} vocab {args.vocab_size}, "
          f"{args.optimizer}: {step_ms:.1f} ms/step on one thread (median of {args.steps}), "
          f"{faults:.0f} minor page faults per step")

    fwd, bwd, gemm, opt_t = Timers(), Timers(), Timers(), Timers()
    instrument(fwd, bwd, gemm, opt_t)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    timed_ms = (time.perf_counter() - t) / args.steps * 1e3
    f = table("forward, per op", fwd, args.steps, timed_ms, args.top)
    b = table("backward, per op", bwd, args.steps, timed_ms, args.top)
    table("GEMMs of the linear op (forward and backward), by shape", gemm, args.steps, timed_ms, args.top)
    o = table("optimizer", opt_t, args.steps, timed_ms, args.top)
    opt_total = sum(s for k, s in opt_t.seconds.items() if k.endswith("(all)")) / args.steps * 1e3
    ns_ms = sum(s for k, s in opt_t.seconds.items() if k.startswith("newton")) / args.steps * 1e3
    rest = timed_ms - f - b - opt_total
    print(f"\nstep with timers {timed_ms:.1f} ms: forward ops {f:.1f}, backward ops {b:.1f}, "
          f"optimizer {opt_total:.1f} (Newton-Schulz {ns_ms:.1f}, {100 * ns_ms / timed_ms:.0f}% of the step), "
          f"Python and the graph {rest:.1f} ms")
    del o


if __name__ == "__main__":
    main()
