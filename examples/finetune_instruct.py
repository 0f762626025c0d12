"""Instruction-tune a pretrained GPT on Alpaca-format data, then answer held-out instructions.

Data: a JSON list of {"instruction", "input", "output"} records. Each becomes the standard Alpaca
prompt plus its response; the loss is taken on the response tokens only (the prompt's targets are
ignore_index), and batches are right-padded by a collate. After training, the last --test-count
records (never trained on) are answered greedily and written, with the reference outputs, to
--out (a JSON list).

    python examples/finetune_instruct.py --data my_instructions.json --init gpt2-dir
    python examples/finetune_instruct.py --demo book --init gpt2-dir     # the book's 1,100 records
    python examples/finetune_instruct.py --demo alpaca --init gpt2-dir   # Stanford Alpaca, 52K records

--demo downloads once to ~/.cache/tinygrad_llm; offline, pass --data. The public files:
    book    https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json
    alpaca  https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json
 --init
is a Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json + merges.txt) or one
of our runs (out/shakespeare). --lora-rank R trains LoRA adapters only, saved on their own to
<out>.adapters.safetensors.
"""
import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import tinygrad_llm as tl  # noqa: E402
from finetune_classifier import load_init  # noqa: E402
from tinygrad_llm import nn  # noqa: E402
from tinygrad_llm.finetune.adapters import save_adapters  # noqa: E402
from tinygrad_llm.finetune.instruct import encode_example, fit, generate_response, load_alpaca  # noqa: E402

DATASETS = {
    # "Build a Large Language Model (from Scratch)", chapter 7: 1,100 Alpaca-format records
    "book": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/"
            "instruction-data.json",
    # Stanford Alpaca (Taori et al. 2023): 52,002 records
    "alpaca": "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
}
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinygrad_llm"


def download(name):
    url = DATASETS[name]
    cached = CACHE_DIR / f"instruct_{name}.json"
    if cached.exists():
        return cached
    print(f"downloading {name} instruction data from {url} ...", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            raw = r.read()
    except OSError as e:
        raise SystemExit(f"could not download {url} ({e}); fetch it yourself and pass --data FILE.json") from None
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, cached)
    return cached


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="Alpaca-format JSON file")
    ap.add_argument("--demo", choices=sorted(DATASETS), help="download a public dataset instead of --data")
    ap.add_argument("--init", default="out/shakespeare", help="Hugging Face GPT-2 directory or our run/checkpoint")
    ap.add_argument("--tokenizer", help="tokenizer.json of our run, or a directory with GPT-2's files")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-len", type=int, default=256, help="tokens per example (cut to the block size)")
    ap.add_argument("--val-frac", type=float, default=0.05)
    ap.add_argument("--test-count", type=int, default=10, help="held-out records to answer after training")
    ap.add_argument("--max-examples", type=int, help="use at most this many records")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", default="out/instruct/responses.json", help="where the responses go (JSON)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tl.manual_seed(args.seed)
    if not args.data and not args.demo:
        ap.error("pass --data FILE.json or --demo book|alpaca")
    records = load_alpaca(args.data or download(args.demo))
    if args.max_examples:
        records = records[:args.max_examples]
    n_test = min(args.test_count, len(records) - 1)
    test, rest = records[len(records) - n_test:], records[:len(records) - n_test]
    order = np.random.default_rng(args.seed).permutation(len(rest))
    n_val = int(round(args.val_frac * len(rest)))
    val = [rest[i] for i in order[:n_val]]
    train = [rest[i] for i in order[n_val:]]

    model, tok = load_init(args.init, args.tokenizer)
    max_len = min(args.max_len, model.config.block_size) - 1
    encode = lambda rs: [encode_example(r, tok, max_len) for r in rs]  # noqa: E731
    if args.lora_rank:
        nn.apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, targets=("c_attn", "c_proj", "c_fc"))
    print(f"{len(train)} train / {len(val)} val / {len(test)} held-out records; "
          f"{model.num_parameters(trainable_only=True):,} of {model.num_parameters():,} parameters train")
    pad_id = getattr(tok, "eot_id", None) or 0
    history = fit(model, encode(train), encode(val), epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, pad_id=pad_id,
                  max_steps=args.max_steps)
    model.eval()
    responses = [dict(r, model_response=generate_response(model, tok, r, args.max_new_tokens)) for r in test]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(responses, indent=2, ensure_ascii=False))
    if args.lora_rank:
        save_adapters(model, out.with_suffix(".adapters.safetensors"))
    for r in responses[:3]:
        print(f"### {r['instruction']}\n> {r['model_response']!r}\n  (reference: {r['output']!r})")
    print(f"wrote {len(responses)} responses to {out}; final val loss "
          f"{history[-1]['val_loss'] if history[-1]['val_loss'] is not None else float('nan'):.4f}; "
          f"wall time {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
