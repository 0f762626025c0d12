"""A character-level tokenizer: nanoGPT's vocabulary of one id per distinct character.

The baseline the BPE tokenizer is measured against, and the quickest start on a small corpus.
"""
import json
from pathlib import Path

from ..files import atomic_write_text


class CharTokenizer:
    """nanoGPT's character-level vocabulary: one id per distinct character of the text.

    >>> tok = CharTokenizer.from_text("hello")      # chars "ehlo" -> ids 0..3
    >>> tok.encode("hole"), tok.decode([2, 3])
    ([1, 3, 2, 0], 'lo')
    """

    def __init__(self, chars):
        self.chars = list(chars)  # id -> str
        self.stoi = {c: i for i, c in enumerate(self.chars)}  # str -> id
        if len(self.stoi) != len(self.chars):
            raise ValueError("CharTokenizer: the character list has duplicates")

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text, allowed_special=None):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharTokenizer: character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8", "surrogateescape")

    def save(self, path):
        atomic_write_text(path, json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path):
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if d.get("type") != "char":
            raise ValueError(f"{path} is not a CharTokenizer file")
        return cls(d["chars"])
