"""Byte-level BPE tokenizer, written from scratch (numpy and regex only).

One idea per file:
    patterns.py   the regexes that cut text into chunks (GPT-2, GPT-4)
    trainer.py    learning merges with incremental pair counts and a heap
    tokenizer.py  BPETokenizer: encode / decode with special tokens and a chunk cache
    gpt2.py       reading OpenAI's GPT-2 files (encoder.json, vocab.bpe)
    io.py         save / load as versioned JSON, plus a readable .vocab view
    char.py       CharTokenizer: nanoGPT's one id per character
    hf.py         from_pretrained: a Hugging Face tokenizer.json folder, the `tokenizers` library's ids
    hf_bpe.py     its BPE model (named ids, ranked merges, byte fallback); hf_pipeline.py its
                  normalizers, pre-tokenizers and decoders; hf_fields.py reading its fields
    chat.py       its Jinja chat template, rendered in the sandbox as transformers renders it
    corpus.py     the token file: encoding a corpus into flat uint16/uint32 ids, reading it back
    documents.py  the documents of a corpus (.txt and .jsonl files, folders, globs), in batches
    shards.py     encoding a corpus into fixed-size shards on every core, resumably
    cli.py        `python -m tinygrad_llm tokenize train | encode`

    >>> from tinygrad_llm.tokenizer import BPETokenizer
    >>> tok = BPETokenizer.train(text, vocab_size=1024, pattern="gpt4", special_tokens=["<|endoftext|>"])
    >>> tok.decode(tok.encode("hello")) == "hello"
    True
"""
import json
from pathlib import Path

from .char import CharTokenizer
from .corpus import encode_file, read_token_file, write_token_file
from .errors import TokenizerError, TokenizerFileError
from .gpt2 import bytes_to_unicode
from .hf import HFTokenizer, from_pretrained
from .patterns import GPT2_PATTERN, GPT4_PATTERN
from .tokenizer import BPETokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "TokenizerError", "TokenizerFileError", "load_tokenizer",
           "encode_file", "read_token_file", "write_token_file", "bytes_to_unicode", "GPT2_PATTERN",
           "GPT4_PATTERN", "HFTokenizer", "from_pretrained"]


def load_tokenizer(path):
    """A saved tokenizer of either kind: a CharTokenizer file ({"type": "char"}) or a BPETokenizer;
    a folder is GPT-2's (encoder.json and vocab.bpe)."""
    if Path(path).is_dir():
        return BPETokenizer.from_gpt2(Path(path) / "encoder.json", Path(path) / "vocab.bpe")
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        d = None  # not a char file: BPETokenizer.load says what is wrong with it
    return CharTokenizer.load(path) if isinstance(d, dict) and d.get("type") == "char" else BPETokenizer.load(path)
