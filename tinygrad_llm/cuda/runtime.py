"""Compiling, caching and launching the kernels in tinygrad_llm/kernels/ through CuPy.

One registry says which kernels each .cu file defines: every kernel-family module of this
package calls `register(file, kernels)` when it is imported, and everything else (the file list,
the compile's name_expressions, the nvcc compile check, the emulator tests) is derived from it.

Each .cu file is compiled once per (file, dtype) through `cupy.RawModule`, with the float or
double instantiation named through `name_expressions` (the kernels are C++ templates) and the
kernels folder on the include path for common.cuh. CuPy keys its on-disk cache by the source
text and the options only, not by the headers a source includes, so the source handed to CuPy
starts with a comment carrying a digest of every file it includes (see `compile_source`): an
edited common.cuh changes the key and is compiled afresh. Each kernel function is looked up once
per (file, kernel, dtype) and kept (`get_function` builds a new RawKernel every time it is called).

Only the instantiations named in name_expressions are compiled: each .cu file's explicit
instantiation list (which nvcc's compile check and report need) sits behind
`#ifndef __CUDACC_RTC__`, which NVRTC defines. CuPy's disk cache serves modules built with
name_expressions from CuPy 14.2 on (earlier releases compile them again in every process);
`note_cupy_cache` says so once when an older CuPy is in use.

Ints are passed as np.int32 and scalars in the kernel's own dtype: CuPy packs each argument by its
Python type, so a bare Python int would go in as a 64-bit value and a float as a double.
"""
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from .. import backend

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
# file -> the kernels it defines, each instantiated for float and double: a plain name is the
# template <T>; "{T}" marks where the dtype goes in a template with more arguments
KERNELS = {}
# file -> kernels instantiated for float only (their double versions would spill registers)
FLOAT_ONLY = {}
# files whose kernels are also instantiated for tgl::bf16 (bf16.cuh): bfloat16 storage, float math
BF16_FILES = set()
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
PACK = {np.dtype(np.float32): 4, np.dtype(np.float64): 2}  # elements per 16-byte load
NULL = np.uint64(0)  # a null pointer argument (an optional weight or bias)

_enabled = os.environ.get("TINYGRAD_LLM_KERNELS", "1") != "0"
CACHED_NAME_EXPRESSIONS = (14, 2)  # the first CuPy whose disk cache keeps name_expressions modules
_cache_noted = False
_modules = {}  # (file, dtype) -> cupy.RawModule
_functions = {}  # (file, kernel name, dtype) -> the module's function, looked up once
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def register(filename, kernels, float_only=(), bf16=False):
    """Declare the kernels one .cu file defines (called by each kernel-family module); bf16: they
    are instantiated for tgl::bf16 too."""
    if filename in KERNELS and (KERNELS[filename], FLOAT_ONLY.get(filename, ())) != (tuple(kernels), tuple(float_only)):
        raise ValueError(f"{filename} is registered twice with different kernels")
    KERNELS[filename] = tuple(kernels)
    if bf16:
        BF16_FILES.add(filename)
    if float_only:
        FLOAT_ONLY[filename] = tuple(float_only)


def kernel_files():
    """Every registered .cu file, in registration order."""
    return tuple(KERNELS)


def empty(shape, dtype):
    """Every kernel output is allocated here (the tests swap in NaN-filled arrays to prove that
    each element gets written)."""
    return backend.cupy().empty(shape, dtype=dtype)


def set_enabled(enabled):
    """Turn the hand-written kernels on or off (off: every op takes its plain CuPy path)."""
    global _enabled
    _enabled = bool(enabled)


def enabled():
    return _enabled


def ctype(dtype):
    """The kernels' C++ type for a dtype: float, double, tgl::bf16 (ml_dtypes' bfloat16), or None."""
    dtype = np.dtype(dtype)
    return "tgl::bf16" if dtype.name == "bfloat16" else _CTYPE.get(dtype)


def pack(dtype):
    """Elements per 16-byte load."""
    return 16 // np.dtype(dtype).itemsize


def serves(*arrays, bf16=False):
    """True when the kernels can take these arrays: all CuPy, C-contiguous, one float dtype
    (bfloat16 too when the caller's kernel file has bf16 instantiations: bf16=True).

    None entries (an absent bias) are skipped.
    """
    cp = backend._cupy
    if not _enabled or cp is None:
        return False
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if not isinstance(a, cp.ndarray) or not a.flags.c_contiguous:
            return False
        if a.dtype not in _CTYPE and not (bf16 and a.dtype.name == "bfloat16"):
            return False
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return False
    return dtype is not None


def kernel_source(filename):
    return (KERNEL_DIR / filename).read_text()


