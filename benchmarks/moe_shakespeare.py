"""Dense against mixture-of-experts, and MLA against MHA and GQA, trained on tiny Shakespeare.

    python benchmarks/moe_shakespeare.py --data ../shared/data/input.txt            # equal FLOPs
    python benchmarks/moe_shakespeare.py --data input.txt --seconds 300               # equal wall time
    python benchmarks/moe_shakespeare.py --data input.txt --tiny                      # it runs
    python benchmarks/moe_shakespeare.py --data input.txt --only dense,moe --out benchmarks/results/x.txt

Every variant is the same small Llama-style GPT (4 layers, 4 heads, 128 wide, T=64, RoPE,
RMSNorm, SwiGLU, no biases) on raw bytes (vocab 256: bits per byte is the loss over ln 2), trained
with AdamW from the same seed on the same batches, each in a process of its own (so its peak
memory is its own), one after the other:

    dense    the dense SwiGLU MLP (hidden 344)
    moe      8 experts, top 2, plus 1 shared, expert hidden 344 / 3: the dense model's active
             parameters per token; Switch's balancing loss 0.01
    moe-ds   the same with DeepSeek-V3's router: sigmoid scores, no balancing loss, the choice
             bias moved by 0.001 per step (nn.update_router_biases after each optimizer step)
    gqa      grouped-query attention, 2 k/v heads for the 4 query heads
    mla      multi-head latent attention (kv_lora_rank 128, rope 16, nope 32, v 32)

Budgets. Equal FLOPs (the default): the dense model trains --steps steps and every other variant
as many steps as its training FLOPs allow, FLOPs per token = 6 x active parameters (the tied
embedding counted once, for the head's GEMM) + 6 T H (d_qk + d_v) per layer for attention's two
GEMMs (forward 2 each, backward 4). Equal wall time (--seconds S): each trains for S seconds.
Each row: steps, training FLOPs, validation bits/byte on the whole validation split (last 10%),
training tokens/s, peak resident memory of the process, and the KV cache's bytes per token.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, pos="rope", norm="rmsnorm", mlp="swiglu",
            bias=False, vocab_size=256)
VARIANTS = {
    "dense": {},
    "moe": dict(moe_experts=8, moe_top_k=2, moe_shared=1, moe_aux_loss_coef=0.01),
    "moe-ds": dict(moe_experts=8, moe_top_k=2, moe_shared=1, moe_router="sigmoid", moe_aux_loss_coef=0.0,
                   moe_bias_update_rate=0.001),
    "gqa": dict(n_kv_head=2),
    "mla": dict(attn="mla"),
}
TRAIN = dict(batch_size=12, lr=1e-3, warmup_iters=100, eval_every=0, eval_iters=4, log_every=50, seed=1337,
             final_eval="full", grad_clip=1.0, weight_decay=0.1)


def model_config(name):
    from tinygrad_llm.models import GPTConfig
    return GPTConfig(**BASE, **VARIANTS[name])


def flops_per_token(cfg):
    """Training FLOPs per token: 6 x active parameters + attention's two GEMMs (see the docstring)."""
    if cfg.attn == "mla":
        d_qk, d_v = cfg.mla_nope_dim + cfg.mla_rope_dim, cfg.mla_v_dim
    else:
        d_qk = d_v = cfg.head_size
    return 6 * cfg.num_parameters(active=True) + cfg.n_layer * 6 * cfg.block_size * cfg.n_head * (d_qk + d_v)


def kv_bytes_per_token(cfg):
    from tinygrad_llm.models.gpt import KVCache
    return KVCache(cfg, 1, np.float32, np).bytes_per_token()


def byte_data(path):
    from tinygrad_llm.data import TokenData
    raw = Path(path).read_bytes()
    return TokenData(np.frombuffer(raw, dtype=np.uint8).astype(np.uint16), val_fraction=0.1, seed=1337,
                     source_bytes=len(raw))


