"""How each position scheme carries a model past the length it was trained on.

    python benchmarks/length_generalisation.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/length_generalisation.py --data input.txt --tiny          # it runs (20 steps)
    python benchmarks/length_generalisation.py --data input.txt --only rope,alibi --steps 300

The same small GPT (4 layers, 4 heads, 128 wide, GPT-2's LayerNorm and GELU, on raw bytes: vocab
256, so bits per byte is the loss over ln 2) is trained at T=64 from one seed on the same batches
with each position scheme, every scheme in a process of its own, one after the other:

    learned      GPT-2's table of 64 position vectors
    rope         RoPE on every layer
    alibi        ALiBi's per-head distance penalties
    nope         no position signal (the causal mask alone)
    rope+nope    RoPE on layers 0-2, NoPE on layer 3 (pos="rope,rope,rope,none")

Then each is evaluated on the first --eval-tokens tokens of the validation split (the last 10%),
cut into non-overlapping windows of T = 64, 128, ..., 1024 tokens, the loss averaged over every
position of every window: the same text at each length, only the context differs. A learned table
has no row past position 63, so that model is evaluated at T=64 only (extend_context refuses the
rest). The RoPE model is evaluated again with its frequencies scaled by factor T / 64 (linear
interpolation, dynamic NTK, YaRN; GPT.extend_context). Writes the table (--out), a JSON file of
the numbers beside it, and the plot (--plot).
"""
import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAIN_T = 64
EVAL_T = (64, 128, 256, 512, 1024)
BASE = dict(n_layer=4, n_head=4, n_embd=128, block_size=TRAIN_T, vocab_size=256, dropout=0.0)
SCHEMES = {"learned": "learned", "rope": "rope", "alibi": "alibi", "nope": "none",
           "rope+nope": "rope,rope,rope,none"}
SCALINGS = ("linear", "ntk", "yarn")  # evaluated on the RoPE model
TRAIN = dict(batch_size=12, lr=1e-3, warmup_iters=100, eval_every=0, eval_iters=4, log_every=100, seed=1337,
             final_eval="full", grad_clip=1.0, weight_decay=0.1, optimizer="adamw")


def byte_data(path):
    from tinygrad_llm.data import TokenData
    raw = Path(path).read_bytes()
    return TokenData(np.frombuffer(raw, dtype=np.uint8).astype(np.uint16), val_fraction=0.1, seed=1337,
                     source_bytes=len(raw))


def eval_bpb(model, val, T, tokens, batch=8):
    """Bits per byte on the first `tokens` validation tokens in windows of T (bytes: loss / ln 2)."""
    from tinygrad_llm.autograd import no_grad
    n = tokens // T
    windows = np.asarray(val[:n * T + 1], dtype=np.int64)
    x, y = windows[:-1].reshape(n, T), windows[1:].reshape(n, T)
    total = 0.0
    with no_grad(), model.evaluating():
        for i in range(0, n, batch):
            _, loss = model(x[i:i + batch], y[i:i + batch])
            total += float(loss.data) * len(x[i:i + batch])
    return total / n / math.log(2)


