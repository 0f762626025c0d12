"""Train a byte-level BPE tokenizer on tiny Shakespeare and show what it learned.

    python examples/train_tokenizer.py                         # vocab 1024, GPT-4 pattern
    python examples/train_tokenizer.py --vocab-size 4096 --out shakespeare_tok.json

The text is found as `python -m tinygrad_llm train` finds it: --data, else $TINYGRAD_LLM_DATA
(the file, or a folder holding tinyshakespeare.txt), else the copy downloaded once into
~/.cache/tinygrad_llm/.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinygrad_llm.cli.train import find_text  # noqa: E402
from tinygrad_llm.tokenizer import BPETokenizer  # noqa: E402
from tinygrad_llm.tokenizer.io import render_token  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="text file to train on (default: tiny Shakespeare)")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--pattern", default="gpt4", help="gpt4, gpt2, none, or a regex")
    ap.add_argument("--special", nargs="*", default=["<|endoftext|>"],
                    help="special tokens (default <|endoftext|>; --special alone for none)")
    ap.add_argument("--out", help="save the tokenizer here (a .vocab file goes beside it)")
    ap.add_argument("--show", type=int, default=12, help="how many merges to print")
    args = ap.parse_args()

    path = find_text(args.data, log=lambda msg: print(msg, file=sys.stderr))
    if not path.is_file():
        sys.exit(f"no text file at {path}")
    text = path.read_text(encoding="utf-8")
    nbytes = len(text.encode("utf-8"))
    print(f"training on {path} ({nbytes:,} bytes), vocab {args.vocab_size}, pattern {args.pattern}")

    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, pattern=None if args.pattern == "none" else args.pattern,
                             special_tokens=args.special, verbose=True)
    seconds = time.perf_counter() - t0
    ids = tok.encode(text, allowed_special="none")
    assert tok.decode(ids) == text
    print(f"trained in {seconds:.2f} s: {nbytes:,} bytes -> {len(ids):,} tokens, "
          f"{nbytes / len(ids):.2f} bytes per token")

    merges = list(tok.merges.items())
    shown = merges[: args.show // 2] + merges[-(args.show - args.show // 2):] if len(merges) > args.show else merges
    print(f"first and last learned merges (of {len(merges)}):")
    for (a, b), idx in shown:
        print(f"  {idx:>6}  [{render_token(tok.vocab[a])}] + [{render_token(tok.vocab[b])}]"
              f" -> [{render_token(tok.vocab[idx])}]")
    sample = "To be, or not to be, that is the question."
    pieces = [render_token(tok.vocab[i]) for i in tok.encode(sample)]
    print(f"{sample!r} -> {len(pieces)} tokens: {'|'.join(pieces)}")
    if args.out:
        tok.save(args.out)
        print(f"saved {args.out} (and its .vocab view)")


if __name__ == "__main__":
    main()
