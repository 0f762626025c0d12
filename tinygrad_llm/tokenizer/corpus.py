"""Token files: a corpus encoded once into a flat array of ids, plus a JSON sidecar.

    data.bin       # uint16 ids back to back (uint32 when the vocabulary has more than 65,535 ids)
    data.bin.json  # {"dtype": "uint16", "vocab_size": 50257, "num_tokens": 338025,
                   #  "source_bytes": 1115394, "tokenizer": "gpt2"}

source_bytes is the size of the text encoded: loss in bits per token * num_tokens / source_bytes
gives bits per byte, which compares models across tokenizers.  The file is a memmap away:

    >>> ids, meta = read_token_file("data.bin")    # ids: np.memmap of meta["dtype"]

encode_file reads the input in blocks, so a corpus far larger than memory encodes in constant
memory and gives the same ids as encoding the whole text at once: each block's last two chunks
are carried into the next block, because only a chunk that reaches the block's end could be
cut differently than the whole text would cut it (true of the GPT-2 and GPT-4 patterns, and
checked by the tests with tiny blocks; a pattern of None makes the whole file one chunk).
"""
import codecs
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..files import JSONFileError, atomic_write, atomic_write_text, read_json
from .errors import TokenizerFileError

SIDECAR_KEYS = ("dtype", "vocab_size", "num_tokens", "source_bytes", "tokenizer")


def token_dtype(vocab_size):
    """np.uint16 while every id fits in 16 bits, else np.uint32."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


def sidecar_path(path):
    return Path(str(path) + ".json")


def encode_file(tokenizer, input_path, out_path, verbose=True, tokenizer_name=None,
                allowed_special="all", block_bytes=1 << 22):
    """Encode a text file into out_path (flat ids) and out_path.json; returns the sidecar dict.

    The file is read as UTF-8 with surrogateescape, so invalid bytes are kept, byte for byte.
    Special tokens in the text (e.g. <|endoftext|> between documents) become their ids unless
    allowed_special says otherwise.  Both files are written under temporary names and renamed.
    """
    input_path, out_path = Path(input_path), Path(out_path)
    dtype = token_dtype(tokenizer.vocab_size)
    source_bytes = input_path.stat().st_size
    num_tokens, carry, done_bytes = 0, "", 0
    t0 = last = time.perf_counter()
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    with open(input_path, "rb") as fin, atomic_write(out_path) as fout:
        while True:
            raw = fin.read(block_bytes)
            done_bytes += len(raw)
            text = carry + decoder.decode(raw, final=not raw)
            if not raw:
                ids, carry = tokenizer.encode(text, allowed_special) if text else [], ""
            else:
                ids, carry = _encode_block(tokenizer, text, allowed_special)
            if ids:
                np.asarray(ids, dtype=dtype).tofile(fout)
                num_tokens += len(ids)
            now = time.perf_counter()
            if verbose and (now - last > 1.0 or not raw):
                last = now
                mb = done_bytes / 1e6
                print(f"encoded {mb:,.1f}/{source_bytes / 1e6:,.1f} MB "
                      f"({100 * done_bytes / max(source_bytes, 1):.0f}%), {num_tokens:,} tokens, "
                      f"{mb / max(now - t0, 1e-9):.2f} MB/s", file=sys.stderr, flush=True)
            if not raw:
                break
    name = str(tokenizer_name) if tokenizer_name is not None else "unnamed"
    return _write_sidecar(out_path, dtype, tokenizer.vocab_size, num_tokens, source_bytes, name)


def write_token_file(ids, path, vocab_size, source_bytes, tokenizer_name):
    """ids (already encoded) -> path and its .json sidecar in encode_file's format, atomically."""
    dtype = token_dtype(vocab_size)
    with atomic_write(path) as f:
        np.asarray(ids, dtype=dtype).tofile(f)
    return _write_sidecar(path, dtype, vocab_size, len(ids), source_bytes, tokenizer_name)


def _write_sidecar(path, dtype, vocab_size, num_tokens, source_bytes, tokenizer_name):
    """The token file's .json sidecar (SIDECAR_KEYS), written after the ids; read_token_file
    refuses a token file whose sidecar is missing or disagrees with its size."""
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": int(vocab_size), "num_tokens": int(num_tokens),
            "source_bytes": int(source_bytes), "tokenizer": tokenizer_name}
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
    return meta


