"""The NCCL unique id between ranks, on the CPU: stand-ins for CuPy 13 (a tuple of signed chars)
and CuPy 14 (bytes), each as strict as the real constructor, behind NcclComm's broadcast."""
import json
import sys
import types

import numpy as np
import pytest

from tinygrad_llm import distributed

# an id with bytes above 127, which CuPy 13 hands out as negative chars
ID = bytes((7 * i + 200) % 256 for i in range(128))


def fake_cupy(major):
    """A `cupy` module whose cuda.nccl behaves like CuPy `major`'s for the id (and records joins)."""
    joined = []

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            want = bytes if major >= 14 else tuple
            if not isinstance(commId, want):  # Cython's typed argument
                raise TypeError(f"Argument 'commId' has incorrect type (expected {want.__name__}, "
                                f"got {type(commId).__name__})")
            if len(commId) != 128:
                raise ValueError(f"commId length {len(commId)} != 128.")
            if want is tuple:
                if not all(-128 <= c <= 127 for c in commId):  # each one goes into a C char
                    raise OverflowError("value too large to convert to char")
                commId = bytes(c & 0xFF for c in commId)
            joined.append((ndev, commId, rank))

    def get_unique_id():
        return ID if major >= 14 else tuple(b - 256 if b > 127 else b for b in ID)

    nccl = types.SimpleNamespace(get_unique_id=get_unique_id, NcclCommunicator=NcclCommunicator,
                                 available=True)
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cupy = types.ModuleType("cupy")
    cupy.__version__ = f"{major}.2.0"
    cupy.cuda = cuda
    return cupy, joined


class Wire:
    """Two ranks in one process: rank 0's broadcast is what rank 1 receives."""

    def __init__(self):
        self.sent = None

    def world(self, rank):
        wire = self

        class FakeWorld:
            size = 2

            def __init__(self):
                self.rank = rank

            def broadcast_(self, buf, root=0):
                if self.rank == root:
                    wire.sent = np.array(buf, copy=True)
                else:
                    buf[...] = wire.sent
                return buf

            def broadcast_json(self, obj, root=0):
                if self.rank == root:
                    wire.sent = json.dumps(obj)
                return json.loads(wire.sent)
        return FakeWorld()


@pytest.mark.parametrize("major", [13, 14])
def test_every_rank_joins_with_rank_zeros_id(monkeypatch, major):
    cupy, joined = fake_cupy(major)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    wire = Wire()
    for rank in (0, 1):
        distributed.NcclComm(wire.world(rank))
    assert joined == [(2, ID, 0), (2, ID, 1)]
    if major >= 14:
        assert isinstance(wire.sent, np.ndarray) and wire.sent.dtype == np.uint8
        assert wire.sent.tobytes() == ID  # the wire carries the 128 bytes themselves


def test_a_world_of_one_joins_alone(monkeypatch):
    cupy, joined = fake_cupy(14)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    distributed.NcclComm(distributed.World())
    assert joined == [(1, ID, 0)]


def test_id_conversions_round_trip_and_refuse_a_wrong_length():
    signed = tuple(b - 256 if b > 127 else b for b in ID)
    for uid in (ID, signed, list(signed)):
        raw = distributed.nccl_id_bytes(uid)
        assert raw.dtype == np.uint8 and raw.tobytes() == ID
        assert distributed.nccl_id_for_cupy(raw, 14) == ID
        assert distributed.nccl_id_for_cupy(raw, 13) == signed
    with pytest.raises(ValueError, match="127 bytes, expected 128"):
        distributed.nccl_id_bytes(ID[:127])
