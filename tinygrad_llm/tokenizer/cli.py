"""`python -m tinygrad_llm tokenize train | encode`: train a tokenizer, encode a corpus.

    python -m tinygrad_llm tokenize train --input input.txt --vocab-size 4096 --out tok.json
    python -m tinygrad_llm tokenize encode --tokenizer tok.json --input input.txt --out data.bin
    python -m tinygrad_llm tokenize encode --gpt2 gpt2/ --input input.txt --out data.bin
"""
import sys
import time
from pathlib import Path

from .corpus import encode_file
from .errors import TokenizerError
from .tokenizer import BPETokenizer


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="train|encode")
    t = sub.add_parser("train", help="learn a BPE tokenizer from a text file")
    t.add_argument("--input", required=True, help="UTF-8 text file to learn from")
    t.add_argument("--vocab-size", type=int, required=True, help="256 bytes + merges + special tokens")
    t.add_argument("--out", required=True, help="tokenizer file to write (JSON; a .vocab file goes beside it)")
    t.add_argument("--pattern", default="gpt4",
                   help="pre-split pattern: gpt4, gpt2, none, or a regex (default gpt4)")
    t.add_argument("--special", nargs="*", default=["<|endoftext|>"],
                   help="special tokens, added after the merges (default <|endoftext|>)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    e = sub.add_parser("encode", help="encode a text file into a flat token file + JSON sidecar")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", help="tokenizer file written by `tokenize train`")
    src.add_argument("--gpt2", metavar="DIR", help="folder holding GPT-2's encoder.json and vocab.bpe")
    e.add_argument("--input", required=True, help="text file to encode")
    e.add_argument("--out", required=True, help="token file to write (sidecar: OUT.json)")
    e.add_argument("--no-special", action="store_true",
                   help="encode special-token text such as <|endoftext|> as plain text")
    e.add_argument("--quiet", action="store_true", help="no progress lines")


def main(args):
    try:
        return _train(args) if args.action == "train" else _encode(args)
    except (TokenizerError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _train(args):
    text = Path(args.input).read_text(encoding="utf-8", errors="surrogateescape")
    pattern = None if args.pattern == "none" else args.pattern
    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, pattern=pattern, special_tokens=args.special,
                             verbose=not args.quiet)
    seconds = time.perf_counter() - t0
    tok.save(args.out)
    n = len(tok.encode_ordinary(text))
    nbytes = len(text.encode("utf-8", "surrogateescape"))
    print(f"trained {tok!r} in {seconds:.2f} s; {nbytes / max(n, 1):.2f} bytes/token on the input; "
          f"wrote {args.out}")
    return 0


def _encode(args):
    if args.gpt2:
        folder = Path(args.gpt2)
        tok, name = BPETokenizer.from_gpt2(folder / "encoder.json", folder / "vocab.bpe"), "gpt2"
    else:
        tok, name = BPETokenizer.load(args.tokenizer), args.tokenizer
    meta = encode_file(tok, args.input, args.out, verbose=not args.quiet, tokenizer_name=name,
                       allowed_special="none" if args.no_special else "all")
    print(f"wrote {meta['num_tokens']:,} {meta['dtype']} tokens to {args.out} "
          f"({meta['source_bytes'] / max(meta['num_tokens'], 1):.2f} bytes/token)")
    return 0
