"""`python -m tinygrad_llm tokenize train | encode`: train a tokenizer, encode a corpus.

    python -m tinygrad_llm tokenize train --input input.txt --vocab-size 4096 --out tok.json
    python -m tinygrad_llm tokenize encode --tokenizer tok.json --input input.txt --out data.bin
    python -m tinygrad_llm tokenize encode --gpt2 gpt2/ --input input.txt --out data.bin
    python -m tinygrad_llm tokenize encode --gpt2 gpt2/ --input 'corpus/*.jsonl' --out shards/

An --out ending in .bin is one token file from one text file; any other --out is a folder of
shards from a corpus of documents (files, folders, globs of .txt and .jsonl; see shards.py).
"""
import sys
import time
from pathlib import Path

from .corpus import encode_file
from .documents import DocumentError
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
    e = sub.add_parser("encode", help="encode a text file into a token file, or a corpus into shards")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokenizer", help="tokenizer file written by `tokenize train`")
    src.add_argument("--gpt2", metavar="DIR", help="folder holding GPT-2's encoder.json and vocab.bpe")
    e.add_argument("--input", required=True, nargs="+",
                   help="text file; for shards also folders and globs of .txt and .jsonl files")
    e.add_argument("--out", required=True,
                   help="token file NAME.bin (sidecar: NAME.bin.json), or a folder for shards")
    e.add_argument("--text-field", default="text", help="shards: the field of a .jsonl line holding the text")
    e.add_argument("--workers", type=int, default=None,
                   help="shards: encoding processes (default: the cores this process may use)")
    e.add_argument("--shard-tokens", type=int, default=100_000_000, help="shards: tokens per shard")
    e.add_argument("--val-tokens", type=int, default=None,
                   help="shards: tokens in the first (validation) shard; default --shard-tokens")
    e.add_argument("--no-special", action="store_true",
                   help="encode special-token text such as <|endoftext|> as plain text")
    e.add_argument("--quiet", action="store_true", help="no progress lines")


def main(args):
    try:
        return _train(args) if args.action == "train" else _encode(args)
    except (TokenizerError, FileNotFoundError, DocumentError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _train(args):
    text = Path(args.input).read_text(encoding="utf-8", errors="surrogateescape")
    pattern = None if args.pattern == "none" else args.pattern
    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, pattern=pattern, special_tokens=args.special,
                             verbose=not args.quiet, strict=True)
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
    allowed = "none" if args.no_special else "all"
    if not args.out.endswith(".bin"):
        return _encode_shards(args, tok, name, allowed)
    if len(args.input) != 1:
        raise FileNotFoundError(f"--out {args.out} is one token file, from one --input file; "
                                f"got {len(args.input)} inputs (write shards to a folder instead)")
    meta = encode_file(tok, args.input[0], args.out, verbose=not args.quiet, tokenizer_name=name,
                       allowed_special="none" if args.no_special else "all")
    print(f"wrote {meta['num_tokens']:,} {meta['dtype']} tokens to {args.out} "
          f"({meta['source_bytes'] / max(meta['num_tokens'], 1):.2f} bytes/token)")
    return 0


def _encode_shards(args, tok, name, allowed):
    from .shards import encode_corpus
    try:
        summary = encode_corpus(tok, args.input, args.out, workers=args.workers, tokenizer_name=name,
                                text_field=args.text_field, allowed_special=allowed,
                                shard_tokens=args.shard_tokens, val_tokens=args.val_tokens,
                                verbose=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: the finished shards in {args.out} are kept; run the same command again "
              "to go on", file=sys.stderr)
        return 130
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{summary['shards']} shards, {summary['tokens']:,} tokens in {args.out} "
          f"({summary['new_tokens']:,} new from {summary['documents']:,} documents in "
          f"{summary['seconds']:.1f} s, {summary['mb_per_s']:.2f} MB/s)")
    return 0
