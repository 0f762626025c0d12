"""BPETokenizer: round trips (hypothesis), special tokens, errors, save/load, token files, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygrad_llm.tokenizer import (BPETokenizer, TokenizerError, TokenizerFileError, encode_file,
                                    read_token_file)
from tinygrad_llm.tokenizer.io import vocab_path

ROOT = Path(__file__).resolve().parents[1]

CORPUS = ("The quick brown fox jumps over the lazy dog. " * 20
          + "Thé naïve café servés crème brûlée; 東京は日本の首都です。 🙂🙃🙂🙃 " * 10
          + "x = 12345 + 678;\n\n\tif x:\n        return 'don't'\n" * 10
          + "<|endoftext|>" + "a" * 50 + "   \n\n\n" + "ab" * 30)


@pytest.fixture(scope="module", params=["gpt4", "gpt2", None])
def tok(request):
    return BPETokenizer.train(CORPUS, vocab_size=400, pattern=request.param,
                              special_tokens=["<|endoftext|>", "<|pad|>"])


# text that hits the awkward cases: emoji (4-byte UTF-8), CJK, combining marks, NUL, whitespace runs
AWKWARD = st.sampled_from(["🙂", "👨‍👩‍👧", "東京", "é", "e\u0301", "\u0000", " ", "\t", "\n", "\r\n",
                           "  ", "'s", "'LL", "123", "a", "aaaa", "\u200b", "\ufeff", "\U0010ffff"])
# Unicode text: every code point but the surrogates, which are not characters (a str can hold one,
# but it has no UTF-8 bytes; test_lone_surrogates pins what the tokenizer does with them).
CHARS = st.characters(exclude_categories=("Cs",))
TEXTS = st.one_of(
    st.text(CHARS, max_size=80),
    st.lists(st.one_of(AWKWARD, st.text(CHARS, max_size=5)), max_size=25).map("".join),
    st.builds(lambda c, n: c * n, CHARS, st.integers(0, 200)),  # one repeated character
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(s=TEXTS)
def test_roundtrip_text(tok, s):
    assert tok.decode(tok.encode(s, allowed_special="none")) == s


def test_lone_surrogates(tok):
    # U+DC80..U+DCFF are how Python's surrogateescape spells undecodable bytes (text read from a
    # file with invalid UTF-8): they encode as those bytes, so decode_bytes gives the bytes back
    ids = tok.encode("a\udc80b", allowed_special="none")
    assert tok.decode_bytes(ids) == b"a\x80b"
    assert tok.decode(ids) == "a\ufffdb"
    # any other lone surrogate is not text at all: refused, naming the code point
    with pytest.raises(TokenizerError, match="U\\+D800"):
        tok.encode("x\ud800", allowed_special="none")


@FAST
@given(b=st.binary(max_size=120))
def test_roundtrip_bytes(tok, b):
    ids = tok.encode_bytes(b)
    assert tok.decode_bytes(ids) == b
    assert all(0 <= i < tok.vocab_size for i in ids)


@FAST
@given(data=st.data())
def test_decode_never_raises_on_valid_ids(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    # ids that cut a UTF-8 character in half decode to U+FFFD
    assert isinstance(tok.decode(ids), str)


def test_cut_character_becomes_replacement(tok):
    ids = tok.encode_bytes("🙂".encode())[:1]
    if len(tok.vocab[ids[0]]) < 4:
        assert "\ufffd" in tok.decode(ids)


def test_byte_level_only_tokenizer_is_char_level():
    tok = BPETokenizer.train("hello", vocab_size=256, pattern=None)
    assert tok.merges == {} and tok.vocab_size == 256
    assert tok.encode("héllo") == list("héllo".encode())


def test_doc_example():
    tok = BPETokenizer.train("aaab aaab", vocab_size=258, pattern=None)
    # (97,97) has count 4; then (97,98) and (256,97) tie at 2 and the smaller pair wins
    assert tok.merges == {(97, 97): 256, (97, 98): 257}
    assert tok.encode("aaab") == [256, 257]


def test_training_is_deterministic():
    a = BPETokenizer.train(CORPUS, vocab_size=350, pattern="gpt4")
    b = BPETokenizer.train(CORPUS, vocab_size=350, pattern="gpt4")
    c = BPETokenizer.train(CORPUS.splitlines(keepends=True), vocab_size=350, pattern="gpt4")
    assert a.merges == b.merges
    assert list(a.merges) == list(b.merges)
    assert len(c.merges) == 94  # an iterable of lines trains too


def test_training_learns_frequent_words(tok):
    if tok.pattern is not None:
        assert " the" in {v.decode("utf-8", "replace") for v in tok.vocab.values()} or " quick" in {
            v.decode("utf-8", "replace") for v in tok.vocab.values()}
    assert len(tok.encode(CORPUS, allowed_special="all")) < len(CORPUS.encode()) / 2


def test_specials_are_not_merged_into_text():
    tok = BPETokenizer.train("ab<|endoftext|>ab" * 50, vocab_size=300, pattern=None,
                             special_tokens=["<|endoftext|>"])
    assert all(b"<|" not in v for i, v in tok.vocab.items() if i not in tok.inverse_special_tokens)


def test_small_corpus_stops_early():
    with pytest.raises(TokenizerError, match="vocab_size 1000 cannot be reached.*vocabulary of 259"):
        BPETokenizer.train("abc", vocab_size=1000, pattern="gpt4", special_tokens=["<|endoftext|>"], strict=True)
    with pytest.warns(UserWarning, match="vocab_size 1000 cannot be reached.*has 259 tokens"):
        tok = BPETokenizer.train("abc", vocab_size=1000, pattern="gpt4", special_tokens=["<|endoftext|>"])
    assert len(tok.merges) == 2 and tok.special_tokens == {"<|endoftext|>": 258}
    assert tok.vocab_size == 259


def test_special_tokens(tok):
    text = "hi<|endoftext|>there<|pad|>"
    ids = tok.encode(text, allowed_special="all")
    assert tok.special_tokens["<|endoftext|>"] in ids and tok.special_tokens["<|pad|>"] == ids[-1]
    assert tok.decode(ids) == text
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert tok.eot_id in only_eot and tok.special_tokens["<|pad|>"] not in only_eot
    plain = tok.encode(text, allowed_special="none")
    assert tok.eot_id not in plain and tok.decode(plain) == text
    with pytest.raises(TokenizerError, match=r"'<\|endoftext\|>' at character 2"):
        tok.encode(text)
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_bad_input_names_the_value(tok):
    with pytest.raises(TokenizerError, match="vocab_size 257 .*258"):
        BPETokenizer.train("abc", vocab_size=257, special_tokens=["<|a|>", "<|b|>"])
    with pytest.raises(TokenizerError, match="vocab_size 100"):
        BPETokenizer.train("abc", vocab_size=100)
    with pytest.raises(TokenizerError, match="'gpt5'"):
        BPETokenizer.train("abc", vocab_size=300, pattern="gpt5")
    with pytest.raises(TokenizerError, match=r"not a valid regex"):
        BPETokenizer.train("abc", vocab_size=300, pattern="(unclosed")
    with pytest.raises(TokenizerError, match="id 400 "):
        tok.decode([1, 2, 400])
    with pytest.raises(TokenizerError, match="id -1 "):
        tok.decode([-1])
    with pytest.raises(TokenizerError, match="'zz'"):
        tok.decode([1, "zz"])
    with pytest.raises(TokenizerError, match="'<|nope|>'"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(TokenizerError, match="bogus"):
        tok.encode("x", allowed_special="bogus")
    with pytest.raises(TokenizerError, match="U\\+D800"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="bytes"):
        tok.encode(b"abc")


def test_decode_accepts_numpy(tok):
    ids = tok.encode("hello world")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "hello world"


def test_custom_pattern():
    tok = BPETokenizer.train("one two three " * 30, vocab_size=280, pattern=r"\S+|\s+")
    assert tok.decode(tok.encode("one two four")) == "one two four"


# ---------------------------------------------------------------------------------- save / load

def test_save_load_roundtrip(tok, tmp_path):
    path = tok.save(tmp_path / "tok.json")
    back = BPETokenizer.load(path)
    assert back == tok and list(back.merges) == list(tok.merges)
    assert back.encode(CORPUS, allowed_special="all") == tok.encode(CORPUS, allowed_special="all")
    d = json.loads(path.read_text())
    assert d["format"] == "tinygrad_llm.bpe" and d["version"] == 1
    view = vocab_path(path).read_text()
    assert vocab_path(path).name == "tok.vocab" and "(special)" in view
    if tok.merges:
        (a, b), idx = next(iter(tok.merges.items()))
        assert f" {idx}\n" in view


def test_load_refuses_bad_files(tok, tmp_path):
    path = tok.save(tmp_path / "tok.json")
    good = path.read_text()

    def refused(text, match):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(TokenizerFileError, match=match):
            BPETokenizer.load(bad)

    refused(good[: len(good) // 2], "truncated or corrupt")
    refused(good.replace('"version": 1', '"version": 2'), "version 2")
    refused(good.replace('"tinygrad_llm.bpe"', '"minbpe"'), "'minbpe'")
    refused("[1, 2]", "not a tinygrad_llm.bpe file")
    if tok.merges:
        (a, b), _ = next(iter(tok.merges.items()))
        refused(good.replace(f"[{a}, {b}]", f"[{a}, {b + 1}]", 1), "sha256")
        no_sum = "\n".join(l for l in good.splitlines() if '"sha256"' not in l)
        refused(no_sum.replace(f"[{a}, {b}]", f"[{a}, 99999]", 1), "99999")
    assert issubclass(TokenizerFileError, ValueError)


def test_save_leaves_no_temp_files(tok, tmp_path):
    tok.save(tmp_path / "tok.json")
    tok.save(tmp_path / "tok.json")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json", "tok.vocab"]


# ---------------------------------------------------------------------------------- token files

@pytest.mark.parametrize("block", [7, 64, 1 << 22])
def test_encode_file_matches_encode(tok, tmp_path, block):
    src = tmp_path / "in.txt"
    src.write_bytes(CORPUS.encode() + b"\xff\xfe tail \x80")  # invalid UTF-8 is kept, byte for byte
    meta = encode_file(tok, src, tmp_path / "d.bin", verbose=False, tokenizer_name="t", block_bytes=block)
    ids, meta2 = read_token_file(tmp_path / "d.bin")
    assert meta == meta2
    assert set(meta) == {"dtype", "vocab_size", "num_tokens", "source_bytes", "tokenizer"}
    assert meta["dtype"] == "uint16" and meta["source_bytes"] == src.stat().st_size
    assert tok.decode_bytes(ids) == src.read_bytes()
    whole = src.read_bytes().decode("utf-8", "surrogateescape")
    if tok.pattern is not None or block > len(whole):
        assert list(ids) == tok.encode(whole, allowed_special="all")


def test_token_file_dtype_and_corruption(tmp_path):
    big = BPETokenizer([], pattern="gpt2", special_tokens={"<|endoftext|>": 70000})
    (tmp_path / "in.txt").write_text("hi<|endoftext|>")
    meta = encode_file(big, tmp_path / "in.txt", tmp_path / "d.bin", verbose=False)
    assert meta["dtype"] == "uint32"
    ids, _ = read_token_file(tmp_path / "d.bin")
    assert list(ids) == [104, 105, 70000]
    with open(tmp_path / "d.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(TokenizerFileError, match="truncated"):
        read_token_file(tmp_path / "d.bin")
    with pytest.raises(TokenizerFileError, match="sidecar"):
        read_token_file(tmp_path / "in.txt")


def test_encode_file_progress_goes_to_stderr(tok, tmp_path, capsys):
    (tmp_path / "in.txt").write_text(CORPUS)
    encode_file(tok, tmp_path / "in.txt", tmp_path / "d.bin", verbose=True)
    out, err = capsys.readouterr()
    assert out == "" and "tokens" in err and "MB/s" in err


# ---------------------------------------------------------------------------------- command line

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tinygrad_llm", "tokenize", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})


def test_cli_train_and_encode(tmp_path):
    (tmp_path / "in.txt").write_text(CORPUS)
    r = _cli("train", "--input", "in.txt", "--vocab-size", 300, "--out", "tok.json", "--special",
             "<|endoftext|>", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "merge" in r.stderr and (tmp_path / "tok.vocab").exists()
    r = _cli("encode", "--tokenizer", "tok.json", "--input", "in.txt", "--out", "d.bin", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids, meta = read_token_file(tmp_path / "d.bin")
    tok = BPETokenizer.load(tmp_path / "tok.json")
    assert list(ids) == tok.encode(CORPUS, allowed_special="all") and meta["tokenizer"] == "tok.json"
    r = _cli("train", "--input", "in.txt", "--vocab-size", 10, "--out", "x.json", cwd=tmp_path)
    assert r.returncode == 2 and "vocab_size 10" in r.stderr


def test_docstring_examples():
    import doctest

    import tinygrad_llm.tokenizer.patterns as patterns
    import tinygrad_llm.tokenizer.tokenizer as tokenizer
    for module in (patterns, tokenizer):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


PIECES = st.sampled_from(list("ab 1\n\t\r'!é🙂<|>") + ["<|endoftext|>", "<|endof", "<|pad|>", "<|pa",
                                                        "  \n", "   ", "'s", "123456", "\xff"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PIECES, max_size=40), block=st.integers(1, 16),
       allowed=st.sampled_from(["all", "none", {"<|pad|>"}]))
def test_encode_file_blocks_never_change_ids(tok, tmp_path, parts, block, allowed):
    # however the file is cut into blocks, the ids are those of encoding it whole; a special
    # token cut in half at a block's end ("  <|endof") must not change how the text before it is cut
    text = "".join(parts)
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode())
    encode_file(tok, src, tmp_path / "d.bin", verbose=False, block_bytes=block, allowed_special=allowed)
    ids, _ = read_token_file(tmp_path / "d.bin")
    assert list(ids) == tok.encode(text, allowed_special=allowed)


def test_encode_file_special_cut_at_block_end(tok, tmp_path):
    # found by the test above: "  " then a special cut as "<|endof" used to be encoded as " ", " "
    src = tmp_path / "in.txt"
    src.write_text("  <|endoftext|>")
    encode_file(tok, src, tmp_path / "d.bin", verbose=False, block_bytes=1)
    assert list(read_token_file(tmp_path / "d.bin")[0]) == tok.encode("  <|endoftext|>", allowed_special="all")


def test_cache_limit_starts_over(tok, monkeypatch):
    import tinygrad_llm.tokenizer.tokenizer as module
    monkeypatch.setattr(module, "_CACHE_LIMIT", 5)
    expected = tok.encode(CORPUS, allowed_special="none")
    tok.clear_cache()
    tok.encode("a b c d")  # fills the cache up to the limit
    assert tok.encode(CORPUS, allowed_special="none") == expected
    tok.clear_cache()
