"""`python -m tinygrad_llm eval`: a model measured on a benchmark file (tinygrad_llm/evaluate.py).

    python -m tinygrad_llm eval --model out/shakespeare --task hellaswag_val.jsonl --limit 500
    python -m tinygrad_llm eval --model gpt2/ --task gsm8k_test.jsonl --out results.json
    python -m tinygrad_llm eval --model out/shakespeare --task input.txt           # bits per byte

--model is a training run's folder (ckpt.safetensors + tokenizer.json), a checkpoint file, or a
Hugging Face folder (config.json + safetensors, with its tokenizer files).
"""
import json
import sys
from pathlib import Path

from .common import UsageError, check_flags, user_input


def add_arguments(parser):
    from ..evaluate import TASK_TYPES
    parser.add_argument("--model", required=True, help="a run folder, a checkpoint file or a Hugging Face folder")
    parser.add_argument("--task", required=True, help="the task file (JSON/JSONL), or a text file / shard folder")
    parser.add_argument("--task-type", choices=TASK_TYPES, default=None,
                        help="the layout of the task file (default: read from its first record; "
                             "anything but .json/.jsonl is bits per byte)")
    parser.add_argument("--tokenizer-file", help="tokenizer (default: the one beside the model)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per answer (exact match)")
    parser.add_argument("--out", help="write the results here as JSON (default: print only)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")


LIMITS = {"limit": "[1, inf)", "batch_size": "[1, inf)", "max_new_tokens": "[1, inf)"}


def load_model_and_tokenizer(model_path, tokenizer_file=None, device="cpu"):
    """(model, tokenizer) from a run folder, a checkpoint file or a Hugging Face folder."""
    from ..tokenizer import load_tokenizer
    path = Path(model_path)
    if not path.exists():
        raise UsageError(f"--model: no file or folder at {path}")
    if path.is_dir() and (path / "config.json").is_file() and not (path / "ckpt.safetensors").exists():
        from ..models import from_pretrained
        model = from_pretrained(path)
        if tokenizer_file:
            return model, load_tokenizer(tokenizer_file)
        if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            return model, load_tokenizer(path)
        try:  # tokenizer.json, where the package reads it
            from ..tokenizer import from_pretrained as load_hf_tokenizer
        except ImportError:
            raise UsageError(f"--model {path}: no tokenizer this package can read there (encoder.json + "
                             "vocab.bpe); pass --tokenizer-file") from None
        return model, load_hf_tokenizer(path)
    from ..train import load_model
    ckpt = path / "ckpt.safetensors" if path.is_dir() else path
    tok_path = Path(tokenizer_file) if tokenizer_file else (path if path.is_dir() else path.parent) / "tokenizer.json"
    if not ckpt.is_file():
        raise UsageError(f"--model: {path} holds neither ckpt.safetensors nor config.json")
    if not tok_path.exists():
        raise UsageError(f"no tokenizer at {tok_path}; pass --tokenizer-file")
    model, _ = load_model(ckpt, device=device)
    return model, load_tokenizer(tok_path)


def main(args):
    from .. import backend
    from ..evaluate import evaluate_task, progress_line
    check_flags(args, LIMITS)
    if args.device == "cuda" and not backend.cuda_available():
        raise UsageError("--device cuda: no GPU found (CuPy missing or no device); use --device cpu")
    if not Path(args.task).exists():
        raise UsageError(f"--task: no file or folder at {args.task}")
    with user_input("--model"):
        model, tok = load_model_and_tokenizer(args.model, args.tokenizer_file, args.device)
    if args.device != "cpu":
        model.to(args.device)
    with user_input("--task"):
        results = evaluate_task(model, tok, args.task, args.task_type, args.limit, args.batch_size,
                                args.max_new_tokens, progress=progress_line(Path(args.task).name))
    results["model"] = str(args.model)
    shown = {k: v for k, v in results.items() if k != "samples"}
    print(json.dumps(shown, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..__main__ import main as run_command
    sys.exit(run_command(["eval", *sys.argv[1:]]))
