"""A stand-in for CuPy on the CPU that counts where a real GPU would wait for the device.

`FakeCupy()` acts as the `cupy` module for tinygrad_llm: its arrays (`FakeArray`, a NumPy array
subclass) are what the package takes for CUDA arrays, and every NumPy function reached through the
module returns them. Each conversion that CuPy implements with a device-to-host copy (`get`,
`item`, `tolist`, `float()`, `int()`, `bool()`, `operator.index`) calls
`module._core.syncdetect._declare_synchronize()`, the same hook real CuPy calls at each of its
synchronising copies, so the package's sync counter (tinygrad_llm/cuda/syncs.py) counts the same
places on the CPU as on a GPU. Like CuPy, out-of-range integer indices wrap instead of raising.
Kernels are not emulated here: use it with the kernels switched off.
"""
import types

import numpy as np


class FakeArray(np.ndarray):
    """A "device" array: NumPy underneath, reads back to the host declared as syncs."""

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        # CuPy returns 0-d arrays, never NumPy scalars: keep every result on the "device"
        return np.asarray(obj).view(FakeArray)

    def _wrap_index(self, index):
        """CuPy wraps out-of-range integer-array indices instead of raising (as take does)."""
        parts = index if isinstance(index, tuple) else (index,)
        if not all(p is not Ellipsis and p is not None for p in parts):
            return index
        return tuple(np.asarray(p) % self.shape[k] if isinstance(p, np.ndarray) and p.dtype.kind in "iu"
                     and self.shape[k] else p for k, p in enumerate(parts))

    def __setitem__(self, index, value):
        super().__setitem__(self._wrap_index(index), value)

    def __getitem__(self, index):
        out = super().__getitem__(self._wrap_index(index))
        return np.asarray(out).view(FakeArray) if isinstance(out, np.generic) else out

    def _sync(self):
        _MODULES[-1]._core.syncdetect._declare_synchronize()

    def get(self, *args, **kwargs):
        self._sync()
        return np.array(self.view(np.ndarray))

    def item(self, *args):
        self._sync()
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        self._sync()
        return self.view(np.ndarray).tolist()

    def __float__(self):
        self._sync()
        return float(self.view(np.ndarray))

    def __int__(self):
        self._sync()
        return int(self.view(np.ndarray))

    def __index__(self):
        self._sync()
        return self.view(np.ndarray).__index__()

    def __bool__(self):
        self._sync()
        return bool(self.view(np.ndarray))


def _to_device(x):
    if isinstance(x, FakeArray):
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x).view(FakeArray)
    if isinstance(x, tuple):
        return tuple(_to_device(v) for v in x)
    if isinstance(x, list) and x and all(isinstance(v, np.ndarray) for v in x):
        return [_to_device(v) for v in x]
    return x


def _wrap(fn):
    def call(*args, **kwargs):
        return _to_device(fn(*args, **kwargs))
    call.__name__ = getattr(fn, "__name__", "fn")
    return call


_MODULES = []


class FakeCupy(types.ModuleType):
    """The module object: numpy's namespace with device arrays out, plus what the package asks of
    cupy itself (ndarray, cuda, _core.syncdetect)."""

    ndarray = FakeArray

    def __init__(self):
        super().__init__("fake_cupy")
        syncdetect = types.SimpleNamespace(_declare_synchronize=lambda: None)
        self._core = types.SimpleNamespace(syncdetect=syncdetect)
        device = types.SimpleNamespace(id=0, synchronize=lambda: syncdetect._declare_synchronize())
        self.cuda = types.SimpleNamespace(Device=lambda *a: device)
        _MODULES.append(self)

    def take(self, a, indices, axis=None, out=None, mode="wrap"):
        return _to_device(np.take(np.asarray(a), np.asarray(indices), axis=axis, out=out, mode=mode))

    def asnumpy(self, a):
        return a.get() if isinstance(a, FakeArray) else np.asarray(a)

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, np.ufunc) or not callable(attr) or isinstance(attr, type):
            return attr  # ufuncs keep the subclass through __array_wrap__
        return _wrap(attr)