def run_one(name, data_path, steps, eval_tokens, out_dir):
    """Train scheme `name` in this process, then evaluate it at every length; returns its rows."""
    import copy

    from tinygrad_llm.models import GPTConfig
    from tinygrad_llm.train import TrainConfig, Trainer
    cfg = GPTConfig(**BASE, pos=SCHEMES[name])
    data = byte_data(data_path)
    train = dict(TRAIN, out_dir=str(out_dir), model=cfg.to_dict(), max_iters=steps, max_seconds=0.0)
    trainer = Trainer(TrainConfig(**train), data=data, decode_bytes=bytes, log=lambda m: None)
    t0 = time.perf_counter()
    summary = trainer.run(overwrite=True)
    train_s = time.perf_counter() - t0
    val = data.splits["val"]
    rows = []
    variants = [(name, None)] + ([(f"rope {s}", s) for s in SCALINGS] if name == "rope" else [])
    for label, scaling in variants:
        row = {"scheme": label, "steps": summary["step"], "train_s": train_s, "bpb": {}}
        for T in EVAL_T:
            if SCHEMES[name] == "learned" and T > TRAIN_T:
                row["bpb"][T] = None  # no table rows past TRAIN_T - 1
                continue
            model = copy.deepcopy(trainer.model)
            if T > TRAIN_T:
                model.extend_context(T, None if scaling is None else f"{scaling}:{T / TRAIN_T:g}")
            elif scaling is not None:
                row["bpb"][T] = rows[0]["bpb"][T]  # factor 1: the plain model
                continue
            row["bpb"][T] = eval_bpb(model, val, T, eval_tokens)
        rows.append(row)
    return rows


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def table(rows):
    lines = [f"{'scheme':<13}" + "".join(f"{'T=' + str(T):>9}" for T in EVAL_T)]
    for r in rows:
        cells = "".join(f"{r['bpb'][T]:>9.4f}" if r["bpb"].get(T) is not None else f"{'-':>9}"
                        for T in EVAL_T)
        lines.append(f"{r['scheme']:<13}{cells}")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        Ts = [T for T in EVAL_T if r["bpb"].get(T) is not None]
        ax.plot(Ts, [r["bpb"][T] for T in Ts], marker="o", linestyle="--" if " " in r["scheme"] else "-",
                label=r["scheme"])
    ax.axvline(TRAIN_T, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(EVAL_T, [str(T) for T in EVAL_T])
    ax.set_xlabel("evaluation length T (trained at T=64)")
    ax.set_ylabel("validation bits/byte")
    top = min(max(v for r in rows for v in r["bpb"].values() if v is not None), 4.0)
    ax.set_ylim(top=top)
    ax.set_title("Tiny Shakespeare, 4 x 128 GPT on bytes: length generalisation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="tiny Shakespeare's input.txt (any text file)")
    p.add_argument("--steps", type=int, default=800, help="training steps per scheme")
    p.add_argument("--eval-tokens", type=int, default=32768, help="validation tokens evaluated per length")
    p.add_argument("--only", default=",".join(SCHEMES), help="schemes, comma separated")
    p.add_argument("--tiny", action="store_true", help="20 steps each and 4096 tokens: a check that it runs")
    p.add_argument("--out", help="write the table here (and the numbers as JSON beside it)")
    p.add_argument("--plot", help="write the PNG here")
    p.add_argument("--work-dir", help="keep each scheme's numbers here (a rerun skips those done)")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: one scheme in this process
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        p.error(f"--data {args.data}: no such file")
    steps, eval_tokens = (20, 4096) if args.tiny else (args.steps, args.eval_tokens)
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_one(args.run, args.data, steps, eval_tokens, Path(tmp) / "run")
        Path(args.json).write_text(json.dumps(rows))
        return 0
    names = args.only.split(",")
    unknown = [n for n in names if n not in SCHEMES]
    if unknown:
        p.error(f"--only: unknown schemes {unknown}; known: {list(SCHEMES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            # --work-dir keeps each scheme's rows: a rerun skips the schemes it already has
            out = Path(args.work_dir or tmp) / f"{name}_{steps}.json"
            if not out.is_file():
                cmd = [sys.executable, __file__, "--data", args.data, "--run", name, "--json", str(out),
                       "--steps", str(steps), "--eval-tokens", str(eval_tokens)]
                subprocess.run(cmd, check=True)
            got = json.loads(out.read_text())
            for r in got:
                r["bpb"] = {int(T): v for T, v in r["bpb"].items()}
                print(f"{r['scheme']:<13} {r['steps']} steps in {r['train_s']:.0f} s: " +
                      ", ".join(f"T={T} {v:.4f}" for T, v in r["bpb"].items() if v is not None), flush=True)
            rows += got
    header = [(f"Length generalisation on tiny Shakespeare (bytes), trained at T={TRAIN_T}, evaluated at "
               f"longer T. {steps} AdamW steps per scheme (batch 12, lr 1e-3, seed 1337), model "
               f"{BASE['n_layer']} layers x {BASE['n_embd']} wide, {BASE['n_head']} heads."),
              (f"Validation bits/byte over the first {eval_tokens} validation tokens, the same text at "
               "every T; learned positions have no table rows past T=64 ('-')."),
              "RoPE scaled: factor T / 64 at each T (linear interpolation, dynamic NTK, YaRN).",
              f"CPU: {cpu_name()} (shared, loaded machine; the numbers are quality, not speed).",
              f"Reproduce: python benchmarks/length_generalisation.py --data tinyshakespeare.txt --steps {steps}",
              ""]
    text = "\n".join(header) + table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