def _encode_block(tokenizer, text, allowed_special):
    """Encode all of text but its tail; return (ids, tail), where tail starts the next block.

    Special tokens are hard boundaries, so everything up to the last one is final.  In the
    piece after it, the regex chunks up to the second-to-last are final too: only a chunk that
    reaches the block's end can be cut differently once more text follows.
    """
    if tokenizer.pattern is None:  # the text is one chunk: nothing is final before the end
        return [], text
    special = tokenizer._allowed(allowed_special, text)
    ids = []
    piece_start = 0
    if special:
        splitter = tokenizer._compile_specials(special)
        for m in splitter.finditer(text):
            ids.extend(tokenizer.encode_ordinary(text[piece_start:m.start()]))
            ids.append(special[m.group()])
            piece_start = m.end()
    piece = text[piece_start:]
    # A special token may be cut in half at the end ("...<|endof").  If it completes, the text
    # before it ends there, and ends differently than if more text followed; so treat the text
    # as ending where a possibly cut special starts, and keep back the last two chunks of that.
    head_end = len(piece)
    longest = max((len(t) for t in special), default=1)
    for p in range(max(0, len(piece) - longest + 1), len(piece)):
        if any(t.startswith(piece[p:]) for t in special):
            head_end = p
            break
    head = piece[:head_end]
    chunks = tokenizer._regex.findall(head)
    lengths = [len(c) for c in chunks]
    if sum(lengths) == len(head):  # the chunks tile the head: starts are running sums
        starts, pos = [], 0
        for n in lengths:
            starts.append(pos)
            pos += n
    else:  # a custom pattern that skips characters: ask the regex where each chunk starts
        starts = [m.start() for m in tokenizer._regex.finditer(head)]
    k = len(chunks) - 2  # chunks[:k] are final
    if k <= 0:
        return ids, piece
    ids.extend(tokenizer._encode_chunks(chunks[:k]))
    return ids, piece[starts[k]:]


MAX_SIDECAR_BYTES = 1 << 20  # a sidecar is a few hundred bytes; a shard's settings list its inputs


def _whole(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def read_token_file(path):
    """(np.memmap of ids, sidecar dict) for a file written by encode_file; checks they agree.

    Every sidecar field is checked before the ids are touched (a TokenizerFileError naming the
    sidecar and the field): dtype uint16/uint32 wide enough for vocab_size, whole-number counts,
    num_tokens times the dtype's size equal to the file's size."""
    path = Path(path)
    side = sidecar_path(path)
    try:
        meta = read_json(side, MAX_SIDECAR_BYTES)
    except FileNotFoundError:
        raise TokenizerFileError(f"{path} has no sidecar {side.name}; was it written by encode_file?") from None
    except JSONFileError as e:
        raise TokenizerFileError(f"{e}; truncated or corrupt") from None
    missing = [k for k in SIDECAR_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise TokenizerFileError(f"{side} lacks the keys {missing}")
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in ("uint16", "uint32"):
        raise TokenizerFileError(f"{side}: dtype {meta['dtype']!r:.40} is not uint16 or uint32")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for key in ("num_tokens", "source_bytes"):
        if not _whole(meta[key]):
            raise TokenizerFileError(f"{side}: {key} must be a whole number >= 0, got {meta[key]!r:.40}")
    if not _whole(meta["vocab_size"], 1) or meta["vocab_size"] > 1 << (8 * itemsize):
        raise TokenizerFileError(f"{side}: vocab_size must be a whole number in [1, {1 << (8 * itemsize):,}] "
                                 f"for {meta['dtype']} ids, got {meta['vocab_size']!r:.40}")
    if not isinstance(meta["tokenizer"], str):
        raise TokenizerFileError(f"{side}: tokenizer must be a name (a string), got {meta['tokenizer']!r:.40}")
    size = path.stat().st_size
    if size != meta["num_tokens"] * itemsize:
        raise TokenizerFileError(f"{path} has {size} bytes but {side.name} promises {meta['num_tokens']} "
                                 f"{meta['dtype']} tokens = {meta['num_tokens'] * itemsize} bytes "
                                 "(truncated file?)")
    if size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=meta["dtype"]), meta
    return np.memmap(path, dtype=meta["dtype"], mode="r"), meta
