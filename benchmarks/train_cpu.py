"""ms/step and tokens/s of a GPT training step (forward, backward, clip, AdamW) on the CPU,
against the same model written in PyTorch inside this script (eager, float32, same threads).

    python benchmarks/train_cpu.py                         # both configs, 3 rounds of separate processes
    python benchmarks/train_cpu.py --config small --separate 5 --steps 40
    python benchmarks/train_cpu.py --interleaved           # both sides in one process, step by step
    python benchmarks/train_cpu.py --config small --steps 30 --interleaved --profile

Configs: "small" = nanoGPT's CPU Shakespeare recipe (4 layers, 4 heads, 128 wide, T=64, B=12,
vocab 65); "medium" = its GPU recipe's model (6 layers, 6 heads, 384 wide, T=256, B=12 here).
"long" = the medium model at T=1024 (B=4); "gpt2" = GPT-2 124M's shape (12 x 768, vocab 50257,
T=256, B=4). `--config scaling` runs all four. Speed ratio = torch ms / ours ms (> 1: we are
faster), from medians; in separate processes each side's peak RSS (ru_maxrss: model, optimizer
state and the step's activations) is printed too.

Two ways to compare. By default each side runs in its own process, alternating for --separate N
rounds (3), and the medians of the rounds are compared: on a quiet machine that is the number to
quote. --interleaved times both in one process, step by step, so background load hits both alike;
but there each library's idle threads get in the other's way: PyTorch's OpenMP workers spin-wait
after its step while our shard threads need both cores (small config, same minutes: ours 39 ms
interleaved vs 36.4 ms alone, torch 36.7 either way).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host import describe  # noqa: E402
from reference_gpt import build_ours, build_torch, ours_step, torch_step  # noqa: E402

CONFIGS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=12, vocab_size=65),
    # how the step scales with the context (the medium model at T=1024) and to GPT-2 124M's shape
    "long": dict(n_layer=6, n_head=6, n_embd=384, block_size=1024, batch_size=4, vocab_size=65),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=4, vocab_size=50257),
}
SCALING = ("small", "medium", "long", "gpt2")


def ours(cfg):
    return ours_step(build_ours(cfg), lr=1e-3, betas=(0.9, 0.99))


def torch_model(cfg):
    import torch
    return torch_step(build_torch(cfg), lr=1e-3, betas=(0.9, 0.99), to_tensor=torch.from_numpy,
                      foreach=True)


def bench(name, steps, warmup, profile, only=None):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    batches = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(4)]
    runners = {} if only == "torch" else {"ours": ours(cfg)}
    if only != "ours":
        try:
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
            runners["torch"] = torch_model(cfg)
        except ImportError:
            print("(torch not installed: ours only)")
    times = {k: [] for k in runners}
    for i in range(warmup + steps):
        for k, run in runners.items():  # interleaved: the same background load hits both
            x, y = batches[i % len(batches)]
            t0 = time.perf_counter()
            run(x, y)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    if profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        for i in range(steps):
            runners["ours"](*batches[i % len(batches)])
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    if only is not None:
        return ms
    tok = B * T
    line = f"{name:7s} (L={cfg['n_layer']} C={cfg['n_embd']} T={T} B={B}) | ours {ms['ours']:7.1f} ms/step " \
           f"{tok / ms['ours'] * 1000:9,.0f} tok/s"
    if "torch" in ms:
        line += f" | torch {ms['torch']:7.1f} ms/step | speed ratio torch/ours {ms['torch'] / ms['ours']:.2f}"
    print(line, flush=True)
    return ms


def separate(name, steps, warmup, rounds):
    """Each side in its own process, alternating A B A B: no thread pool competes with the other's.

    This is the fair comparison with both libraries on all cores (in one process PyTorch's OpenMP
    workers and OpenBLAS's threads spin-wait against each other). Reports the median over rounds.
    """
    import json
    import subprocess
    meds, rss = {"ours": [], "torch": []}, {"ours": [], "torch": []}
    for _ in range(rounds):
        for side in ("ours", "torch"):
            out = subprocess.run([sys.executable, __file__, "--config", name, "--steps", str(steps),
                                  "--warmup", str(warmup), "--only", side],
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            meds[side].append(result[side])
            rss[side].append(result["peak_rss_mb"])
    ms = {k: float(np.median(v)) for k, v in meds.items()}
    mem = {k: max(v) for k, v in rss.items()}
    cfg = CONFIGS[name]
    tok = cfg["batch_size"] * cfg["block_size"]
    print(f"{name:7s} separate processes, {rounds} alternating rounds | ours {ms['ours']:7.1f} ms/step "
          f"{tok / ms['ours'] * 1000:9,.0f} tok/s | torch {ms['torch']:7.1f} ms/step "
          f"{tok / ms['torch'] * 1000:9,.0f} tok/s | speed ratio torch/ours {ms['torch'] / ms['ours']:.2f} "
          f"(rounds: {' '.join(f'{t / o:.2f}' for o, t in zip(meds['ours'], meds['torch']))}) | peak RSS "
          f"ours {mem['ours']:,.0f} MB, torch {mem['torch']:,.0f} MB ({mem['ours'] / mem['torch']:.2f}x)",
          flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", choices=list(CONFIGS) + ["all", "scaling"], default="all",
                   help="all: small and medium; scaling: small, medium, long and gpt2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile our step after timing")
    p.add_argument("--separate", type=int, default=3, metavar="ROUNDS",
                   help="rounds of each side in its own process, alternating (the default mode)")
    p.add_argument("--interleaved", action="store_true",
                   help="both sides in this process instead, step by step (needed for --profile)")
    p.add_argument("--only", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        import json
        import resource
        result = bench(args.config, args.steps, args.warmup, False, only=args.only)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    names = {"all": ("small", "medium"), "scaling": SCALING}.get(args.config, (args.config,))
    if not (args.interleaved or args.profile):
        try:
            import torch  # noqa: F401 - only to know whether the reference can run
        except ImportError:
            print("(torch not installed: ours only, in this process)")
        else:
            print(describe())
            print(f"numpy {np.__version__}, {os.cpu_count()} cpus; each side in its own process, "
                  f"medians of {args.steps} steps per round, then over the rounds")
            for name in names:
                separate(name, args.steps, args.warmup, args.separate)
            return
    print(describe())
    print(f"numpy {np.__version__}, {os.cpu_count()} cpus; medians of {args.steps} interleaved steps")
    for name in names:
        bench(name, args.steps, args.warmup, args.profile)


if __name__ == "__main__":
    main()
