"""Hostile tokenizer.json and tokenizer_config.json files (tokenizer/hf.py): fields of the wrong
type, size or sign, missing, null or unknown; bytes cut short, overwritten or inserted.  Loading
ends in one TokenizerError naming the file, or in a tokenizer that encodes and decodes without
error; never a crash, a hang or an allocation the file does not back."""
import json

from fuzz_helpers import (
    byte_mutations,
    hostile_values,
    json_mutations,
    refused_cleanly,
    scratch_dir,
    write_json,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygrad_llm.tokenizer import TokenizerError, from_pretrained

_BYTES = {bytes([b]).decode("latin-1"): b for b in range(33, 127)}  # printable ASCII: its own byte char
VOCAB = {"<s>": 0, "</s>": 1, **{c: 2 + i for i, c in enumerate(_BYTES)}}
for _pair in ("th", "he", "the", "Ġt", "Ġthe"):
    VOCAB.setdefault(_pair, len(VOCAB))
VOCAB.setdefault("Ġ", len(VOCAB))
VOCAB.setdefault("<0x0A>", len(VOCAB))

# A small file with every part the loader reads: a normalizer, a Sequence of pre-tokenizers,
# added tokens with flags, a template post-processor and a Sequence of decoders.
VALID = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [
        {"id": 0, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True},
        {"id": 1, "content": "</s>", "single_word": True, "lstrip": True, "rstrip": True, "normalized": False, "special": True}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace", "pattern": {"String": "\t"}, "content": " "}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+|\\p{L}+|\\p{N}{1,3}|[^\\s\\p{L}\\p{N}]+"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "ByteLevel"},
                                                 {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": True,
              "ignore_merges": False, "vocab": VOCAB, "merges": ["t h", ["th", "e"], "Ġ t", "Ġt he"]},
}
VALID["model"]["merges"][3] = ["Ġt", "he"]  # "Ġt he" would need "he"; the list form takes any tokens
CONFIG = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "add_bos_token": True,
          "chat_template": "{% for m in messages %}{{ bos_token }}{{ m.role }}: {{ m['content'] }}\n{% endfor %}"}
TEXT = "the thing\tthe 12345 <s>x</s> é 日本 👍\n"


def mutations(valid, changes=3):
    """Up to `changes` json_mutations, each on a fresh copy of the last one's result: several
    changes within one json_mutations draw could edit a hostile value it inserted, which is
    shared with every later draw."""
    strategy = json_mutations(valid, max_changes=1)
    for _ in range(changes - 1):
        strategy = strategy.flatmap(lambda v: st.just(v) | json_mutations(v, max_changes=1))
    return strategy


def use(directory):
    """Load, then encode, decode and render: a loaded tokenizer must work end to end."""
    tok = from_pretrained(directory)
    ids = tok.encode(TEXT)
    assert all(isinstance(i, int) for i in ids)
    assert isinstance(tok.decode(ids), str) and isinstance(tok.decode(ids, skip_special_tokens=True), str)
    if tok.chat_template is not None:
        try:
            tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
        except TokenizerError:
            pass  # a mutated template may fail; it must fail as our error
    return tok


def test_the_valid_files_load_and_round_trip():
    with scratch_dir() as d:
        write_json(d / "tokenizer.json", VALID)
        write_json(d / "tokenizer_config.json", CONFIG)
        tok = use(d)
        assert tok.decode(tok.encode("the thing", add_special_tokens=False)) == "the thing"
        assert tok.encode("the")[0] == 0 and tok.bos_token_id == 0 and tok.eos_token_id == 1


_SETTINGS = {"max_examples": 100, "deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(**_SETTINGS)
@given(spec=mutations(VALID))
def test_mutated_tokenizer_json_is_refused_cleanly(spec):
    with scratch_dir() as d:
        write_json(d / "tokenizer.json", spec)
        write_json(d / "tokenizer_config.json", CONFIG)
        refused_cleanly(lambda: use(d), names=["tokenizer.json"], errors=(TokenizerError,), seconds=10)


@settings(**_SETTINGS)
@given(data=byte_mutations(json.dumps(VALID, ensure_ascii=False).encode("utf-8")))
def test_damaged_tokenizer_json_bytes_are_refused_cleanly(data):
    with scratch_dir() as d:
        (d / "tokenizer.json").write_bytes(data)
        refused_cleanly(lambda: use(d), names=["tokenizer.json"], errors=(TokenizerError,), seconds=10)


@settings(**_SETTINGS)
@given(config=mutations(CONFIG) | hostile_values())
def test_mutated_tokenizer_config_is_refused_cleanly(config):
    with scratch_dir() as d:
        write_json(d / "tokenizer.json", VALID)
        write_json(d / "tokenizer_config.json", config)
        refused_cleanly(lambda: use(d), names=["tokenizer_config.json"], errors=(TokenizerError,), seconds=10)


@settings(max_examples=60, deadline=None)
@given(template=st.text(alphabet=st.sampled_from(list("{}%#-+~|.()[]'\" _abcdefimnorstu0123456789")), max_size=60))
def test_garbage_chat_templates_fail_as_one_error(template):
    with scratch_dir() as d:
        write_json(d / "tokenizer.json", VALID)
        write_json(d / "tokenizer_config.json", {**CONFIG, "chat_template": template})
        tok = from_pretrained(d)
        status, result = refused_cleanly(lambda: tok.apply_chat_template([{"role": "user", "content": "hi"}]),
                                         errors=(TokenizerError,), seconds=10)
        assert status == "refused" or isinstance(result, str)


def test_deep_nesting_and_a_huge_declared_vocab_are_refused():
    deep = {"type": "NFC"}
    for _ in range(40):
        deep = {"type": "Sequence", "normalizers": [deep]}
    very_deep = "[" * 100000 + "]" * 100000
    for spec_text, message in [(json.dumps({**VALID, "normalizer": deep}), "nested deeper than"),
                               (very_deep, "tokenizer.json")]:
        with scratch_dir() as d:
            (d / "tokenizer.json").write_text(spec_text)
            status, _ = refused_cleanly(lambda: from_pretrained(d), names=[message], errors=(TokenizerError,))
            assert status == "refused", spec_text[:80]
    with scratch_dir() as d:  # a vocab id far past the vocab's size allocates nothing for the gap
        spec = json.loads(json.dumps(VALID))
        spec["model"]["vocab"]["Ġ"] = 2 ** 31 - 1
        write_json(d / "tokenizer.json", spec)
        status, tok = refused_cleanly(lambda: use(d), errors=(TokenizerError,), max_bytes=8 << 20)
        assert status == "ok" and tok.vocab_size == 2 ** 31
