"""The shard loader: every window once per epoch, disjoint ranks, exact resume, and training from
a shard folder (a tiny corpus made here) with a bit-identical resume."""
import json

import numpy as np
import pytest

from tinygrad_llm.checkpoint import load_checkpoint
from tinygrad_llm.data import open_token_data
from tinygrad_llm.shard_data import ShardData
from tinygrad_llm.tokenizer import BPETokenizer
from tinygrad_llm.tokenizer.shards import encode_corpus
from train_helpers import interrupt_during_step
from tinygrad_llm.train import TrainConfig, Trainer

EOT = "<|endoftext|>"


def tiny_corpus(folder, n_docs=80, shard_tokens=300, val_tokens=120):
    """Made-up documents of letters (a byte-level tokenizer keeps it fast), encoded into shards."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "é", "🙂"]
    docs = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(n_docs)]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    tok = BPETokenizer([], special_tokens=[EOT])
    encode_corpus(tok, [folder / "docs.jsonl"], folder / "shards", workers=1, shard_tokens=shard_tokens,
                  val_tokens=val_tokens, verbose=False)
    return folder / "shards", tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("corpus"))


def train_stream(folder):
    """The train shards' ids, each shard separately."""
    data = ShardData(folder)
    return [np.fromfile(p, dtype=data.dtype).astype(np.int64) for p in data.train_paths]


def test_an_epoch_draws_every_window_once(corpus):
    folder, _ = corpus
    T, B = 8, 5
    shards = train_stream(folder)
    expected = sorted(tuple(s[k * T:k * T + T + 1]) for s in shards for k in range((len(s) - 1) // T))
    data = ShardData(folder, seed=4)
    drawn = []
    while len(drawn) < len(expected):
        x, y = data.get_batch("train", B, T)
        assert x.dtype == np.int64 and x.shape == y.shape == (B, T)
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
        drawn.extend(tuple(np.concatenate([r, q[-1:]])) for r, q in zip(x, y))
    assert sorted(drawn[:len(expected)]) == expected
    assert data.state()["epoch"] == 1  # the next epoch has begun, in a new order
    second = [tuple(r) for r in ShardData(folder, seed=4).get_batch("train", 50, T)[0]]
    assert [tuple(r) for r in data.get_batch("train", 50, T)[0]] != second


def test_ranks_draw_disjoint_shares_of_one_batch(corpus):
    folder, _ = corpus
    one = ShardData(folder, seed=1)
    ranks = [ShardData(folder, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(7):
        x, _ = one.get_batch("train", 12, 6)
        parts = [d.get_batch("train", 4, 6)[0] for d in ranks]
        np.testing.assert_array_equal(np.concatenate(parts), x)
    with pytest.raises(ValueError, match="rank 3 is not in"):
        ShardData(folder, rank=3, world_size=3)


def test_state_resumes_exactly_and_refuses_another_corpus(corpus, tmp_path):
    folder, _ = corpus
    a = ShardData(folder, seed=2)
    for _ in range(9):
        a.get_batch("train", 7, 5)
    state = json.loads(json.dumps(a.state()))  # it goes into the checkpoint's JSON
    b = ShardData(folder, seed=99)
    b.set_state(state)
    for _ in range(20):  # across shard and epoch boundaries
        np.testing.assert_array_equal(a.get_batch("train", 7, 5)[0], b.get_batch("train", 7, 5)[0])
    other, _ = tiny_corpus(tmp_path, n_docs=30)
    with pytest.raises(ValueError, match="train tokens"):
        ShardData(other).set_state(state)


def test_val_batches_bytes_and_errors(corpus, tmp_path):
    folder, tok = corpus
    data = open_token_data(folder)
    assert isinstance(data, ShardData) and data.meta["vocab_size"] == tok.vocab_size
    val = np.asarray(data.splits["val"])
    x, y = data.get_batch("val", 6, 10, rng=np.random.default_rng(0))
    for r, q in zip(x, y):  # each row is a window of the val shard
        starts = [i for i in range(len(val) - 10) if np.array_equal(val[i:i + 10], r)]
        assert any(np.array_equal(val[i + 1:i + 11], q) for i in starts)
    text = tok.decode_bytes([t for t in val.tolist() if t != tok.eot_id])
    assert data.bytes_per_token("val") == pytest.approx(len(text) / len(val))
    with pytest.raises(ValueError, match="fewer than block_size"):
        data.get_batch("val", 1, 500, rng=np.random.default_rng(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without shards"):
        open_token_data(tmp_path / "empty")


def test_training_from_a_shard_folder_resumes_bit_identically(corpus, tmp_path):
    folder, _ = corpus

    def cfg(out):
        return TrainConfig(data=str(folder), out_dir=str(out), model=dict(block_size=8, n_layer=1, n_head=2,
                           n_embd=16), batch_size=4, max_iters=8, warmup_iters=2, eval_every=4,
                           eval_iters=2, log_every=1, seed=3, final_eval="full")
    full = Trainer(cfg(tmp_path / "a"), log=lambda m: None)
    assert full.run()["status"] == "done"
    first = Trainer(cfg(tmp_path / "b"), log=lambda m: None)
    interrupt_during_step(first, 5)  # Ctrl-C in the middle of step 6: it finishes, then the run stops
    assert first.run()["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "b" / "ckpt.safetensors")["rng"]["data"]["kind"] == "shards"
    resumed = Trainer(cfg(tmp_path / "b"), log=lambda m: None)
    assert resumed.run(resume=True)["step"] == 8

    def losses(d):
        return {r["step"]: r["train_loss"] for r in map(json.loads, open(d / "metrics.jsonl"))}
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(la[s] == lb[s] for s in range(1, 9))
    assert full.last_val == resumed.last_val


def test_train_command_takes_a_shard_folder(corpus, tmp_path, capsys):
    from tinygrad_llm.__main__ import main
    folder, tok = corpus
    tok.save(tmp_path / "tok.json")
    argv = ["train", "--data", str(folder), "--tokenizer-file", str(tmp_path / "tok.json"),
            "--out-dir", str(tmp_path / "run"), "--max-iters", "3", "--block-size", "8", "--n-layer", "1",
            "--n-embd", "16", "--n-head", "2", "--batch-size", "2", "--sample-tokens", "0", "--quiet"]
    assert main(argv) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(argv[:3] + argv[5:]) == 2
    assert "pass --tokenizer-file" in capsys.readouterr().err
