"""Token data: memmapped token files, the 90/10 split, seeded (B, T) windows, bits per byte."""
import numpy as np
import pytest

from tinygrad_llm.data import TokenData, bits_per_byte


def _token_file(tmp_path, ids, dtype="uint16", source_bytes=None):
    import json
    path = tmp_path / "d.bin"
    np.asarray(ids, dtype=dtype).tofile(path)
    meta = {"dtype": dtype, "vocab_size": int(max(ids)) + 1, "num_tokens": len(ids),
            "source_bytes": source_bytes or 2 * len(ids), "tokenizer": "t"}
    (tmp_path / "d.bin.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_split_and_windows(tmp_path, dtype):
    ids = np.arange(1000) % 300 + (70000 if dtype == "uint32" else 0)
    data = TokenData(_token_file(tmp_path, ids, dtype), seed=0)
    assert isinstance(data.splits["train"], np.memmap)
    assert len(data.splits["train"]) == 900 and len(data.splits["val"]) == 100
    np.testing.assert_array_equal(data.splits["val"], ids[900:])  # the LAST 10% is validation
    x, y = data.get_batch("train", 5, 16)
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for row in x:  # each window is a contiguous run from the train split
        start = np.nonzero(ids[:900] == row[0])[0]
        assert any((ids[s:s + 16] == row).all() for s in start)
    xv, _ = data.get_batch("val", 3, 99)
    assert xv.max() < ids.max() + 1 and set(xv.ravel()) <= set(ids[900:])


def test_seeded_and_resumable(tmp_path):
    path = _token_file(tmp_path, np.arange(500) % 50)
    a, b = TokenData(path, seed=3), TokenData(path, seed=3)
    np.testing.assert_array_equal(a.get_batch("train", 4, 8)[0], b.get_batch("train", 4, 8)[0])
    state = a.state()
    nxt = a.get_batch("train", 4, 8)[0]
    c = TokenData(path, seed=99)
    c.set_state(state)
    np.testing.assert_array_equal(c.get_batch("train", 4, 8)[0], nxt)
    assert not np.array_equal(TokenData(path, seed=4).get_batch("train", 4, 8)[0],
                              TokenData(path, seed=3).get_batch("train", 4, 8)[0])


def test_errors_name_the_problem(tmp_path):
    data = TokenData(np.arange(30, dtype=np.int32), source_bytes=60)
    with pytest.raises(ValueError, match="val split has 3 tokens"):
        data.get_batch("val", 2, 8)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        data.get_batch("test", 2, 2)
    with pytest.raises(ValueError, match="1-d integer"):
        TokenData(np.zeros((2, 2)))


def test_bits_per_byte():
    # uniform over 256 byte values, one token per byte: exactly 8 bits per byte
    assert bits_per_byte(np.log(256), 100, 100) == pytest.approx(8.0)
    data = TokenData(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), val_fraction=0.2, source_bytes=40)
    assert data.bytes_per_token("val", decode=lambda ids: b"ab" * len(ids) + b"c") == pytest.approx(2.5)
    assert data.bytes_per_token() == pytest.approx(4.0)
