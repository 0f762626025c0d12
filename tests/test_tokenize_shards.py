"""Corpus encoding into shards: the same ids as one process, whatever the workers, batches and
shard sizes; .txt documents; errors naming the document; interruption and resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygrad_llm.tokenizer import BPETokenizer, read_token_file
from tinygrad_llm.tokenizer import documents
from tinygrad_llm.tokenizer.documents import DocumentError
from tinygrad_llm.tokenizer.shards import encode_corpus, shard_name

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
EOT = "<|endoftext|>"
SAMPLE = ("The quick brown fox jumps over the lazy dog. Thé naïve café; 東京は日本の首都です。 🙂\n"
          "x = 12345 + 678;\n\tif x:\n        return 'don't'\n") * 8


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(SAMPLE, vocab_size=320, special_tokens=[EOT, "<|pad|>"])


class CrashingTokenizer(BPETokenizer):
    """Kills its process on a document containing the bomb (a worker crash, not an exception)."""

    def encode(self, text, allowed_special="none_raise"):
        if "\U0001f4a3" in text:
            os._exit(3)
        return super().encode(text, allowed_special)


def reference_ids(tok, docs, allowed="all"):
    """Single-process encoding: [eot] + ids of each document, back to back."""
    out = []
    for d in docs:
        out.append(tok.eot_id)
        out.extend(tok.encode(d, allowed))
    return out


def write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({field: d, "id": 0}) + "\n")
            f.write("\n")  # blank lines are no documents
    return path


def read_shards(folder):
    """(all ids in shard order, sidecars)."""
    ids, metas = [], []
    for i in range(10_000):
        p = Path(folder) / shard_name(i)
        if not p.exists():
            break
        a, meta = read_token_file(p)
        ids.append(np.asarray(a))
        metas.append(meta)
    return np.concatenate(ids).tolist(), metas


DOCS = st.lists(st.one_of(
    st.just(""),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.lists(st.sampled_from(["a", "the ", " fox", "🙂", "東京", "é", "\n", EOT, "<|pad|>", "<|endof",
                              "  ", "123"]), max_size=12).map("".join),
), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=DOCS, shard=st.integers(1, 40), batch=st.integers(1, 300))
def test_shards_hold_the_single_process_ids(tok, tmp_path_factory, docs, shard, batch):
    tmp = tmp_path_factory.mktemp("c")
    ref = reference_ids(tok, docs)
    val = max(1, min(shard, len(ref) - 1)) if len(ref) > 1 else 1
    src = write_jsonl(tmp / "c.jsonl", docs)
    if len(ref) <= val:
        with pytest.raises(ValueError, match="val-tokens"):
            encode_corpus(tok, [src], tmp / "out", workers=1, shard_tokens=shard, val_tokens=val,
                          verbose=False, batch_bytes=batch)
        return
    s = encode_corpus(tok, [src], tmp / "out", workers=1, shard_tokens=shard, val_tokens=val,
                      verbose=False, batch_bytes=batch)
    ids, metas = read_shards(tmp / "out")
    assert ids == ref
    assert s["tokens"] == len(ref) and s["documents"] == len(docs)
    assert [m["num_tokens"] for m in metas[:-1]] == [val] + [shard] * (len(metas) - 2)
    assert [m["last"] for m in metas] == [False] * (len(metas) - 1) + [True]
    assert metas[0]["split"] == "val" and all(m["split"] == "train" for m in metas[1:])
    # a shard's source_bytes: the text its ids decode to, the specials counting none
    special = set(tok.special_tokens.values())
    for m, i in zip(metas, np.cumsum([0] + [m["num_tokens"] for m in metas])):
        part = [t for t in ids[i:i + m["num_tokens"]] if t not in special]
        assert m["source_bytes"] == len(tok.decode_bytes(part))


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=DOCS, workers=st.integers(2, 3))
def test_worker_count_does_not_change_the_ids(tok, tmp_path_factory, docs, workers):
    tmp = tmp_path_factory.mktemp("w")
    docs = docs + ["padding so the corpus outgrows the validation shard"]
    src = write_jsonl(tmp / "c.jsonl", docs)
    encode_corpus(tok, [src], tmp / "out", workers=workers, shard_tokens=7, val_tokens=5,
                  verbose=False, batch_bytes=20)
    ids, _ = read_shards(tmp / "out")
    assert ids == reference_ids(tok, docs)


def test_txt_files_split_at_endoftext(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "READ_BYTES", 5)  # markers straddle the blocks
    docs = ["first doc\n", "second 🙂 doc", "\nthird"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(EOT + EOT.join(docs) + EOT + EOT, encoding="utf-8")
    (tmp_path / "in" / "b.txt").write_text("no marker at all", encoding="utf-8")
    (tmp_path / "in" / "skip.md").write_text("not a corpus file", encoding="utf-8")
    encode_corpus(tok, [tmp_path / "in"], tmp_path / "out", workers=1, shard_tokens=10, val_tokens=3,
                  verbose=False)
    ids, metas = read_shards(tmp_path / "out")
    assert ids == reference_ids(tok, docs + ["no marker at all"])
    assert metas[0]["eot_id"] == tok.eot_id


def test_a_bad_document_is_named(tok, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "fine"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(DocumentError, match=r"c\.jsonl:2: no 'text' field"):
        encode_corpus(tok, [src], tmp_path / "out", workers=1, val_tokens=1, verbose=False)
    src.write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DocumentError, match=r"c\.jsonl:2: not a JSON line"):
        encode_corpus(tok, [src], tmp_path / "out", workers=2, val_tokens=1, verbose=False)
    assert not any(tmp_path.joinpath("out").glob(".*tmp*"))  # no half-written shard left behind


def test_a_worker_crash_is_traced_to_its_document(tok, tmp_path):
    crashing = CrashingTokenizer(list(tok.merges), pattern=tok.pattern, special_tokens=tok.special_tokens)
    src = write_jsonl(tmp_path / "c.jsonl", ["one \U0001f4a3 boom", "two", "three"])
    with pytest.raises(DocumentError, match=r"worker process died while encoding .*c\.jsonl:1"):
        encode_corpus(crashing, [src], tmp_path / "out", workers=2, val_tokens=1, verbose=False,
                      batch_bytes=1 << 20)


def test_resume_refuses_other_settings_and_skips_a_finished_corpus(tok, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", ["alpha beta gamma"] * 5)
    first = encode_corpus(tok, [src], tmp_path / "out", workers=1, shard_tokens=8, val_tokens=4, verbose=False)
    again = encode_corpus(tok, [src], tmp_path / "out", workers=1, shard_tokens=8, val_tokens=4, verbose=False)
    assert again["new_tokens"] == 0 and again["shards"] == first["shards"]
    with pytest.raises(ValueError, match=r"other settings \(differing: \['shard_tokens'\]\)"):
        encode_corpus(tok, [src], tmp_path / "out", workers=1, shard_tokens=9, val_tokens=4, verbose=False)


def _corpus_for_interrupting(tmp_path, tok):
    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.exists() else SAMPLE * 400
    paras = [p for p in text.split("\n\n")]
    write_jsonl(tmp_path / "a.jsonl", paras[: len(paras) // 2])
    (tmp_path / "b.txt").write_text(EOT.join(paras[len(paras) // 2:]), encoding="utf-8")
    tok.save(tmp_path / "tok.json")


def test_an_interrupted_encode_resumes_to_the_same_shards(tok, tmp_path, monkeypatch):
    docs = [f"document {i}: " + "the quick fox " * (i % 7) for i in range(60)]
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    kw = dict(workers=1, shard_tokens=25, val_tokens=10, verbose=False, batch_bytes=64)
    full = encode_corpus(tok, [src], tmp_path / "full", **kw)
    from tinygrad_llm.tokenizer.shards import ShardWriter
    close = ShardWriter._close

    def close_then_stop(self, last):
        close(self, last)
        if self.index == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr(ShardWriter, "_close", close_then_stop)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(tok, [src], tmp_path / "part", **kw)
    monkeypatch.setattr(ShardWriter, "_close", close)
    assert len(list((tmp_path / "part").iterdir())) == 8  # four shards and their sidecars
    resumed = encode_corpus(tok, [src], tmp_path / "part", **kw)
    assert resumed["resumed_at"] is not None and 0 < resumed["new_tokens"] < full["tokens"]
    assert read_shards(tmp_path / "part") == read_shards(tmp_path / "full")


@pytest.mark.slow
def test_sigint_then_resume_gives_the_uninterrupted_shards(tok, tmp_path):
    _corpus_for_interrupting(tmp_path, tok)
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")]
    full = encode_corpus(BPETokenizer.load(tmp_path / "tok.json"), inputs, tmp_path / "full", workers=1,
                         shard_tokens=20_000, val_tokens=10_000, verbose=False, tokenizer_name="tok.json")
    cmd = [sys.executable, "-m", "tinygrad_llm", "tokenize", "encode", "--tokenizer", "tok.json",
           "--input", *inputs, "--out", "part", "--workers", "2", "--shard-tokens", "20000",
           "--val-tokens", "10000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = tmp_path / "part" / (shard_name(2) + ".json")
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err, err.decode()
    kept = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert not [k for k in kept if "tmp" in k]
    assert 3 <= len(kept) // 2 < full["shards"]  # part way through: some shards, not all
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert b"resuming" in r.stderr
    for i in range(full["shards"]):
        a, b = tmp_path / "full" / shard_name(i), tmp_path / "part" / shard_name(i)
        assert a.read_bytes() == b.read_bytes(), f"shard {i} differs"
        assert json.loads((a.parent / (a.name + ".json")).read_text()) == \
            json.loads((b.parent / (b.name + ".json")).read_text())
    assert not (tmp_path / "part" / shard_name(full["shards"])).exists()


def test_encode_command_writes_shards_from_a_glob(tok, tmp_path, capsys):
    from tinygrad_llm.__main__ import main
    tok.save(tmp_path / "tok.json")
    (tmp_path / "c").mkdir()
    for i in range(3):
        write_jsonl(tmp_path / "c" / f"part{i}.jsonl", [f"text {i} {j}" for j in range(4)], field="body")
    argv = ["tokenize", "encode", "--tokenizer", str(tmp_path / "tok.json"), "--input",
            str(tmp_path / "c" / "part*.jsonl"), "--out", str(tmp_path / "shards"), "--text-field", "body",
            "--workers", "1", "--shard-tokens", "20", "--val-tokens", "10", "--quiet"]
    assert main(argv) == 0
    assert "12 documents" in capsys.readouterr().out
    docs = [f"text {i} {j}" for i in range(3) for j in range(4)]
    assert read_shards(tmp_path / "shards")[0] == reference_ids(tok, docs)
    one_file = argv[:5] + [str(tmp_path / "c" / "part0.jsonl"), str(tmp_path / "c" / "part1.jsonl"),
                           "--out", str(tmp_path / "x.bin")]
    assert main(one_file) == 2
    assert "one token file, from one --input file" in capsys.readouterr().err


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise():
    import io
    from tinygrad_llm.tokenizer.shards import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    for stream in (Terminal(), io.StringIO()):
        p = Progress(total_bytes=4_000_000, stream=stream)
        p.every = 0.0
        p.update(docs=10, done_bytes=1_000_000, encoded_bytes=1_000_000, tokens=300_000, shards=1)
        p.update(docs=40, done_bytes=4_000_000, encoded_bytes=4_000_000, tokens=1_200_000, shards=3, final=True)
        out = stream.getvalue()
        assert "10 documents | 1.0/4.0 MB" in out and "MB/s" in out and "ETA" in out
        assert "40 documents" in out and out.rstrip("\n").replace("\x1b[K", "").endswith("done")
        assert out.startswith("\r") == isinstance(stream, Terminal)
        assert out.count("\n") == (1 if isinstance(stream, Terminal) else 2)
