"""Forward + backward time of a mixture-of-experts layer against the dense MLP with the same
active parameters per token, in one process, call by call.

    python benchmarks/moe_cpu.py                      # default width 768, 8 experts, top 2
    python benchmarks/moe_cpu.py --tokens 3072 --repeat 15 --profile
    python benchmarks/moe_cpu.py --tiny               # a quick check that it runs

Rows: the dense MLP (hidden H = 4 C for GELU), an MoE of E experts with top-k routing and
expert hidden H / k (k experts per token: the same active parameters, the same GEMM flops), and
the same with one shared expert (expert hidden H / (k + 1)). Each is timed two ways: "plain"
(one forward and backward, OpenBLAS on every core) and "sharded" (parallel.loss_backward: the
rows cut into one shard per core, one BLAS thread per shard, as the trainer runs a step).
Target: MoE / dense <= 1.5 at 8 experts, top 2, on the default width. --profile splits the
MoE's time by op (forward stages timed by hand, backward by the tracer): where the overhead of
routing, dispatch and combine sits beside the per-expert GEMMs.
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tinygrad_llm as tl  # noqa: E402
import tinygrad_llm.functional as F  # noqa: E402
from tinygrad_llm import Tensor, backend, parallel  # noqa: E402
from tinygrad_llm.models.gpt import MLP, GPTConfig  # noqa: E402
from tinygrad_llm.nn.moe import MoE  # noqa: E402
from tinygrad_llm.ops.moe import DispatchPlan  # noqa: E402

backend.keep_freed_memory()  # as the trainer does


def layers(C, experts, top_k, act):
    cfg = GPTConfig(n_embd=C, n_head=1, bias=False, mlp=act)  # heads do not matter to an MLP
    H = cfg.mlp_hidden
    tl.manual_seed(0)
    out = {"dense MLP": MLP(cfg)}
    out[f"MoE {experts}e top{top_k}"] = MoE(C, experts, top_k, H // top_k, act=act)
    out[f"MoE {experts}e top{top_k}+1 shared"] = MoE(C, experts, top_k, H // (top_k + 1), n_shared=1, act=act)
    return out, H


def step_plain(layer, x, dy):
    xt = Tensor(x, requires_grad=True)
    layer(xt).backward(Tensor(dy))


def step_sharded(layer, x, dy):
    C = x.shape[1]
    both = np.concatenate([x, dy], axis=1)  # (N, 2C): each shard gets its rows of x and of dy
    rows = np.zeros(x.shape[0], np.int64)  # one counted target per row: shards weigh by rows

    def loss(rows_of_both, _):
        y = layer(Tensor(rows_of_both[:, :C]))
        return (y * Tensor(rows_of_both[:, C:])).sum() * (1.0 / rows_of_both.shape[0])
    parallel.loss_backward(loss, both, rows)


def time_layers(named, x, dy, repeat, mode):
    step = step_plain if mode == "plain" else step_sharded
    times = {name: [] for name in named}
    for name, layer in named.items():  # warm-up: first calls page the buffers in
        step(layer, x, dy)
    for _ in range(repeat):
        for name, layer in named.items():  # interleaved: background load hits every row alike
            for p in layer.parameters():
                p.grad = None
            t0 = time.perf_counter()
            step(layer, x, dy)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def profile(moe, x, dy, repeat=3):
    """ms per stage of one MoE forward (by hand) and per op of its backward (the tracer)."""
    fwd = {}

    def clock(name, fn):
        t0 = time.perf_counter()
        out = fn()
        fwd[name] = fwd.get(name, 0.0) + (time.perf_counter() - t0) * 1e3 / repeat
        return out

    for _ in range(repeat):
        xt = Tensor(x, requires_grad=True)
        logits = clock("router GEMM", lambda: F.linear(xt, moe.gate.weight))
        idx = clock("choice (top-k)", lambda: moe.gate.choose(logits.data))
        w = clock("gate weights", lambda: F.topk_gate(logits, idx, moe.gate.score, moe.gate.norm_topk_prob))
        plan = clock("dispatch plan (sort)", lambda: DispatchPlan(idx, moe.n_experts))
        xs = clock("dispatch (gather)", lambda: F.dispatch(xt, plan))
        ex = moe.experts
        w1 = ex.gate_up_proj if ex.act == "swiglu" else ex.up_proj
        h = clock("expert GEMMs up", lambda: F.expert_linear(xs, w1, plan.offsets))
        if ex.act == "swiglu":
            a = clock("activation", lambda: F.swiglu(h[:, :ex.hidden], h[:, ex.hidden:]))
        else:
            a = clock("activation", lambda: F.gelu(h))
        ys = clock("expert GEMMs down", lambda: F.expert_linear(a, ex.down_proj, plan.offsets))
        y = clock("combine", lambda: F.combine(ys, w, plan))
        with tl.trace_backward() as t:
            y.backward(Tensor(dy))
    bwd = {op: s["seconds"] * 1e3 for op, s in t.summary().items()}
    return fwd, bwd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=768, help="n_embd (GPTConfig's default 768)")
    p.add_argument("--tokens", type=int, default=2048, help="rows per call (B x T; default 8 x 256)")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--act", choices=["gelu", "swiglu"], default="gelu")
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--modes", default="plain,sharded")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="width 64, 256 tokens, 2 repeats: it runs")
    args = p.parse_args(argv)
    if args.tiny:
        args.width, args.tokens, args.repeat = 64, 256, 2
    C, N = args.width, args.tokens
    named, H = layers(C, args.experts, args.top_k, args.act)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(np.float32)
    dy = rng.standard_normal((N, C)).astype(np.float32)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# moe_cpu: MoE layer vs the dense MLP of equal active parameters, forward + backward, medians of "
          f"{args.repeat}")
    print(f"# width {C}, {N} tokens, dense hidden {H} ({args.act}); numpy {np.__version__}, python "
          f"{platform.python_version()}, {parallel.usable_cores()} cores; load average {load:.1f}")
    print(f"{'mode':<9} {'layer':<26} {'active params':>13} {'ms':>9} {'/ dense':>8}")
    ratios = {}
    for mode in args.modes.split(","):
        ms = time_layers(named, x, dy, args.repeat, mode)
        dense = ms["dense MLP"]
        for name, layer in named.items():
            active = layer_active_parameters(layer)
            ratio = ms[name] / dense
            ratios[(mode, name)] = ratio
            print(f"{mode:<9} {name:<26} {active:>13,} {ms[name]:>9.1f} {ratio:>8.2f}")
    moe_name = f"MoE {args.experts}e top{args.top_k}"
    print(f"target: {moe_name} / dense <= 1.5 -> " +
          ", ".join(f"{m} {ratios[(m, moe_name)]:.2f}" for m in args.modes.split(",")))
    if args.profile:
        fwd, bwd = profile(named[moe_name], x, dy)
        total = sum(fwd.values()) + sum(bwd.values())
        print(f"\n# {moe_name}, one plain call by stage (ms, share of {total:.0f} ms)")
        for part, table in (("forward", fwd), ("backward", bwd)):
            for name, v in sorted(table.items(), key=lambda kv: -kv[1]):
                print(f"{part:<9} {name:<26} {v:>9.2f} {v / total:>7.1%}")
    return 0


def layer_active_parameters(layer):
    if isinstance(layer, MoE):
        per_expert = sum(p.size for p in (layer.experts.down_proj, *(q for n, q in layer.experts.named_parameters()
                                                                       if n != "down_proj"))) // layer.n_experts
        shared = sum(p.size for p in layer.shared_experts.parameters()) if layer.n_shared else 0
        return layer.top_k * per_expert + shared + layer.gate.weight.size
    return sum(p.size for p in layer.parameters())


if __name__ == "__main__":
    sys.exit(main())
