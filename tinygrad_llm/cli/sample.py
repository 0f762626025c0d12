"""`python -m tinygrad_llm sample` and examples/sample.py: generate text from a checkpoint.

    python -m tinygrad_llm sample --out-dir out/shakespeare --prompt "ROMEO:" --max-new-tokens 200

Reads <out-dir>/ckpt.safetensors and <out-dir>/tokenizer.json (or --checkpoint / --tokenizer-file).
"""
import sys
from pathlib import Path

from .common import UsageError, check_flags, file_digest, user_input


def add_arguments(parser):
    parser.add_argument("--out-dir", default="out/shakespeare", help="the training run's directory")
    parser.add_argument("--checkpoint", help="checkpoint file (default <out-dir>/ckpt.safetensors)")
    parser.add_argument("--tokenizer-file", help="tokenizer (default <out-dir>/tokenizer.json)")
    parser.add_argument("--prompt", default="\n", help="text the samples continue")
    parser.add_argument("--max-new-tokens", type=int, default=300, help="tokens generated per sample")
    parser.add_argument("--num-samples", type=int, default=1, help="samples drawn from the prompt")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k likeliest tokens (default: all)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="keep the smallest set of tokens whose probability reaches p (default: all)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")
    parser.add_argument("--block-size", type=int, default=None,
                        help="context past the trained one (RoPE, ALiBi, NoPE checkpoints)")
    parser.add_argument("--rope-scaling", default=None,
                        help="RoPE scaling at inference: linear:4, ntk:4 (dynamic), yarn:4")


# numeric flags and the values they accept
LIMITS = {"block_size": "[1, inf)", "max_new_tokens": "[0, inf)", "num_samples": "[1, inf)", "temperature": "[0, inf)",
          "top_k": "[1, inf)", "top_p": "(0, 1]", "seed": "[0, inf)"}


def main(args):
    from .. import backend
    from ..models import generate_text
    from ..tokenizer import load_tokenizer
    from ..train import load_model
    check_flags(args, LIMITS)
    if args.device == "cuda" and not backend.cuda_available():
        raise UsageError("--device cuda: no GPU found (CuPy missing or no device); use --device cpu")
    out_dir = Path(args.out_dir)
    ckpt = Path(args.checkpoint) if args.checkpoint else out_dir / "ckpt.safetensors"
    tok_path = Path(args.tokenizer_file) if args.tokenizer_file else out_dir / "tokenizer.json"
    for p, flag in ((ckpt, "--checkpoint"), (tok_path, "--tokenizer-file")):
        if not (p.is_file() or (flag == "--tokenizer-file" and p.is_dir())):  # GPT-2's tokenizer is a folder
            raise UsageError(f"no {flag[2:]} file at {p}; train first (python -m tinygrad_llm train) "
                             f"or pass {flag}")
    with user_input():
        try:
            model, ck = load_model(ckpt, device=args.device, block_size=args.block_size,
                                   rope_scaling=args.rope_scaling)
        except ValueError as e:  # a context or scaling this checkpoint cannot take
            raise UsageError(str(e)) from None
        tok = load_tokenizer(tok_path)
    trained_with = (ck.get("extra") or {}).get("tokenizer_sha256")
    if tok.vocab_size > model.config.vocab_size or (trained_with and tok_path.is_file()
                                                    and trained_with != file_digest(tok_path)):
        raise UsageError(f"{tok_path} is not the tokenizer {ckpt} was trained with ({tok.vocab_size} tokens, "
                         f"the model {model.config.vocab_size}; "
                         f"{'its digest differs from the one the checkpoint recorded' if trained_with else ''})"
                         .replace("; )", ")"))
    with user_input("--prompt"):
        texts = generate_text(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                              args.top_p, args.seed, args.num_samples)
    for t in ([texts] if isinstance(texts, str) else texts):
        print(t)
        print("-" * 40)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..__main__ import main as run_command
    sys.exit(run_command(["sample", *sys.argv[1:]]))
