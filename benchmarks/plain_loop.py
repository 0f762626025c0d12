"""A loop of one's own (`loss.backward(); opt.step()`) against the trainer's step and PyTorch's,
each side in its own process, alternating, medians over rounds.

    python benchmarks/plain_loop.py                       # nanoGPT's CPU config, 5 rounds
    python benchmarks/plain_loop.py --config medium --rounds 3

Sides (all: forward, backward, clip at 1.0, AdamW with decay 0.1 on matrices, float32):
    plain           the README's loop on one thread, nothing else set up: malloc is tuned by the
                    first backward pass (backend.keep_freed_memory)
    plain-untuned   the same with TINYGRAD_LLM_KEEP_MEMORY=0: what the loop cost before that
    trainer         the trainer's step: the batch in one row shard per core (parallel.py)
    torch           the same model in PyTorch, eager, all cores
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from host import describe  # noqa: E402
from train_cpu import CONFIGS  # noqa: E402

SIDES = ("plain", "plain-untuned", "trainer", "torch")


def plain_step(cfg):
    from reference_gpt import build_ours
    from tinygrad_llm import Tensor, optim
    model = build_ours(cfg)
    opt = optim.AdamW(optim.param_groups_for_weight_decay(model, 0.1), lr=1e-3, betas=(0.9, 0.99))
    params = list(model.parameters())

    def step(x, y):
        _, loss = model(Tensor(x), Tensor(y))
        loss.backward()
        optim.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return loss.item()
    return step


def runner(side, cfg):
    if side.startswith("plain"):
        return plain_step(cfg)
    if side == "trainer":
        from reference_gpt import build_ours, ours_step
        return ours_step(build_ours(cfg), lr=1e-3, betas=(0.9, 0.99))
    import torch
    from reference_gpt import build_torch, torch_step
    torch.set_num_threads(os.cpu_count())
    return torch_step(build_torch(cfg), lr=1e-3, betas=(0.9, 0.99), to_tensor=torch.from_numpy, foreach=True)


def one_side(side, name, steps, warmup):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    batches = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(4)]
    run, times = runner(side, cfg), []
    for i in range(warmup + steps):
        t = time.perf_counter()
        run(*batches[i % 4])
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=list(CONFIGS), default="small")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(one_side(args.side, args.config, args.steps, args.warmup)))
        return
    try:
        import torch  # noqa: F401
        sides = SIDES
    except ImportError:
        print("(torch not installed: ours only)")
        sides = SIDES[:3]
    print(describe())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TINYGRAD_LLM_KEEP"))}
    ms = {s: [] for s in sides}
    for _ in range(args.rounds):
        for side in sides:
            side_env = {**env, "TINYGRAD_LLM_KEEP_MEMORY": "0"} if side == "plain-untuned" else env
            out = subprocess.run([sys.executable, __file__, "--config", args.config, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--side", side], env=side_env,
                                 capture_output=True, text=True, check=True).stdout
            ms[side].append(json.loads(out.strip().splitlines()[-1]))
    cfg = CONFIGS[args.config]
    print(f"{args.config} (L={cfg['n_layer']} C={cfg['n_embd']} T={cfg['block_size']} B={cfg['batch_size']}), "
          f"{args.rounds} alternating rounds of {args.steps} steps, each side in its own process:")
    for side in sides:
        med = float(np.median(ms[side]))
        line = f"  {side:14s} {med:7.1f} ms/step (rounds {min(ms[side]):.1f}-{max(ms[side]):.1f})"
        if "torch" in ms and side != "torch":
            ratios = [t / o for o, t in zip(ms[side], ms["torch"])]
            line += f" | torch/ours {np.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
