"""Throughput of `python -m tinygrad_llm eval` multiple choice on a GPT-2 124M-shaped model.

    python benchmarks/eval_throughput.py                  # 16 HellaSwag-shaped examples, batch 1 and 4
    python benchmarks/eval_throughput.py --quick          # a tiny model: checks the script runs

The model has GPT-2 small's shape (12 layers, 12 heads, 768 wide, vocabulary 50304, context
1024) with random weights: speed does not depend on what the weights know. The examples are
HellaSwag-shaped (a context of about --ctx-bytes bytes and four endings of about 60), tokenised
one id per byte, scored by evaluate_task exactly as the command does: each ending's
log-likelihood given its context, the batch's rows padded to the longest. Reported: examples/s
and ending rows/s per batch size, after one warm-up batch.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.evaluate import evaluate_task
from tinygrad_llm.models import GPT, GPTConfig

WORDS = ["the", "a", "man", "woman", "dog", "walks", "runs", "into", "kitchen", "slowly", "then", "picks",
         "up", "ball", "and", "throws", "it", "back", "while", "others", "watch", "from", "far", "near"]


class ByteTok:
    eot_id = None

    def encode(self, text):
        return list(text.encode("utf-8"))


def sentence(rng, n_bytes):
    words = []
    while sum(len(w) + 1 for w in words) < n_bytes:
        words.append(WORDS[rng.integers(len(WORDS))])
    return " ".join(words)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--ctx-bytes", type=int, default=150)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    tl.manual_seed(0)
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 512, "block_size": 256} if args.quick else {}
    cfg = GPTConfig(**shape)
    model = GPT(cfg).eval()
    records = [{"ctx": sentence(rng, args.ctx_bytes), "endings": [sentence(rng, 60) for _ in range(4)],
                "label": int(rng.integers(4))} for _ in range(args.examples)]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    print(f"# benchmarks/eval_throughput.py: {cfg.num_parameters() / 1e6:.1f}M parameters "
          f"({cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}), {args.examples} HellaSwag-shaped examples, "
          f"4 endings, context ~{args.ctx_bytes} bytes, ids = bytes")
    print(f"# {cpu}, {os.cpu_count()} cores, python {platform.python_version()}, numpy {np.__version__}, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hellaswag.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records))
        warm = Path(tmp) / "warm.jsonl"
        warm.write_text("\n".join(json.dumps(r) for r in records[:1]))
        print("batch  examples/s  endings/s  seconds")
        for b in (int(x) for x in args.batch_sizes.split(",")):
            evaluate_task(model, ByteTok(), warm, batch_size=b)
            t0 = time.perf_counter()
            evaluate_task(model, ByteTok(), path, batch_size=b)
            dt = time.perf_counter() - t0
            print(f"{b:5d}  {args.examples / dt:10.2f}  {4 * args.examples / dt:9.2f}  {dt:7.1f}")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
