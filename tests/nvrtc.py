"""NVRTC, the compiler CuPy's RawModule uses, called directly through ctypes (no GPU, no CuPy).

    lib = find_nvrtc()                       # None where no libnvrtc is installed
    ptx, names = compile_program(lib, source, options, name_expressions)

It compiles a source the way CuPy does (a program named after the file, the options, one
nvrtcAddNameExpression per template instantiation asked for) and returns the PTX (or the cubin
with `-arch=sm_XX`) and the lowered names. The tests use it to see which kernels a compile
actually builds (the `.entry` lines of the PTX) and how long it takes, on a machine with the
CUDA toolkit's NVRTC library but no GPU. Looked for: $TINYGRAD_LLM_NVRTC, then the nvidia-cuda-nvrtc
wheel, then the CUDA toolkit, then the loader's search path.
"""
import ctypes
import ctypes.util
import glob
import os
import sys
from pathlib import Path


def _candidates():
    if os.environ.get("TINYGRAD_LLM_NVRTC"):
        yield os.environ["TINYGRAD_LLM_NVRTC"]
    for base in sys.path:
        yield from sorted(glob.glob(os.path.join(base, "nvidia", "cu1*", "lib", "libnvrtc.so.*")))
        yield from sorted(glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    for root in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            yield from sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found


def find_nvrtc():
    """The NVRTC library as a ctypes CDLL, or None."""
    for path in _candidates():
        if "alt" in Path(path).name or "builtins" in Path(path).name:
            continue
        try:
            # NVRTC opens libnvrtc-builtins by name: loaded from beside it first, the loader finds it
            for builtins in sorted(Path(path).resolve().parent.glob("libnvrtc-builtins.so*")):
                if "alt" not in builtins.name:
                    ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    return None


def _check(lib, status, what, log=""):
    if status != 0:
        raise RuntimeError(f"NVRTC {what}: {lib.nvrtcGetErrorString(status).decode()}\n{log}")


def compile_program(lib, source, options, name_expressions, name="kernel.cu", cubin=False):
    """(PTX or cubin bytes, {name expression: lowered name}) of one NVRTC compile."""
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "create")
    try:
        for expr in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"name {expr}")
        opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        _check(lib, status, "compile", log.value.decode(errors="replace"))
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)), f"lowered {expr}")
            lowered[expr] = out.value.decode()
        get_size, get = (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize,
                                                                                  lib.nvrtcGetPTX)
        _check(lib, get_size(prog, ctypes.byref(size)), "output size")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, get(prog, buf), "output")
        return buf.raw, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def entries(ptx):
    """The mangled names of the kernels (`.entry` lines) in a PTX text."""
    text = ptx.decode(errors="replace") if isinstance(ptx, bytes) else ptx
    return [line.split(".entry", 1)[1].split("(")[0].strip() for line in text.splitlines()
            if ".entry" in line]
