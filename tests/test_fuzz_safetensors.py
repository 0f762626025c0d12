"""Hostile safetensors files: a damaged header (its length field, its JSON, every tensor's dtype,
shape and offsets, __metadata__), names given twice, and raw byte damage. Reading one, whole or
mapped, ends in a SafetensorsError naming the file, or gives arrays that are what the header
says (fuzz_helpers.refused_cleanly: no other exception, no hang, no unbacked allocation)."""
import json
import struct

import numpy as np
import pytest
from fuzz_helpers import byte_mutations, json_mutations, json_text, refused_cleanly, scratch_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygrad_llm import safetensors
from tinygrad_llm.safetensors import SafetensorsError

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TENSORS = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64),
           "c": np.ones(3, np.float32), "d": np.zeros((0, 5), np.float16)}


def valid_file():
    return b"".join(safetensors.serialize(TENSORS, metadata={"format": "pt"}, dtypes={"c": "BF16"}))


def split(data):
    """(header dict, buffer bytes) of a serialized file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def assemble(header_text, buffer, length=None):
    head = header_text.encode("utf-8", "surrogatepass") if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(head) if length is None else length) + head + buffer


def read_every_way(path):
    """load_file, then open_mapped with every tensor viewed and copied out: what a loader does."""
    tensors, metadata = safetensors.load_file(path)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    with safetensors.open_mapped(path) as f:
        for name in f.keys():
            view = f.view(name)
            assert view.shape == f.shape(name) == tensors[name].shape
            out = np.empty(view.shape, np.float32)
            f.copy_into(out, name)
            del view
    return tensors


def check(data):
    with scratch_dir() as d:
        path = d / "model.safetensors"
        path.write_bytes(data)
        return refused_cleanly(lambda: read_every_way(path), names=[path], errors=(SafetensorsError,))


@FUZZ
@given(header=json_mutations(split(valid_file())[0]))
def test_a_damaged_header_is_refused_by_name(header):
    check(assemble(json_text(header), split(valid_file())[1]))


@FUZZ
@given(data=byte_mutations(valid_file()))
def test_damaged_bytes_are_refused_by_name(data):
    check(data)


@settings(max_examples=40, deadline=None)
@given(length=st.sampled_from([0, 1, 2, 7, 2 ** 31, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1,
                               safetensors.MAX_HEADER, safetensors.MAX_HEADER + 1]) | st.integers(0, 400))
def test_any_header_length_field_is_refused_or_read(length):
    header, buffer = split(valid_file())
    status, _ = check(assemble(json.dumps(header), buffer, length=length))
    if length > safetensors.MAX_HEADER:
        assert status == "refused"


@pytest.mark.parametrize("header, fault", [
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     '"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "appears twice"),
    ('{"__metadata__": [], "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "__metadata__"),
    ('{"__metadata__": "x", "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "__metadata__"),
    ('{"__metadata__": {"k": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "__metadata__"),
    ('{"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', "dtype"),
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1, "y": 2}}', None),
    ('{"a": {"dtype": "F32", "x": [1], "data_offsets": [0, 4]}}', "needs dtype, shape and data_offsets"),
    ('{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "shape"),
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [false, 4]}}', "data_offsets"),
    ('{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]}}', "too large"),
    ('{"a": {"dtype": "F32", "shape": [4294967296, 4294967297], "data_offsets": [0, 0]}}', "too large"),
    ('{"a": {"dtype": "F32", "shape": [' + ", ".join(["1"] * 40) + '], "data_offsets": [0, 4]}}', "shape"),
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, '
     '"b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "overlap"),
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', "needs 8 bytes"),
    ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400000000000000000000]}}', "needs 4 bytes"),
    ('{"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}', "dtype"),
    ("[" * 50000, "nested too deeply"),
    ('{"a": ' + "1" * 5000 + "}", "unreadable JSON"),
    (b'{"\xff\xfe": 1}', "not UTF-8"),
])
def test_each_header_fault_is_named(header, fault):
    status, error = check(assemble(header, bytes(8)))
    if fault is None:  # extra fields are allowed, as the reference reader allows them
        assert status == "ok"
    else:
        assert status == "refused" and fault in str(error), (status, error)


def test_tensors_out_of_order_in_the_buffer_are_read():
    header = {"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
              "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    buffer = np.array([1.0, 2.0], np.float32).tobytes()
    status, tensors = check(assemble(json.dumps(header), buffer))
    assert status == "ok" and tensors["a"][0] == 1.0 and tensors["b"][0] == 2.0


def test_an_empty_tensor_copies_out_of_a_mapped_file(tmp_path):
    path = safetensors.save_file({"e": np.zeros((0, 5), np.float16), "f": np.ones(2, np.float32)},
                                 tmp_path / "m.safetensors")
    with safetensors.open_mapped(path) as f:
        out = f.copy_into(np.empty((0, 5), np.float32), "e")  # once an IndexError: no row 0 to size
        assert out.shape == (0, 5)
        np.testing.assert_array_equal(f.copy_into(np.empty(2, np.float32), "f"), 1.0)
