"""One kernel of the host emulator (tests/kernel_emulator.cpp) behind a CuPy RawKernel's call:
kernel(grid, block, args, shared_mem=...). The kernel tests put it where the glue looks up its
compiled functions, so the glue's real launch arguments reach the real kernel source."""
import ctypes
import re

import numpy as np

# the argument types a launch may carry: a bare Python int or float would be packed as 8 bytes
# by CuPy, which the kernel's parameter list rarely expects
_CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint64: ctypes.c_uint64,
           np.uint32: ctypes.c_uint32, np.float32: ctypes.c_float, np.float64: ctypes.c_double}


class EmulatedKernel:
    def __init__(self, fn, name):
        self.fn, self.name = fn, name  # fn: the emulator's exported emu_<kernel>_<type> entry

    def __call__(self, grid, block, args, shared_mem=0):
        cfg = (ctypes.c_int * 7)(*(tuple(grid) + (1,) * (3 - len(grid))),
                                 *(tuple(block) + (1,) * (3 - len(block))), shared_mem)
        vals = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{self.name}: non-contiguous array argument"
                vals.append(ctypes.c_void_p(a.ctypes.data))
            else:
                assert type(a) in _CTYPES, f"{self.name}: argument {a!r} of type {type(a).__name__}"
                vals.append(_CTYPES[type(a)](a))
        sizes = (ctypes.c_int * len(vals))(*(ctypes.sizeof(v) for v in vals))
        ptrs = (ctypes.c_void_p * len(vals))(*(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
                                               for v in vals))
        rc = self.fn(cfg, sizes, len(vals), ptrs)
        assert rc != -2, f"{self.name}: wrote past its {shared_mem} bytes of dynamic shared memory"
        assert rc != -1, f"{self.name}: {len(vals)} arguments, not the kernel's parameter count"
        assert rc == 0, f"{self.name}: argument {rc - 1}'s size differs from the kernel's parameter"


_TYPE_NAMES = {"float": "float", "double": "double", "tgl::bf16": "bf16"}


def emulated_attention(lib, name):
    """The emulator's build of one attention instantiation, by its C++ name:
    attention_forward<float, 64, 32> is emu_attention_forward_float_64_32 (prep has no tile size)."""
    stage, ctype, D, BN = re.fullmatch(r"attention_(\w+)<([\w:]+), (\d+)(?:, (\d+))?>", name).groups()
    symbol = f"emu_attention_{stage}_{_TYPE_NAMES[ctype]}_{D}" + (f"_{BN}" if BN else "")
    return EmulatedKernel(getattr(lib, symbol), name)
