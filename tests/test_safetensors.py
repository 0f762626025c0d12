"""The hand-written safetensors reader/writer: round trips, dtypes, and refusing bad files."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinygrad_llm.safetensors import SafetensorsError, encode_bf16, load_file, read_header, save_file

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8,
          np.uint16, np.uint32, np.uint64, np.bool_]


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=1, max_size=4),
       dtype_idx=st.lists(st.integers(0, len(DTYPES) - 1), min_size=4, max_size=4))
def test_round_trip_any_dtype_and_shape(tmp_path_factory, shapes, dtype_idx):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": (rng.standard_normal(s) * 50).astype(DTYPES[dtype_idx[i]])
               for i, s in enumerate(shapes)}
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file(tensors, path, metadata={"a": "b"})
    got, meta = load_file(path)
    assert meta == {"a": "b"}
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)


def test_layout_matches_the_spec(tmp_path):
    path = save_file({"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.int64)}, tmp_path / "f")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0  # buffer starts aligned
    header = json.loads(raw[8:8 + n])
    assert header["a"] == {"dtype": "I64", "shape": [2, 2], "data_offsets": [0, 32]}
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [32, 44]}
    assert raw[8 + n + 32:] == np.arange(3, dtype="<f4").tobytes()


def test_bf16_decodes_to_float32(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, -0.0], dtype=np.float32)
    save_file({"w": x}, tmp_path / "b", dtypes={"w": "BF16"})
    header, _, _, _ = read_header(tmp_path / "b")
    assert header["w"]["dtype"] == "BF16"
    got, _ = load_file(tmp_path / "b")
    assert got["w"].dtype == np.float32
    np.testing.assert_allclose(got["w"], x, rtol=2 ** -8)
    np.testing.assert_array_equal(got["w"][:3], x[:3])  # exactly representable in bfloat16
    assert encode_bf16(np.float32(1.0)).item() == 0x3F80


def _write_raw(path, header, buffer=b""):
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + buffer)
    return path


@pytest.mark.parametrize("header,buffer,match", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "only 4 bytes"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype 'X9'"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"w": {"dtype": "F32"}}, b"", "needs dtype, shape and data_offsets"),
])
def test_bad_headers_are_refused(tmp_path, header, buffer, match):
    with pytest.raises(SafetensorsError, match=match):
        load_file(_write_raw(tmp_path / "bad", header, buffer))


def test_truncated_and_garbage_files_are_refused(tmp_path):
    path = save_file({"w": np.ones(100, np.float32)}, tmp_path / "ok")
    raw = path.read_bytes()
    for cut in (3, 20, len(raw) - 1):
        (tmp_path / "cut").write_bytes(raw[:cut])
        with pytest.raises(SafetensorsError, match="truncated|too short"):
            load_file(tmp_path / "cut")
    (tmp_path / "junk").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        load_file(tmp_path / "junk")


def test_unknown_key_named(tmp_path):
    path = save_file({"w": np.ones(2, np.float32)}, tmp_path / "k")
    with pytest.raises(KeyError, match="nope"):
        load_file(path, keys=["nope"])
