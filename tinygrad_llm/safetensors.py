"""The safetensors format, read and written by hand (no pickle, no third-party package).

    [8 bytes]  N, the header length, unsigned little-endian
    [N bytes]  JSON: {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..],
                      "data_offsets": [begin, end]}, ...}   (offsets into the buffer below)
    [rest]     the buffer: each tensor's raw little-endian bytes, C order, back to back

Reading validates everything before trusting it: the header length against the file size (before
a byte of the header is read), the JSON (UTF-8, no name given twice), every dtype, shape and
offset pair (inside the buffer, matching shape x itemsize in exact integers, no two tensors
overlapping), so a truncated, corrupt or hostile file is refused with one SafetensorsError naming
the file and the field at fault, and nothing is allocated from a size the file has not backed.
Nothing is ever unpickled: a file can only describe arrays, never run code.

    >>> save_file({"w": np.ones((2, 3), np.float32)}, "m.safetensors", metadata={"step": "10"})
    >>> tensors, metadata = load_file("m.safetensors")

Big checkpoints are read memory-mapped instead (`open_mapped`): each tensor is a read-only view of
the file's pages, copied once into wherever it is going (`copy_into`: a model's parameter), and its
pages are then handed back (`release`), so loading never holds a second copy of the weights.

    >>> with open_mapped("model.safetensors") as f:
    ...     f.copy_into(param.data, "h.0.attn.c_attn.weight", transpose=True); f.release("h.0...")
"""
import json
import math
import mmap
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .files import JSONFileError, atomic_write, parse_json

# safetensors dtype name -> numpy dtype (little-endian). BF16 has no numpy dtype: it is read as
# raw uint16 and widened to float32 by decoding (see _decode_bf16).
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {np.dtype(v).newbyteorder("<") if v.itemsize > 1 else v: k
          for k, v in DTYPES.items() if k != "BF16"}
CHUNK_BYTES = 8 << 20  # copy_into's step: the most of a mapped file held at once while loading
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit: a bigger header is corrupt
MAX_DIMS = 32  # NumPy's lowest limit across versions; no tensor of a model comes near it


class SafetensorsError(ValueError):
    """A safetensors file is truncated, corrupt, or describes something we cannot read."""


