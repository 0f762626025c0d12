"""GPT-2 parity: our loader + encoder against OpenAI's own algorithm, re-written here from scratch.

Needs GPT-2's encoder.json and vocab.bpe in ../shared/data/gpt2 (next to the checkout) and
tiny Shakespeare in ../shared/data; skips with the reason when they are absent.
"""
import json
import os
from pathlib import Path

import pytest
import regex

from tinygrad_llm.tokenizer import BPETokenizer, bytes_to_unicode

DATA = Path(os.environ.get("TINYGRAD_LLM_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
GPT2_DIR = DATA / "gpt2"
SHAKESPEARE = DATA / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def gpt2():
    if not (GPT2_DIR / "encoder.json").is_file() or not (GPT2_DIR / "vocab.bpe").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found in {GPT2_DIR}")
    return BPETokenizer.from_gpt2(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe")


@pytest.fixture(scope="module")
def reference(gpt2):
    return ReferenceGPT2(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe")


@pytest.fixture(scope="module")
def shakespeare():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny Shakespeare not found at {SHAKESPEARE}")
    return SHAKESPEARE.read_text(encoding="utf-8")


class ReferenceGPT2:
    """The textbook algorithm of GPT-2's encoder.py, on strings: map bytes to printable
    characters, split with the regex, then repeatedly merge the adjacent pair of lowest rank."""

    def __init__(self, encoder_json, vocab_bpe):
        self.encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))  # str -> int
        merges = [tuple(line.split()) for line in Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:]
                  if line.strip()]
        self.ranks = {pair: i for i, pair in enumerate(merges)}  # (str, str) -> int
        self.byte_encoder = bytes_to_unicode()
        self.pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
        self.cache = {}  # str -> [str]

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = list(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            first, second = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if (first, second) not in self.ranks:
                break
            new, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = new
        self.cache[token] = word
        return word

    def encode(self, text):
        ids = []
        for chunk in self.pat.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in chunk.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[32] == "Ġ" and table[10] == "Ċ" and table[0] == "Ā"


# ids checked against OpenAI's published GPT-2 tokenizer (tiktoken "gpt2" gives the same)
KNOWN = [
    ("Hello world", [15496, 995]),
    ("hello world", [31373, 995]),
    (" the", [262]),
    ("The", [464]),
    ("!", [0]),
    ("<|endoftext|>", [50256]),
    ("Hello, world!", [15496, 11, 995, 0]),
    ("\n", [198]),
    ("\n\n", [628]),
]


@pytest.mark.parametrize("text,ids", KNOWN)
def test_known_ids(gpt2, text, ids):
    assert gpt2.encode(text, allowed_special="all") == ids
    assert gpt2.decode(ids) == text


def test_vocab_shape(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.eot_id == 50256 and gpt2.special_tokens == {"<|endoftext|>": 50256}
    assert gpt2.vocab[262] == b" the" and gpt2.vocab[0] == b"!"


REFERENCE_TEXTS = ["Hello world", "  leading and trailing spaces  ", "don't won't I'll we've THEY'RE",
                   "Numbers 1234567890 and 3.14159", "東京は日本の首都です。🙂 naïve café",
                   "tabs\tand\nnewlines\r\n\n\n   end", "a" * 100, "\u0000\u0001 control", "   "]


@pytest.mark.parametrize("text", REFERENCE_TEXTS)
def test_matches_reference_on_odd_text(gpt2, reference, text):
    assert gpt2.encode(text) == reference.encode(text)


def test_shakespeare_check_value(gpt2, shakespeare):
    assert len(shakespeare.encode("utf-8")) == 1_115_394
    assert len(gpt2.encode(shakespeare)) == 338_025


def test_shakespeare_matches_reference(gpt2, reference, shakespeare):
    # the whole text, token for token (about 1 s: the reference caches chunks as encoder.py does)
    assert gpt2.encode(shakespeare) == reference.encode(shakespeare)


def test_save_load_keeps_gpt2_ids(gpt2, shakespeare, tmp_path):
    path = gpt2.save(tmp_path / "gpt2.json")
    back = BPETokenizer.load(path)
    assert back == gpt2
    text = shakespeare[:20_000] + "<|endoftext|>"
    assert back.encode(text, allowed_special="all") == gpt2.encode(text, allowed_special="all")
    assert "[Ġ" not in (tmp_path / "gpt2.vocab").read_text()[:20000]  # real bytes, not GPT-2's stand-ins