def run_one(name, data_path, steps, seconds, out_dir):
    """Train variant `name` in this process; returns its row (a JSON-able dict)."""
    from tinygrad_llm import nn
    from tinygrad_llm.train import TrainConfig, Trainer
    cfg = model_config(name)
    train = dict(TRAIN, out_dir=str(out_dir), model=cfg.to_dict(),
                 max_iters=steps if not seconds else 10 ** 9, max_seconds=float(seconds or 0.0))
    trainer = Trainer(TrainConfig(**train), data=byte_data(data_path), decode_bytes=bytes, log=lambda m: None)
    if cfg.moe_bias_update_rate > 0:  # DeepSeek's rule: after every optimizer step, outside the gradient
        step = trainer.train_step

        def step_and_update():
            out = step()
            nn.update_router_biases(trainer.model)
            return out
        trainer.train_step = step_and_update
    t0 = time.perf_counter()
    summary = trainer.run(overwrite=True)
    wall = time.perf_counter() - t0
    tokens = summary["step"] * TRAIN["batch_size"] * cfg.block_size
    return {"variant": name, "status": summary["status"], "steps": summary["step"],
            "params": cfg.num_parameters(), "active_params": cfg.num_parameters(active=True),
            "flops_per_token": flops_per_token(cfg), "train_flops": flops_per_token(cfg) * tokens,
            "val_bpb": summary["val_bpb"], "val_loss": summary["val_loss"],
            "tokens_per_s": tokens / summary["elapsed_s"] if summary["elapsed_s"] else None,
            "train_s": summary["elapsed_s"], "wall_s": wall,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "kv_bytes_per_token": kv_bytes_per_token(cfg)}


def table(rows, header):
    lines = header + [f"{'variant':<8} {'params':>9} {'active':>9} {'steps':>6} {'train TFLOP':>11} "
                      f"{'val bits/byte':>13} {'tok/s':>8} {'train s':>8} {'peak MiB':>9} {'KV B/token':>10}"]
    for r in rows:
        bpb = f"{r['val_bpb']:.4f}" if r.get("val_bpb") is not None else "-"
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        lines.append(f"{r['variant']:<8} {r['params']:>9,} {r['active_params']:>9,} {r['steps']:>6} "
                     f"{r['train_flops'] / 1e12:>11.2f} {bpb:>13} {tps:>8} {r['train_s']:>8.1f} "
                     f"{r['peak_rss_mib']:>9.0f} {r['kv_bytes_per_token']:>10,}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="tiny Shakespeare's input.txt (any text file)")
    p.add_argument("--steps", type=int, default=1000, help="the dense model's steps (equal FLOPs)")
    p.add_argument("--seconds", type=float, default=0.0, help="equal wall time: seconds of training each")
    p.add_argument("--only", default=",".join(VARIANTS), help="variants, comma separated")
    p.add_argument("--tiny", action="store_true", help="20 steps each: a check that it runs")
    p.add_argument("--out", help="also write the table here")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: train one variant in this process
    p.add_argument("--run-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        p.error(f"--data {args.data}: no such file")
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_one(args.run, args.data, args.run_steps, args.seconds, Path(tmp) / "run")
        Path(args.json).write_text(json.dumps(row))
        return 0
    names = args.only.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--only: unknown variants {unknown}; known: {list(VARIANTS)}")
    steps = 20 if args.tiny else args.steps
    ref = flops_per_token(model_config("dense"))
    budget = "equal wall time, %.0f s each" % args.seconds if args.seconds else \
        f"equal training FLOPs: the dense model's {steps} steps"
    load = os.getloadavg()[0]
    header = [f"# benchmarks/moe_shakespeare.py on {Path(args.data).name} (bytes, vocab 256), {budget}",
              f"# {BASE}, AdamW lr {TRAIN['lr']}, batch {TRAIN['batch_size']}, seed {TRAIN['seed']}; "
              f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cores, "
              f"load average at start {load:.1f}"]
    rows = []
    for name in names:
        n_steps = max(1, round(steps * ref / flops_per_token(model_config(name))))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--data", args.data, "--run", name, "--run-steps", str(n_steps),
                   "--seconds", str(args.seconds), "--json", str(out)]
            subprocess.run(cmd, check=True)
            rows.append(json.loads(out.read_text()))
        print(f"{name}: {rows[-1]['steps']} steps, val {rows[-1]['val_bpb']:.4f} bits/byte, "
              f"{rows[-1]['train_s']:.0f} s", flush=True)
    text = table(rows, header + [f"# load average at the end {os.getloadavg()[0]:.1f}"])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
