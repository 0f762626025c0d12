"""Tokens/s of a full GPT training step on the GPU, against the same model in PyTorch eager.

    python benchmarks/train_gpu.py                    # both configs
    python benchmarks/train_gpu.py --config gpt2 --steps 20

One step = forward, cross-entropy, backward, gradient clipping at 1.0, AdamW, zero_grad.
Configs: "shakespeare" = nanoGPT's GPU Shakespeare recipe (6 layers, 6 heads, 384 wide, T=256,
B=64, vocab 65); "gpt2" = GPT-2 124M (12 x 12 x 768, T=1024, B=8, vocab 50,304).
Four runs are interleaved step by step: ours and PyTorch, each with float32 matmuls in TF32 and in
full float32 (tl.backend.set_tf32 / torch.backends.cuda.matmul.allow_tf32, switched before each
step). Ratios are ours tokens/s over PyTorch's in the same precision; the target is >= 0.9.
--bf16 adds two more: ours under tl.autocast("bf16") against PyTorch under
torch.autocast("cuda", torch.bfloat16) (target >= 0.8; llm.c's 1.26 is the moonshot).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm import backend  # noqa: E402
from reference_gpt import build_ours, build_torch, ours_step, torch_step  # noqa: E402

CONFIGS = {
    "shakespeare": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, vocab_size=65),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, vocab_size=50304),
}


def ours(cfg):
    model = build_ours(cfg)
    model.to("cuda")
    return ours_step(model, lr=3e-4, betas=(0.9, 0.95))


def torch_model(cfg):
    return torch_step(build_torch(cfg).cuda(), lr=3e-4, betas=(0.9, 0.95), fused=True)


def time_interleaved(runners, steps, warmup, synchronize, clock=time.perf_counter):
    """Seconds per step of each runner, the runners interleaved step by step (the same clocks and
    neighbours for all). Each timed step ends with a device synchronisation: work a runner left
    queued on the GPU would otherwise be charged to the runner after it."""
    times = {k: [] for k in runners}
    for i in range(warmup + steps):
        for k, run in runners.items():
            t0 = clock()
            run(i)
            synchronize()
            if i >= warmup:
                times[k].append(clock() - t0)
    return times


def _under(context, step, *batch):
    with context:
        return step(*batch)


def bench(name, steps, warmup, bf16=False):
    cfg = CONFIGS[name]
    cp = backend.cupy()
    rng = np.random.default_rng(0)
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    host = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(4)]
    ours_batches = [(tl.Tensor(cp.asarray(x)), tl.Tensor(cp.asarray(y))) for x, y in host]
    step_ours = ours(cfg)
    runners = {"ours tf32": lambda i: (backend.set_tf32(True), step_ours(*ours_batches[i % 4])),
               "ours fp32": lambda i: (backend.set_tf32(False), step_ours(*ours_batches[i % 4]))}
    if bf16:
        runners["ours bf16"] = lambda i: (backend.set_tf32(True),
                                          _under(tl.autocast("bf16"), step_ours, *ours_batches[i % 4]))
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("torch without CUDA")
    except ImportError as e:
        print(f"(no PyTorch with CUDA: ours only; {e})")
    else:
        step_torch = torch_model(cfg)
        torch_batches = [(torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda"))
                         for x, y in host]

        def run_torch(i, tf32):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            return step_torch(*torch_batches[i % 4])
        runners["torch tf32"] = lambda i: run_torch(i, True)
        runners["torch fp32"] = lambda i: run_torch(i, False)
        if bf16:
            runners["torch bf16"] = lambda i: _under(torch.autocast("cuda", dtype=torch.bfloat16),
                                                     run_torch, i, True)
    times = time_interleaved(runners, steps, warmup, cp.cuda.Device().synchronize)
    backend.set_tf32(True)
    tok = B * T
    tps = {k: tok / float(np.median(v)) for k, v in times.items()}
    print(f"{name} (L={cfg['n_layer']} C={cfg['n_embd']} T={T} B={B} V={V})")
    for k, v in tps.items():
        print(f"  {k:11s} {1000 * tok / v:8.1f} ms/step {v:12,.0f} tok/s")
    for prec, target in (("tf32", 0.9), ("fp32", 0.9), ("bf16", 0.8)):
        if f"torch {prec}" in tps and f"ours {prec}" in tps:
            print(f"  ratio ours/torch {prec}: {tps[f'ours {prec}'] / tps[f'torch {prec}']:.2f} "
                  f"(target >= {target})")
    return tps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS) + ["all"], default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time both under bf16 autocast")
    args = parser.parse_args()
    if not tl.cuda_available():
        sys.exit("train_gpu: no GPU here (needs CuPy and an NVIDIA GPU); nothing to measure")
    cp = backend.cupy()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"{name.decode() if isinstance(name, bytes) else name}; medians of {args.steps} interleaved steps")
    for cname in (CONFIGS if args.config == "all" else [args.config]):
        bench(cname, args.steps, args.warmup, args.bf16)


if __name__ == "__main__":
    main()
