"""The GPU's random numbers (kernels/random.cu): Philox4x32-10, counter-based, so the generator's
whole state is (seed, counter) and a checkpoint can save and restore it exactly.

`DeviceGenerator` is what `backend.rng("cuda")` returns: `random(shape, dtype)` and
`standard_normal(shape, dtype)` like numpy.random.Generator's, each draw of n numbers taking
counters counter .. counter + n - 1. With the kernels on it launches philox_uniform / philox_normal;
with them off (or for a dtype the kernels do not take, such as bfloat16) it computes the same
numbers with array operations (philox_ref below), which is also the reference the kernels are
tested against.
"""
import numpy as np

from .. import backend
from . import runtime as rt

FILE = "random.cu"
rt.register(FILE, ("philox_uniform", "philox_normal"))
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox_ref(xp, counters, key0, key1):
    """Philox4x32-10 of the 64-bit counters (uint64 array): four uint32 word arrays."""
    u32 = np.uint32
    c0 = (counters & _MASK32).astype(u32)
    c1 = (counters >> np.uint64(32)).astype(u32)
    c2 = xp.zeros_like(c0)
    c3 = xp.zeros_like(c0)
    k0, k1 = int(key0), int(key1)
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        p0 = c0.astype(np.uint64) * np.uint64(_M0)
        p1 = c2.astype(np.uint64) * np.uint64(_M1)
        hi0, lo0 = (p0 >> np.uint64(32)).astype(u32), (p0 & np.uint64(_MASK32)).astype(u32)
        hi1, lo1 = (p1 >> np.uint64(32)).astype(u32), (p1 & np.uint64(_MASK32)).astype(u32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ u32(k0), lo1, hi0 ^ c3 ^ u32(k1), lo0
    return c0, c1, c2, c3


def _unit(dtype, w):
    """[0, 1) from the words, as the kernel takes them (float: 24 bits, double: 53)."""
    if dtype == np.float32:
        return (w[0] >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return (((w[0].astype(np.uint64) << np.uint64(21)) ^ (w[1] >> np.uint32(11)).astype(np.uint64))
            .astype(np.float64) * (1.0 / 9007199254740992.0))


def uniform_ref(xp, n, dtype, key0, key1, counter):
    counters = xp.arange(n, dtype=np.uint64) + np.uint64(counter)
    return _unit(np.dtype(dtype), philox_ref(xp, counters, key0, key1))


def normal_ref(xp, n, dtype, key0, key1, counter):
    dtype = np.dtype(dtype)
    w = philox_ref(xp, xp.arange(n, dtype=np.uint64) + np.uint64(counter), key0, key1)
    if dtype == np.float32:
        u1, u2 = 1 - _unit(dtype, w), _unit(dtype, (w[1],))
    else:
        u1, u2 = 1 - _unit(dtype, w), _unit(dtype, (w[2], w[3]))
    return (xp.sqrt(-2 * xp.log(u1)) * xp.cos(dtype.type(6.283185307179586) * u2)).astype(dtype)


class DeviceGenerator:
    """A seeded Philox stream on the GPU; state (seed, counter) is two integers."""

    def __init__(self, seed=0):
        self.seed, self.counter = int(seed), 0

    @property
    def keys(self):
        return self.seed & _MASK32, (self.seed >> 32) & _MASK32

    def get_state(self):
        return {"bit_generator": "philox4x32_10", "seed": self.seed, "counter": self.counter}

    def set_state(self, state):
        if state.get("bit_generator") != "philox4x32_10":
            raise ValueError(f"GPU generator state of an unknown kind: {state!r}")
        self.seed, self.counter = int(state["seed"]), int(state["counter"])

    def _draw(self, kind, shape, dtype):
        xp = backend.cupy()
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        counter, self.counter = self.counter, self.counter + n
        draw_dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)
        k0, k1 = self.keys
        if rt.enabled():
            out = rt.empty(n, draw_dtype)
            if n:
                grid = (max(1, min(-(-n // 256), rt.sm_count() * 16)),)
                rt.launch(FILE, f"philox_{kind}", draw_dtype, grid, (256,), out, np.int64(n),
                          np.uint32(k0), np.uint32(k1), np.uint64(counter))
        else:
            out = (uniform_ref if kind == "uniform" else normal_ref)(xp, n, draw_dtype, k0, k1, counter)
        return out.reshape(shape).astype(dtype, copy=False)

    def random(self, shape, dtype=np.float64):
        """Uniform in [0, 1), like numpy.random.Generator.random."""
        return self._draw("uniform", shape, dtype)

    def standard_normal(self, shape, dtype=np.float64):
        return self._draw("normal", shape, dtype)


backend.register_cuda_generator(DeviceGenerator)
