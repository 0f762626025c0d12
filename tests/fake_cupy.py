"""A stand-in for CuPy on the CPU that counts where a real GPU would wait for the device.

`FakeCupy()` acts as the `cupy` module for tinygrad_llm: its arrays (`FakeArray`, a NumPy array
subclass) are what the package takes for CUDA arrays, and every NumPy function reached through the
module returns them. Each conversion that CuPy implements with a device-to-host copy (`get`,
`item`, `tolist`, `float()`, `int()`, `bool()`, `operator.index`) calls
`module._core.syncdetect._declare_synchronize()`, the same hook real CuPy calls at each of its
synchronising copies, so the package's sync counter (tinygrad_llm/cuda/syncs.py) counts the same
places on the CPU as on a GPU. Like CuPy, out-of-range integer indices wrap instead of raising.

Devices: `FakeCupy(devices=[props, ...])` has one fake GPU per dict of device properties (the
keys of `cupy.cuda.runtime.getDeviceProperties`: name, major, minor, sharedMemPerBlockOptin);
`cuda.Device(i).use()` or `with cuda.Device(i):` makes one current. Kernels: `RawModule` records
what each compile is asked for (`fake.modules`: the name_expressions of each); its functions
launch `kernels(name)` when a kernel source is given (the host emulator), and refuse, like the
driver, a launch asking for more dynamic shared memory than the device allows or than the
function was opted in to on the current device (`max_dynamic_shared_size_bytes`, per device as in
CuPy). Without `kernels`, use it with the kernels switched off.
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
H100 = dict(name=b"NVIDIA H100 80GB HBM3", major=9, minor=0, sharedMemPerBlockOptin=232448)
DEFAULT_SMEM = 48 * 1024  # what a launch may use without opting in


class FakeDevice:
    def __init__(self, fake, id):
        self.fake, self.id, self._previous = fake, id, []

    @property
    def compute_capability(self):
        props = self.fake.device_properties[self.id]
        return f"{props['major']}{props['minor']}"

    def use(self):
        self.fake.current_device = self.id

    def synchronize(self):
        self.fake._core.syncdetect._declare_synchronize()

    def __enter__(self):
        self._previous.append(self.fake.current_device)
        self.use()
        return self

    def __exit__(self, *exc):
        self.fake.current_device = self._previous.pop()


class FakeFunction:
    """A compiled kernel: checks the launch's shared memory against the current device."""

    def __init__(self, fake, name, run):
        self.fake, self.name, self.run = fake, name, run
        self._opt_in = {}  # device id -> bytes
        self.launches = []  # (device id, shared_mem)

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._opt_in.get(self.fake.current_device, DEFAULT_SMEM)

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, nbytes):
        limit = self.fake.device_properties[self.fake.current_device]["sharedMemPerBlockOptin"]
        if nbytes > limit:
            raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: {self.name}: {nbytes} bytes of shared "
                               f"memory, the device allows {limit}")
        self._opt_in[self.fake.current_device] = nbytes

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: {self.name} launched with {shared_mem} "
                               f"bytes of shared memory on device {self.fake.current_device}, opted "
                               f"in to {self.max_dynamic_shared_size_bytes}")
        self.launches.append((self.fake.current_device, shared_mem))
        if self.run is None:
            raise RuntimeError(f"{self.name}: this FakeCupy was given no kernels to run")
        self.run(grid, block, args, shared_mem=shared_mem)


class FakeCupy(types.ModuleType):
    """The module object: numpy's namespace with device arrays out, plus what the package asks of
    cupy itself (ndarray, cuda, _core.syncdetect, RawModule)."""

    ndarray = FakeArray

    def __init__(self, devices=None, kernels=None, version="14.2.0"):
        super().__init__("fake_cupy")
        self.__version__ = version
        syncdetect = types.SimpleNamespace(_declare_synchronize=lambda: None)
        self._core = types.SimpleNamespace(syncdetect=syncdetect)
        self.device_properties = [dict(p) for p in (devices or [H100])]
        self.current_device = 0
        self.kernels = kernels
        self.modules = []  # the name_expressions of each RawModule made
        runtime = types.SimpleNamespace(
            getDeviceProperties=lambda i: dict(self.device_properties[i]),
            getDeviceCount=lambda: len(self.device_properties),
            getDevice=lambda: self.current_device)
        self.cuda = types.SimpleNamespace(
            Device=lambda i=None: FakeDevice(self, self.current_device if i is None else i),
            runtime=runtime)
        _MODULES.append(self)

    def RawModule(self, code, options=(), name_expressions=()):
        fake, names = self, tuple(name_expressions)
        self.modules.append(names)

        class Module:
            def get_function(self, name):
                if name not in names:
                    raise KeyError(f"{name} was not named in name_expressions {names}")
                return FakeFunction(fake, name, fake.kernels(name) if fake.kernels else None)
        return Module()

    def take(self, a, indices, axis=None, out=None, mode="wrap"):
        return _to_device(np.take(np.asarray(a), np.asarray(indices), axis=axis, out=out, mode=mode))

    def asnumpy(self, a):
        return a.get() if isinstance(a, FakeArray) else np.asarray(a)

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, np.ufunc) or not callable(attr) or isinstance(attr, type):
            return attr  # ufuncs keep the subclass through __array_wrap__
        return _wrap(attr)
