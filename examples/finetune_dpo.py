"""DPO on a preference set built offline: grammatical Shakespeare lines over the same lines with
their words shuffled.

Each pair's prompt is a line of the play, the chosen completion the line that follows it, the
rejected one that same line with its words in random order (same characters, same length: only
the order differs). A small character-level GPT is first trained briefly on the text (or --init
names one of our runs); DPO then tunes it against itself at the start as the reference. Held-out
pairs are scored before and after:

    likelihood accuracy   share of pairs where log p(chosen) > log p(rejected): the model's own preference
    reward accuracy       share where the implicit reward beta (log pi - log pi_ref) ranks chosen first
    reward margin         the mean implicit reward of chosen minus rejected (0 at the start: pi = pi_ref)

    python examples/finetune_dpo.py --data tinyshakespeare.txt        # about two minutes on two cores
    python examples/finetune_dpo.py --loss-type ipo --beta 0.5

The text comes from --data, $TINYGRAD_LLM_DATA or the copy `python -m tinygrad_llm train` cached.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm import optim
from tinygrad_llm.cli.train import find_text
from tinygrad_llm.finetune import dpo
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.ops.preference import LOSS_TYPES
from tinygrad_llm.tokenizer import CharTokenizer


def preference_pairs(text, n, rng):
    """n {"prompt", "chosen", "rejected"} records from consecutive lines of at least 5 words."""
    lines = [line.strip() for line in text.splitlines()]
    records = []
    for i in rng.permutation(len(lines) - 1):
        prompt, line = lines[i], lines[i + 1]
        words = line.split()
        if len(words) < 5 or not prompt:
            continue
        shuffled = list(words)
        while shuffled == words:
            rng.shuffle(shuffled)
        records.append({"prompt": prompt + "\n", "chosen": line, "rejected": " ".join(shuffled)})
        if len(records) == n:
            break
    return records


def pretrain(model, ids, steps, rng, batch_size=32, lr=3e-3):
    """A short language-model warm-up on random windows of the text."""
    T = model.config.block_size
    opt = optim.AdamW(list(model.parameters()), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - T - 1, batch_size)
        x = np.stack([ids[s:s + T] for s in starts])
        y = np.stack([ids[s + 1:s + T + 1] for s in starts])
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def likelihood_accuracy(model, pairs):
    c, r = dpo.reference_logprobs(model, pairs)
    return float((c > r).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the text (default: $TINYGRAD_LLM_DATA or the cached tiny Shakespeare)")
    p.add_argument("--init", help="one of our runs to start from (out/shakespeare); default: a char GPT trained here")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--pairs", type=int, default=400, help="training pairs (another 100 are held out)")
    p.add_argument("--steps", type=int, default=60, help="DPO steps")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--loss-type", choices=LOSS_TYPES, default="sigmoid")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args()

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    tl.manual_seed(args.seed)
    text = Path(find_text(args.data)).read_text(encoding="utf-8")
    if args.init:
        from tinygrad_llm.tokenizer import load_tokenizer
        from tinygrad_llm.train import load_model
        model, _ = load_model(Path(args.init) / "ckpt.safetensors")
        tok = load_tokenizer(Path(args.init) / "tokenizer.json")
    else:
        tok = CharTokenizer.from_text(text)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, n_embd=64))
        loss = pretrain(model, np.array(tok.encode(text), dtype=np.int64), args.pretrain_steps, rng)
        print(f"pretrained {args.pretrain_steps} steps: loss {loss:.3f}")
    max_len = model.config.block_size - 1
    records = dpo.check_records(preference_pairs(text, args.pairs + 100, rng))
    pairs = [dpo.encode_pair(r, tok, max_len, i) for i, r in enumerate(records)]
    train, held = pairs[:args.pairs], pairs[args.pairs:]

    ref_held = dpo.reference_logprobs(model, held)
    before = dpo.evaluate(model, held, ref_held, args.beta, args.loss_type) | {
        "likelihood_accuracy": likelihood_accuracy(model, held)}
    t0 = time.perf_counter()
    dpo.fit(model, train, beta=args.beta, loss_type=args.loss_type, steps=args.steps, batch_size=8, lr=args.lr,
            seed=args.seed, log_every=max(1, args.steps // 6))
    dpo_s = time.perf_counter() - t0
    after = dpo.evaluate(model, held, ref_held, args.beta, args.loss_type) | {
        "likelihood_accuracy": likelihood_accuracy(model, held)}
    for name, r in (("before", before), ("after", after)):
        print(f"held-out {name} DPO: likelihood accuracy {r['likelihood_accuracy']:.3f}, reward accuracy "
              f"{r['accuracy']:.3f}, reward margin {r['margin']:.4f}")
    total = time.perf_counter() - t_start
    print(f"DPO {args.steps} steps in {dpo_s:.0f}s; wall time {total:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps({"before": before, "after": after, "dpo_seconds": dpo_s,
                                              "wall_seconds": total, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
