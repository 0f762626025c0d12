"""`python -m tinygrad_llm sample` and examples/sample.py: generate text from a checkpoint.

    python -m tinygrad_llm sample --out-dir out/shakespeare --prompt "ROMEO:" --max-new-tokens 200

Reads <out-dir>/ckpt.safetensors and <out-dir>/tokenizer.json (or --checkpoint / --tokenizer-file).
"""
import sys
from pathlib import Path

import numpy as np


def add_arguments(parser):
    parser.add_argument("--out-dir", default="out/shakespeare", help="the training run's directory")
    parser.add_argument("--checkpoint", help="checkpoint file (default <out-dir>/ckpt.safetensors)")
    parser.add_argument("--tokenizer-file", help="tokenizer (default <out-dir>/tokenizer.json)")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def generate_text(model, tok, prompt, max_new_tokens, temperature=0.8, top_k=None, top_p=None,
                  seed=None, num_samples=1):
    """Decoded continuations of prompt (the prompt included), one string per sample."""
    ids = tok.encode(prompt) if hasattr(tok, "stoi") else tok.encode(prompt, allowed_special="all")
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    idx = np.tile(np.asarray(ids, dtype=np.int64)[None], (num_samples, 1))
    eos = getattr(tok, "eot_id", None)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_id=eos, seed=seed).numpy()
    texts = [tok.decode(row.tolist()) for row in out]
    return texts[0] if num_samples == 1 else texts


def main(args):
    from ..train import load_model
    from .train import load_tokenizer
    out_dir = Path(args.out_dir)
    ckpt = Path(args.checkpoint) if args.checkpoint else out_dir / "ckpt.safetensors"
    tok_path = Path(args.tokenizer_file) if args.tokenizer_file else out_dir / "tokenizer.json"
    for p, what in ((ckpt, "checkpoint"), (tok_path, "tokenizer")):
        if not p.exists():
            raise SystemExit(f"no {what} at {p}; train first (python examples/train_shakespeare.py) "
                             f"or pass --{'checkpoint' if what == 'checkpoint' else 'tokenizer-file'}")
    model, ck = load_model(ckpt, device=args.device)
    tok = load_tokenizer(tok_path)
    texts = generate_text(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                          args.top_p, args.seed, args.num_samples)
    for t in ([texts] if isinstance(texts, str) else texts):
        print(t)
        print("-" * 40)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import argparse
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