def included_files(filename):
    """Every file a kernel source includes with #include "...", directly or through another
    header, each once, in the order first met (resolved against the kernels folder)."""
    seen, todo = [], [filename]
    while todo:
        for name in _INCLUDE.findall(kernel_source(todo.pop(0))):
            if name not in seen:
                seen.append(name)
                todo.append(name)
    return seen


def compile_source(filename):
    """The source CuPy compiles: the .cu text behind one line naming a digest of each header it
    includes, so CuPy's cache key (source + options) changes whenever any of them does."""
    digests = " ".join(f"{h}={hashlib.sha256(kernel_source(h).encode()).hexdigest()[:16]}"
                       for h in included_files(filename))
    return f"// includes: {digests}\n#line 1\n{kernel_source(filename)}"


def cupy_version(cp):
    """(major, minor) of a CuPy module, (0, 0) where it does not say."""
    m = re.match(r"(\d+)\.(\d+)", str(getattr(cp, "__version__", "")))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def note_cupy_cache(cp):
    """Warn once when this CuPy recompiles every kernel module in every process."""
    global _cache_noted
    if _cache_noted:
        return
    _cache_noted = True
    version = cupy_version(cp)
    if (0, 0) < version < CACHED_NAME_EXPRESSIONS:
        warnings.warn(f"CuPy {cp.__version__} does not serve kernels built with name_expressions from "
                      f"its disk cache: each process compiles them again (CuPy >= "
                      f"{'.'.join(map(str, CACHED_NAME_EXPRESSIONS))} keeps them)", RuntimeWarning,
                      stacklevel=3)


def module(filename, dtype):
    """The compiled RawModule for one kernel file and dtype (compiled on first use, then cached)."""
    dtype = np.dtype(dtype)
    key = (filename, dtype)
    mod = _modules.get(key)
    if mod is None:
        cp = backend.cupy()
        ct = ctype(dtype)
        if ct is None or (ct == "tgl::bf16" and filename not in BF16_FILES):
            raise TypeError(f"{filename} has no kernels for dtype {dtype}")
        names = KERNELS[filename] + FLOAT_ONLY.get(filename, ()) * (ct == "float")
        note_cupy_cache(cp)
        mod = cp.RawModule(code=compile_source(filename),
                           options=("-std=c++17", f"-I{KERNEL_DIR}"),
                           name_expressions=[expr(k, ct) for k in names])
        _modules[key] = mod
    return mod


def expr(name, ctype):
    """The C++ name of one instantiation: softmax_forward<float>, softmax_forward_warp<float, 8>."""
    return name.format(T=ctype) if "{T}" in name else f"{name}<{ctype}>"


def kernel(filename, name, dtype):
    """One kernel function, looked up in its module once and then served from a cache."""
    dtype = np.dtype(dtype)
    key = (filename, name, dtype)
    fn = _functions.get(key)
    if fn is None:
        fn = _functions[key] = module(filename, dtype).get_function(expr(name, ctype(dtype)))
    return fn


def launch(filename, name, dtype, grid, block, *args, shared_mem=0):
    """Launch a kernel; Python ints become np.int32, Python floats the kernel's compute type (its
    dtype; float32 for bf16)."""
    scalar = np.float32 if ctype(dtype) == "tgl::bf16" else np.dtype(dtype).type
    packed = tuple(np.int32(a) if isinstance(a, (bool, int)) else
                   scalar(a) if isinstance(a, float) else a for a in args)
    kernel(filename, name, dtype)(tuple(grid), tuple(block), packed, shared_mem=shared_mem)


_sm_count = {}


def sm_count():
    """Streaming multiprocessors on the current device (sizes grid-stride launches)."""
    cp = backend.cupy()
    dev = cp.cuda.Device().id
    if dev not in _sm_count:
        _sm_count[dev] = cp.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]
    return _sm_count[dev]


def like(dy, x):
    """dy as a C-contiguous array of x's dtype and shape (an incoming gradient may be a strided
    or broadcast view; the kernels read raw memory)."""
    dy = backend.cupy().ascontiguousarray(dy, dtype=x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"gradient of shape {dy.shape} does not match the saved array's {x.shape}")
    return dy


def rows(x, what):
    """(n_rows, C) of a contiguous array reduced over its last axis."""
    if x.ndim == 0:
        raise ValueError(f"{what}: needs at least one axis, got a 0-d array")
    C = x.shape[-1]
    n_rows = x.size // C if C else 0
    if n_rows >= 2**31 or C >= 2**31:
        raise ValueError(f"{what}: shape {x.shape} is too large for the kernel's int32 indexing")
    return n_rows, C


def row_threads(C, dtype):
    """Threads for one-block-per-row kernels: enough for one 16-byte pack each, 32..512."""
    packs = -(-C // PACK[np.dtype(dtype)])
    return max(32, min(512, -(-packs // 32) * 32))
