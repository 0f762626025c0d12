"""Fine-tuning memory: loading GPT-2 (ours against transformers), and the optimizer's state and
step time of full fine-tuning against LoRA.

    python benchmarks/finetune_memory.py                    # GPT-2 124M and 355M, LoRA r=8
    python benchmarks/finetune_memory.py --quick            # a tiny model: checks the script runs

1. Load. For each size, a randomly initialised GPT-2 is written in Hugging Face's layout
   (config.json + model.safetensors, float32) to --work-dir; then fresh processes each load it
   and then generate --new-tokens greedy tokens, reporting their peak RSS (VmHWM) after the
   imports, after the load and after the generation: ours (GPT.from_safetensors) and, when
   installed, transformers (GPT2LMHeadModel.from_pretrained). Target: ours <= 1.2x transformers'
   peak with the model ready to use (after generating: transformers maps float32 files without
   copying, so its weights only become resident when a forward touches them). The two must
   produce the same tokens. torch's import alone is a few hundred MB.
2. Optimizer memory on GPT-2 124M: AdamW's state bytes for full fine-tuning against LoRA r=8 on
   c_attn and c_proj (exp_avg + exp_avg_sq for the parameters that train), and the gradients.
3. Step time (forward, backward, AdamW step) of both, batch --batch x --seq tokens, the median of
   --steps steps after one warm-up step.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SIZES = {  # name -> (n_layer, n_head, n_embd); vocab 50257, 1024 positions, as GPT-2
    "124M": (12, 12, 768),
    "355M": (24, 16, 1024),
    "tiny": (2, 4, 64),
}


def gpt2_config(name, block_size=1024):
    from tinygrad_llm.models import GPTConfig
    L, H, C = SIZES[name]
    return GPTConfig(vocab_size=50257, block_size=block_size, n_layer=L, n_head=H, n_embd=C)


def random_gpt2(name, seed=0, block_size=1024):
    """A GPT-2 of the named size with N(0, 0.02) weights drawn in float32 (no float64 init pass)."""
    from tinygrad_llm.models import GPT
    model = GPT(gpt2_config(name, block_size), init=False)
    rng = np.random.default_rng(seed)
    for n, p in model.named_parameters():
        if n.endswith("ln_1.weight") or n.endswith("ln_2.weight") or n.endswith("ln_f.weight"):
            p.data[...] = 1.0
        else:
            p.data[...] = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
    return model


def write_checkpoint(name, work_dir):
    d = Path(work_dir) / f"gpt2-{name}"
    if not (d / "model.safetensors").exists():
        t0 = time.perf_counter()
        random_gpt2(name).save_pretrained(d)
        print(f"wrote {d} ({(d / 'model.safetensors').stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    return d


# ------------------------------------------------------------------------------- load (children)
def _status_mb(field):
    """A /proc/self/status figure in MB: VmRSS (now) or VmHWM (the peak). Not ru_maxrss: Linux
    carries that over from the parent through fork and exec, so a child started by a process
    that once held 2 GB would report 2 GB whatever it did itself."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(kind, directory, new_tokens):
    """Runs in a fresh process: import, load, generate greedily, print one JSON line."""
    prompt = np.arange(1000, 1016)[None]  # (1, 16) token ids
    if kind == "ours":
        from tinygrad_llm.models import GPT
        after_import = _status_mb("VmRSS")
        t0 = time.perf_counter()
        model = GPT.from_safetensors(directory)
        seconds = time.perf_counter() - t0
        load_peak = _status_mb("VmHWM")
        n = model.num_parameters()
        out = model.generate(prompt, new_tokens, temperature=0).numpy()
        logits = model(prompt)[0].numpy()[0, -1]
    else:
        import torch
        from transformers import GPT2LMHeadModel
        after_import = _status_mb("VmRSS")
        t0 = time.perf_counter()
        model = GPT2LMHeadModel.from_pretrained(directory, torch_dtype=torch.float32).eval()
        seconds = time.perf_counter() - t0
        load_peak = _status_mb("VmHWM")
        n = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            ids = torch.from_numpy(prompt)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=50256).numpy()
            logits = model(torch.from_numpy(prompt)).logits.numpy()[0, -1]
    print(json.dumps({"kind": kind, "after_import_mb": after_import, "load_peak_mb": load_peak,
                      "peak_mb": _status_mb("VmHWM"), "load_s": seconds, "params": n,
                      "tokens": out[0, 16:].tolist(), "logits": logits.astype(float).tolist()}))


