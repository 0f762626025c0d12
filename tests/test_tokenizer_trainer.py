"""The fast trainer must learn exactly the merges of a naive trainer that recounts everything."""
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.tokenizer import BPETokenizer
from tinygrad_llm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, resolve_pattern
from tinygrad_llm.tokenizer.trainer import merge_word


def naive_train(text, vocab_size, pattern):
    """minbpe's RegexTokenizer.train with our tie rule: every merge recounts every pair of every
    chunk occurrence, picks the highest count, then the smallest (a, b), and merges it everywhere."""
    source = resolve_pattern(pattern)
    chunks = regex.findall(source, text) if source is not None else ([text] if text else [])
    ids = [list(c.encode("utf-8")) for c in chunks]
    merges = []
    for idx in range(256, vocab_size):
        stats = {}
        for chunk in ids:
            for p in zip(chunk, chunk[1:]):
                stats[p] = stats.get(p, 0) + 1
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        ids = [merge_word(chunk, pair[0], pair[1], idx) for chunk in ids]
        merges.append(pair)
    return merges


def test_merge_word():
    assert merge_word([1, 1, 1], 1, 1, 9) == [9, 1]
    assert merge_word([1, 1, 1, 1], 1, 1, 9) == [9, 9]
    assert merge_word([2, 1, 2, 1], 1, 2, 9) == [2, 9, 1]
    assert merge_word([], 1, 2, 9) == []


# small alphabets make long repeats, overlapping pairs ("aaaa") and many ties
CORPORA = st.one_of(
    st.text(alphabet="ab c\n", max_size=300),
    st.text(alphabet="aé🙂 1'\t", max_size=200),
    st.text(max_size=150),
    st.lists(st.sampled_from(["the ", "then ", "hen ", "a", "aa", "  ", "\n", "1234", "'s ", "x"]),
             max_size=80).map("".join),
)


@settings(max_examples=120, deadline=None)
@given(text=CORPORA, extra=st.integers(0, 60), pattern=st.sampled_from(["gpt4", "gpt2", None]))
def test_fast_trainer_matches_naive(text, extra, pattern):
    vocab_size = 256 + extra
    fast = BPETokenizer.train(text, vocab_size, pattern=pattern)
    assert list(fast.merges) == naive_train(text, vocab_size, pattern)


def test_fast_trainer_matches_naive_on_real_text():
    text = (GPT2_PATTERN + GPT4_PATTERN + open(__file__, encoding="utf-8").read())[:6000]
    fast = BPETokenizer.train(text, 256 + 300, pattern="gpt4")
    assert list(fast.merges) == naive_train(text, 256 + 300, "gpt4")


@settings(max_examples=30, deadline=None)
@given(text=CORPORA)
def test_training_is_deterministic(text):
    a = BPETokenizer.train(text, 300, pattern="gpt4")
    b = BPETokenizer.train(text, 300, pattern="gpt4")
    assert list(a.merges) == list(b.merges)
