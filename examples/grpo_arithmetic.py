"""GRPO with a verifiable reward, offline on the CPU: a tiny GPT learns 2-3 digit addition.

1. SFT: "123+045=" -> "8610\\n" on generated problems: operands zero-padded to three digits and the
   sum written as four digits least significant first (the order in which the carries are worked
   out), so every digit sits at a fixed position; a model this small learns that far faster., the loss on the answer only (finetune/instruct.py's
   collate), stopped early on purpose so the model is right only part of the time.
2. GRPO (finetune/grpo.py): each step samples --group completions per prompt with the KV cache,
   rewards an exact match of the sum with 1 (else 0), normalises the rewards within each group and
   takes a clipped policy-gradient step with a KL penalty to the SFT model.

Held-out problems (never trained on) are answered greedily before and after GRPO.

    python examples/grpo_arithmetic.py                      # about two minutes on two cores
    python examples/grpo_arithmetic.py --sft-steps 600 --grpo-steps 60 --out grpo.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.finetune import grpo, instruct
from tinygrad_llm.models import GPT, GPTConfig


class DigitTokenizer:
    """One id per character of '0123456789+=\\n'; '\\n' ends an answer."""
    chars = "0123456789+=\n"

    def __init__(self):
        self.ids = {c: i for i, c in enumerate(self.chars)}
        self.eot_id = self.ids["\n"]
        self.vocab_size = len(self.chars)

    def encode(self, text):
        return [self.ids[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def problems(n, rng, exclude=frozenset()):
    """n distinct {"prompt": "aaa+bbb=", "answer": the four digits of a + b reversed} records, a and b of 2 or 3 digits."""
    out, seen = [], set(exclude)
    while len(out) < n:
        a, b = (int(rng.integers(10, 1000)) for _ in range(2))
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append({"prompt": f"{a:03d}+{b:03d}=", "answer": f"{a + b:04d}"[::-1], "pair": (a, b)})
    return out


def accuracy(model, tok, records, max_new_tokens=6):
    """Greedy exact-match accuracy (prompts of equal length run as one batch)."""
    by_len = {}
    for r in records:
        by_len.setdefault(len(r["prompt"]), []).append(r)
    right = 0
    for group in by_len.values():
        ids = np.array([tok.encode(r["prompt"]) for r in group])
        out = model.generate(ids, max_new_tokens, temperature=0, eos_id=tok.eot_id).numpy()[:, ids.shape[1]:]
        for r, row in zip(group, out):
            text = tok.decode([int(t) for t in row]).split("\n")[0]
            right += text == r["answer"]
    return right / len(records)


def reward(record, completion):
    return float(completion.strip() == record["answer"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient")
    p.add_argument("--grpo-lr", type=float, default=3e-4)
    p.add_argument("--held-out", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures (accuracies, reward curve, seconds) as JSON")
    args = p.parse_args()

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    tl.manual_seed(args.seed)
    tok = DigitTokenizer()
    held_out = problems(args.held_out, rng)
    train = problems(6000, rng, exclude={r["pair"] for r in held_out})
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=64, dropout=0.0))

    examples = [(tok.encode(r["prompt"] + r["answer"] + "\n"), len(r["prompt"])) for r in train]
    t0 = time.perf_counter()
    instruct.fit(model, examples, [], epochs=max(1, args.sft_steps * 64 // len(examples) + 1), batch_size=64,
                 lr=3e-3, weight_decay=0.0, seed=args.seed, pad_id=tok.eot_id, max_steps=args.sft_steps, log=None)
    sft_s = time.perf_counter() - t0
    before = accuracy(model, tok, held_out)
    print(f"SFT: {args.sft_steps} steps in {sft_s:.0f}s; held-out exact match {before:.3f}")

    t0 = time.perf_counter()
    history = grpo.fit(model, tok, train[:2000], reward, group_size=args.group, prompts_per_step=args.prompts,
                       steps=args.grpo_steps, max_new_tokens=6, temperature=1.0, lr=args.grpo_lr, beta=args.beta,
                       seed=args.seed, log=lambda m: None)
    grpo_s = time.perf_counter() - t0
    after = accuracy(model, tok, held_out)
    curve = [round(h["reward"], 3) for h in history]
    k = max(1, len(curve) // 8)
    print("GRPO reward curve (mean reward of the sampled completions, averaged over "
          f"{k} steps): {[round(float(np.mean(curve[i:i + k])), 3) for i in range(0, len(curve), k)]}")
    print(f"GRPO: {args.grpo_steps} steps in {grpo_s:.0f}s; held-out exact match {before:.3f} -> {after:.3f}")
    total = time.perf_counter() - t_start
    print(f"wall time {total:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps({"held_out_before": before, "held_out_after": after,
                                              "reward_curve": curve, "sft_seconds": sft_s,
                                              "grpo_seconds": grpo_s, "wall_seconds": total}, indent=2))


if __name__ == "__main__":
    main()
