"""Saving and loading a tokenizer: one versioned, human-readable JSON file, never a pickle.

    {
      "format": "tinygrad_llm.bpe",
      "version": 1,
      "pattern": "'(?i:[sdmt]|ll|ve|re)|...",    the regex source itself, or null
      "pattern_name": "gpt4",                     informative only; "pattern" is what counts
      "special_tokens": {"<|endoftext|>": 1023},
      "byte_order": null,                         or the byte of ids 0..255 (GPT-2's order)
      "vocab_size": 1024,
      "sha256": "9f2c...",                        over pattern, specials, byte_order, merges
      "merges": [
        [32, 116],                                merge i makes id 256 + i: here " t" -> 256
        ...
      ]
    }

A file that is cut short no longer parses; one with a changed digit fails the checksum (delete
the "sha256" line to load a file you edited on purpose).  Either way load() says what is wrong.
save() also writes tok.vocab next to tok.json: one line per token, minbpe-style, e.g.
"[ t][he] -> [ the] 262", for people to see what was learned.  Both are written to a temporary
file and renamed into place, so a crash never leaves half a file under the real name.
"""
import hashlib
import json
import unicodedata
from pathlib import Path

from ..files import atomic_write_text
from .errors import TokenizerError, TokenizerFileError
from .patterns import pattern_name

FORMAT = "tinygrad_llm.bpe"
VERSION = 1


def _checksum(pattern, special_tokens, byte_order, merges):
    canonical = json.dumps([pattern, sorted(special_tokens.items()), byte_order, merges],
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def vocab_path(path):
    """tok.json -> tok.vocab (any other name gets .vocab appended)."""
    path = Path(path)
    return path.with_suffix(".vocab") if path.suffix == ".json" else path.with_name(path.name + ".vocab")


def save(tok, path):
    """Write tok to path as JSON, and the readable view to vocab_path(path).  Returns path."""
    merges = [list(p) for p in tok.merges]  # dict order is rank order
    byte_order = None if tok.byte_order == list(range(256)) else tok.byte_order
    header = {
        "format": FORMAT,
        "version": VERSION,
        "pattern": tok.pattern,
        "pattern_name": pattern_name(tok.pattern),
        "special_tokens": tok.special_tokens,
        "byte_order": byte_order,
        "vocab_size": tok.vocab_size,
        "sha256": _checksum(tok.pattern, tok.special_tokens, byte_order, merges),
    }
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('  "merges": [')
    lines.append(",\n".join(f"    [{a}, {b}]" for a, b in merges))
    lines.append("  ]")
    lines.append("}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_text(vocab_path(path), vocab_text(tok))
    return Path(path)


def load(cls, path):
    """Read a file written by save(); refuse anything else with a TokenizerFileError."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerFileError(f"{path} is not valid JSON ({e}); the file is truncated or corrupt"
                                 f" ({len(raw)} bytes)") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise TokenizerFileError(f"{path} is not a {FORMAT} file (format: {found!r})")
    if d.get("version") != VERSION:
        raise TokenizerFileError(f"{path} is {FORMAT} version {d.get('version')!r}; "
                                 f"this code reads version {VERSION}")
    missing = [k for k in ("pattern", "special_tokens", "byte_order", "merges") if k not in d]
    if missing:
        raise TokenizerFileError(f"{path} lacks the keys {missing}")
    pattern, specials, byte_order, merges = d["pattern"], d["special_tokens"], d["byte_order"], d["merges"]
    if not (pattern is None or isinstance(pattern, str)):
        raise TokenizerFileError(f"{path}: pattern must be a string or null, got {pattern!r}")
    if not isinstance(specials, dict) or not all(type(i) is int for i in specials.values()):
        raise TokenizerFileError(f"{path}: special_tokens must map strings to ints, got {specials!r}")
    if byte_order is not None and (not isinstance(byte_order, list) or len(byte_order) != 256
                                   or not all(type(b) is int for b in byte_order)):
        raise TokenizerFileError(f"{path}: byte_order must be null or a list of 256 ints")
    if not isinstance(merges, list):
        raise TokenizerFileError(f"{path}: merges must be a list, got {type(merges).__name__}")
    for rank, m in enumerate(merges):
        if not (isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m)):
            raise TokenizerFileError(f"{path}: merge {rank} must be a pair of ints, got {m!r}")
    if "sha256" in d and d["sha256"] != _checksum(pattern, specials, byte_order, merges):
        raise TokenizerFileError(f"{path}: content does not match its sha256 checksum; the file is "
                                 "corrupt (or was edited: delete the sha256 line to accept edits)")
    try:
        tok = cls(merges, pattern=pattern, special_tokens=specials, byte_order=byte_order)
    except TokenizerError as e:
        raise TokenizerFileError(f"{path}: {e}") from None
    if "vocab_size" in d and d["vocab_size"] != tok.vocab_size:
        raise TokenizerFileError(f"{path} says vocab_size {d['vocab_size']!r} but holds "
                                 f"{tok.vocab_size} tokens")
    return tok


def render_token(t):
    """bytes -> readable str: invalid UTF-8 becomes U+FFFD, control characters become \\u escapes."""
    s = t.decode("utf-8", errors="replace")
    return "".join(c if unicodedata.category(c)[0] != "C" else f"\\u{ord(c):04x}" for c in s)


def vocab_text(tok):
    """One line per id: "[a][b] -> [ab] id" for merges, "[x] id" for bytes and specials."""
    lines = [f"# {tok!r}", "# [left][right] -> [token] id; ids 0..255 are single bytes"]
    for i in range(256):
        lines.append(f"[{render_token(tok.vocab[i])}] {i}")
    for (a, b), idx in tok.merges.items():
        lines.append(f"[{render_token(tok.vocab[a])}][{render_token(tok.vocab[b])}] -> "
                     f"[{render_token(tok.vocab[idx])}] {idx}")
    for s, i in tok.special_tokens.items():
        lines.append(f"[{render_token(s.encode('utf-8'))}] {i} (special)")
    return "\n".join(lines) + "\n"