def measure_load(kind, directory, new_tokens):
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(directory), str(new_tokens)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        return {"kind": kind, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def have_transformers():
    try:
        import importlib.util
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    except ValueError:
        return False


# --------------------------------------------------------------------------- optimizer and steps
def optimizer_and_step(name, rank, alpha, batch, seq, steps, seed=0):
    import tinygrad_llm as tl
    from tinygrad_llm import nn, optim
    tl.manual_seed(seed)
    rows = []
    for mode in ("full", f"LoRA r={rank}"):
        model = random_gpt2(name, seed, block_size=max(seq, 8))
        if mode != "full":
            nn.apply_lora(model, rank=rank, alpha=alpha, targets=("c_attn", "c_proj"))
        params = nn.trainable_parameters(model)
        opt = optim.AdamW(params, lr=1e-5)
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, 50257, (batch, seq))
        tgt = rng.integers(0, 50257, (batch, seq))
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad()
            _, loss = model(idx, tgt)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        state = sum(s.nbytes for group in opt._buckets for b in group for s in b.state.values())
        grads = sum(p.size * p.data.itemsize for p in params)
        rows.append({"mode": mode, "trainable": sum(p.size for p in params), "total": model.num_parameters(),
                     "optimizer_state_mb": state / 2**20, "grad_mb": grads / 2**20,
                     "step_s": statistics.median(times)})
        del model, opt, params
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "DIR", "TOKENS"), help=argparse.SUPPRESS)
    ap.add_argument("--new-tokens", type=int, default=8, help="greedy tokens generated after the load")
    ap.add_argument("--sizes", default="124M,355M", help="comma-separated: 124M, 355M, tiny")
    ap.add_argument("--quick", action="store_true", help="the tiny size only, a short step check")
    ap.add_argument("--work-dir", help="where the checkpoints go (default: a temporary directory)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--step-size", default="124M", help="model size for the optimizer and step rows")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    step_size = "tiny" if args.quick else args.step_size
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="finetune_memory_")
    work = Path(args.work_dir or tmp.name)
    hf = have_transformers()
    if not hf:
        print("transformers/torch not installed: the load rows show ours alone "
              "(pip install torch==2.13.0 transformers for the comparison)")
    results = {"load": [], "optimizer": []}
    print(f"\npeak RSS of a fresh process: after its imports, after the load, after {args.new_tokens} greedy tokens")
    print(f"{'model':>6} {'loader':>12} {'imports':>9} {'load':>9} {'generate':>9} {'load time':>9} "
          f"{'ratio (generate)':>16}")
    for name in sizes:
        d = write_checkpoint(name, work)
        ours = measure_load("ours", d, args.new_tokens)
        theirs = measure_load("transformers", d, args.new_tokens) if hf else None
        if theirs and "error" not in theirs and "error" not in ours:
            ours["max_logit_diff"] = float(np.abs(np.array(ours["logits"]) - np.array(theirs["logits"])).max())
        for r in (ours, theirs):
            if r is not None:
                r.pop("logits", None)  # 50257 numbers each: compared above, not kept
            if r is None:
                continue
            r["model"] = name
            results["load"].append(r)
            if "error" in r:
                print(f"{name:>6} {r['kind']:>12}  failed: {r['error']}")
                continue
            ratio = ""
            if r is ours and theirs and "error" not in theirs:
                r["ratio_vs_transformers"] = ours["peak_mb"] / theirs["peak_mb"]
                diff = ours["max_logit_diff"]
                same = "same tokens" if ours["tokens"] == theirs["tokens"] else "other tokens"
                ratio = f"{r['ratio_vs_transformers']:.2f}x, {same}, logits within {diff:.1e}"
            print(f"{name:>6} {r['kind']:>12} {r['after_import_mb']:>6.0f} MB {r['load_peak_mb']:>6.0f} MB "
                  f"{r['peak_mb']:>6.0f} MB {r['load_s']:>8.2f}s {ratio:>16}", flush=True)
    if hf:
        print("(transformers maps float32 safetensors without copying: its weights become resident as the "
              "first forward touches them, so the load column flatters it; the generate column compares "
              "two models ready to use. Target: ours <= 1.2x.)")
    print(f"\noptimizer (AdamW) and step on GPT-2 {step_size}, batch {args.batch} x {args.seq} tokens:")
    print(f"{'mode':>10} {'trainable':>12} {'optimizer state':>16} {'grads':>9} {'step':>8}")
    rows = optimizer_and_step(step_size, args.rank, args.alpha, args.batch, args.seq, 1 if args.quick else args.steps)
    for r in rows:
        results["optimizer"].append(r)
        print(f"{r['mode']:>10} {r['trainable']:>12,} {r['optimizer_state_mb']:>13.1f} MB {r['grad_mb']:>6.1f} MB "
              f"{r['step_s']:>7.2f}s", flush=True)
    full, lora = rows
    print(f"LoRA keeps {full['optimizer_state_mb'] / max(lora['optimizer_state_mb'], 1e-9):.0f}x less optimizer "
          f"state; its step takes {lora['step_s'] / full['step_s']:.2f}x the full step's time")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
