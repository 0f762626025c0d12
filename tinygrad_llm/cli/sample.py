"""`python -m tinygrad_llm sample` and examples/sample.py: generate text from a checkpoint.

    python -m tinygrad_llm sample --out-dir out/shakespeare --prompt "ROMEO:" --max-new-tokens 200

Reads <out-dir>/ckpt.safetensors and <out-dir>/tokenizer.json (or --checkpoint / --tokenizer-file).
"""
import sys
from pathlib import Path


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


def main(args):
    from ..models import generate_text
    from ..tokenizer import load_tokenizer
    from ..train import load_model
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
