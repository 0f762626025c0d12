"""Loading OpenAI's GPT-2 tokenizer files (encoder.json + vocab.bpe) into a BPETokenizer.

GPT-2 stores tokens as printable strings: each byte is mapped to a visible unicode character
(bytes_to_unicode), so b" the" is stored as "Ġthe" (the space, byte 32, becomes 'Ġ' = U+0120).

    encoder.json  # str -> int: {"!": 0, ..., "Ġthe": 262, ..., "<|endoftext|>": 50256}
    vocab.bpe     # "#version: 0.2" then one merge per line, in rank order: "Ġ t" makes "Ġt"

Its ids follow the same rule as ours, once the byte ids are put in GPT-2's order: ids 0..255 are
the single bytes (printable ones first: id 0 is "!"), merge i makes id 256 + i, and
<|endoftext|> comes last.  So a GPT-2 tokenizer is a BPETokenizer with byte_order set, and
encodes token for token as OpenAI's encoder.py does:

    >>> tok = BPETokenizer.from_gpt2("gpt2/encoder.json", "gpt2/vocab.bpe")
    >>> tok.encode("Hello world")
    [15496, 995]
"""
import json
from pathlib import Path

from .errors import TokenizerFileError
from .patterns import GPT2_PATTERN


def bytes_to_unicode():
    """byte -> printable character, as in GPT-2's encoder.py: int -> str.

    The 188 bytes that are already printable, non-space characters map to themselves; the
    other 68 (controls, space, ...) map to 256, 257, ... in byte order: 32 (space) -> 'Ġ'.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_gpt2(encoder_json, vocab_bpe):
    """Read GPT-2's two files into (byte_order, merges, special_tokens), checking they agree."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))  # str -> int
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"{encoder_json} is not valid JSON (truncated or corrupt?): {e}") from None
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    if not lines or not lines[0].startswith("#version"):
        raise TokenizerFileError(f"{vocab_bpe} does not start with a '#version' line: is it GPT-2's vocab.bpe?")
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}  # str -> int

    def to_bytes(token, where):
        try:
            return bytes(byte_decoder[c] for c in token)
        except KeyError as e:
            raise TokenizerFileError(f"{where}: token {token!r} has character {e.args[0]!r}, "
                                     "which is not in GPT-2's byte alphabet") from None

    id_of = {}  # bytes -> int, over the non-special entries
    specials = {}  # str -> int
    for token, i in encoder.items():
        if token.startswith("<|") and token.endswith("|>"):
            specials[token] = i
        else:
            id_of[to_bytes(token, encoder_json)] = i
    byte_order = [None] * 256  # id -> byte
    for b in range(256):
        i = id_of.get(bytes([b]))
        if i is None or not 0 <= i < 256:
            raise TokenizerFileError(f"{encoder_json}: byte {b} has id {i!r}, expected one of 0..255")
        byte_order[i] = b
    merges = []  # [(int, int)]
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerFileError(f"{vocab_bpe}:{lineno}: expected two tokens, got {line!r}")
        left, right = (to_bytes(p, f"{vocab_bpe}:{lineno}") for p in parts)
        a, b, ab = id_of.get(left), id_of.get(right), id_of.get(left + right)
        if a is None or b is None or ab != 256 + len(merges):
            # Our ids are 256 + rank; a file where they differ would need an explicit id table.
            raise TokenizerFileError(f"{vocab_bpe}:{lineno}: merge {line!r} makes id {ab!r} in "
                                     f"{encoder_json.name}, expected {256 + len(merges)}")
        merges.append((a, b))
    if len(id_of) != 256 + len(merges):
        raise TokenizerFileError(f"{encoder_json} has {len(id_of)} tokens but {vocab_bpe} explains "
                                 f"{256 + len(merges)} (256 bytes + {len(merges)} merges)")
    return byte_order, merges, specials


def from_gpt2(cls, encoder_json, vocab_bpe):
    """A cls (BPETokenizer) that encodes exactly as GPT-2, <|endoftext|> = 50256 included."""
    byte_order, merges, specials = load_gpt2(encoder_json, vocab_bpe)
    return cls(merges, pattern=GPT2_PATTERN, special_tokens=specials, byte_order=byte_order)