def _decode_bf16(raw):
    """bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def encode_bf16(x):
    """float32 -> bfloat16 bits (uint16), rounding to nearest even (used by tests and writers)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def read_header(path):
    """(header dict without __metadata__, metadata dict, buffer start, file size), validated."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: {size} bytes is too short for a safetensors file "
                                   "(needs an 8-byte header length); truncated?")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:  # checked before anything is allocated for it
            raise SafetensorsError(f"{path}: header length {n} does not fit a file of {size} bytes "
                                   f"(at most {MAX_HEADER}; truncated or not a safetensors file)")
        raw = f.read(n)
    try:
        header = parse_json(raw, "the header")
    except JSONFileError as e:
        raise SafetensorsError(f"{path}: {e}; corrupt file") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings, got {_shown(metadata)}")
    start = 8 + n
    _validate(path, header, size - start)
    return header, metadata, start, size


def _shown(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is no size


def _validate(path, header, buffer_size):
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise SafetensorsError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets, "
                                   f"got {_shown(info)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {_shown(dtype)}; supported: {sorted(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(_is_int(d) and d >= 0 for d in shape)):
            raise SafetensorsError(f"{path}: tensor {name!r} has shape {_shown(shape)}; expected a list of "
                                   f"at most {MAX_DIMS} ints >= 0")
        itemsize = DTYPES[dtype].itemsize
        if math.prod(max(d, 1) for d in shape) * itemsize >= 2 ** 63:  # NumPy cannot hold the shape
            raise SafetensorsError(f"{path}: tensor {name!r} has shape {_shown(shape)}, too large for any array")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{path}: tensor {name!r} has data_offsets {_shown(offsets)}; "
                                   "expected [begin, end] with 0 <= begin <= end")
        begin, end = offsets
        expected = math.prod(shape) * itemsize  # exact: Python ints do not wrap
        if end - begin != expected:
            raise SafetensorsError(f"{path}: tensor {name!r} ({dtype} {shape}) needs {expected} bytes "
                                   f"but its data_offsets {offsets} span {end - begin}")
        if end > buffer_size:
            raise SafetensorsError(f"{path}: tensor {name!r} ends at byte {end} of the buffer, which has "
                                   f"only {buffer_size} bytes (truncated file?)")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors {n0!r} [{b0}, {e0}) and {n1!r} [{b1}, {e1}) overlap")


def load_file(path, keys=None, bf16_to="float32"):
    """({name: np.ndarray}, metadata) from a safetensors file; keys limits what is read.

    Arrays are fresh, writable, native-endian copies. BF16 tensors are decoded to float32
    (NumPy has no bfloat16); F16 stays float16 for the caller to cast.
    """
    header, metadata, start, _ = read_header(path)
    names = list(header) if keys is None else list(keys)
    missing = [k for k in names if k not in header]
    if missing:
        raise KeyError(f"{path}: no tensors named {missing}; it has {sorted(header)[:8]}...")
    out = {}
    with open(path, "rb") as f:
        for name in names:
            info = header[name]
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            raw = f.read(end - begin)
            if len(raw) != end - begin:
                raise SafetensorsError(f"{path}: tensor {name!r} is cut short (truncated file)")
            arr = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
            if info["dtype"] == "BF16":
                arr = _decode_bf16(arr).astype(bf16_to, copy=False)
            out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    return out, metadata


class MappedFile:
    """A validated safetensors file mapped read-only into memory (see open_mapped).

    view(name) is the tensor as stored (F16 as float16, BF16 as raw uint16 bits), a view of the
    mapped pages: reading it costs page faults, not a copy. Pages a process has read count in its
    RSS until released, so a loader calls release(name) once a tensor has been copied.
    """

    def __init__(self, path, header, metadata, start, mm):
        self.path, self.header, self.metadata, self._start, self._mm = path, header, metadata, start, mm

    def keys(self):
        return list(self.header)

    def dtype(self, name):
        return self._info(name)["dtype"]

    def shape(self, name):
        return tuple(self._info(name)["shape"])

    def _info(self, name):
        if name not in self.header:
            raise KeyError(f"{self.path}: no tensor named {name!r}; it has {sorted(self.header)[:8]}...")
        return self.header[name]

    def view(self, name):
        info = self._info(name)
        dtype = DTYPES[info["dtype"]]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if count == 0:
            return np.empty(info["shape"], dtype)
        offset = self._start + info["data_offsets"][0]
        return np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset).reshape(info["shape"])

    def copy_into(self, dst, name, transpose=False, release=True):
        """dst[...] = the tensor (transposed if asked), converting its dtype on the way: one pass
        over the mapped bytes and no temporary the size of the tensor.

        The copy goes in chunks of about CHUNK_BYTES of the file, and with release each chunk's
        pages are handed back as soon as it is copied: the process never holds more than one
        chunk of the file besides the destination.

        BF16 into float32 writes the 16 stored bits into the high half of each float32 word in
        place (dst viewed as uint32, then shifted): bfloat16 is exactly float32's top half.
        """
        src = self.view(name)
        target = dst.T if transpose else dst  # laid out like the file, so chunks go row by row
        if tuple(target.shape) != src.shape:
            shown = tuple(src.shape[::-1]) if transpose else src.shape
            raise ValueError(f"{self.path}: tensor {name!r} has shape {shown}"
                             f"{' (transposed)' if transpose else ''}, the destination {tuple(dst.shape)}")
        bf16 = self.dtype(name) == "BF16"
        bits = target.view(np.uint32) if bf16 and dst.dtype == np.float32 else None
        if src.ndim == 0 or src.size == 0:
            chunks = [slice(None)]
        else:
            step = max(1, CHUNK_BYTES // max(src[0].nbytes, 1))
            chunks = [slice(r, r + step) for r in range(0, src.shape[0], step)]
        begin = self._info(name)["data_offsets"][0]
        row_bytes = src[0].nbytes if src.ndim and len(src) else src.nbytes  # (0, ...) has no row 0
        for rows in chunks:
            part = src[rows]
            if bits is not None:
                bits[rows] = part
                bits[rows] <<= 16
            elif bf16:
                target[rows] = _decode_bf16(part)  # other destinations: float32, then a cast
            else:
                target[rows] = part  # F16 -> float32 and friends: NumPy casts while it copies
            if release and src.ndim and src.size:
                lo = rows.start * row_bytes
                self._release_span(begin + lo, begin + lo + part.nbytes)
        return dst

    def release(self, name):
        """Drop the tensor's pages from this process (they stay in the OS page cache)."""
        begin, end = self._info(name)["data_offsets"]
        self._release_span(begin, end)

    def _release_span(self, begin, end):
        page = mmap.PAGESIZE
        lo = (self._start + begin) // page * page
        if end > begin and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, lo, self._start + end - lo)

    def close(self):
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a view: the mapping lives until it is dropped
            pass


@contextmanager
def open_mapped(path):
    """A MappedFile for a safetensors file, validated like load_file; unmapped on exit."""
    header, metadata, start, _ = read_header(path)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    mapped = MappedFile(Path(path), header, metadata, start, mm)
    try:
        yield mapped
    finally:
        mapped.close()


def _dtype_name(arr):
    dt = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    if dt not in _NAMES:
        raise SafetensorsError(f"cannot store dtype {arr.dtype} in safetensors; supported: "
                               f"{sorted(str(d) for d in _NAMES)}")
    return _NAMES[dt]


def serialize(tensors, metadata=None, dtypes=None):
    """The file's bytes as an iterator of chunks: the header first, then each tensor's bytes, one
    tensor at a time (a contiguous array is handed over as it is, so writing a model never holds a
    second copy of its weights). dtypes may force e.g. {"w": "BF16"} for a float32 array, which is
    then rounded to bfloat16."""
    dtypes = dtypes or {}
    header, plan, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):  # sorted like the reference writer, so files are reproducible
        arr = np.asarray(tensors[name])
        name_dtype = "BF16" if dtypes.get(name) == "BF16" else _dtype_name(arr)
        nbytes = int(np.prod(arr.shape, dtype=np.int64)) * DTYPES[name_dtype].itemsize
        header[name] = {"dtype": name_dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        plan.append((arr, name_dtype))
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # pad so the buffer starts 8-byte aligned
    yield struct.pack("<Q", len(head))
    yield head
    for arr, name_dtype in plan:
        data = encode_bf16(arr) if name_dtype == "BF16" else np.ascontiguousarray(arr, dtype=DTYPES[name_dtype])
        yield memoryview(data.reshape(-1)).cast("B") if data.size else b""


def save_file(tensors, path, metadata=None, dtypes=None):
    """Write tensors {name: array} to path atomically: a temporary file, fsync, then rename.

    A crash mid-save leaves any previous file at path untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        for chunk in serialize(tensors, metadata, dtypes):
            f.write(chunk)
    return path
