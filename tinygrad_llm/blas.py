"""How many threads NumPy's BLAS uses, read and set at run time (OpenBLAS only).

Why we touch it: the sharded training step (parallel.py) runs one GEMM per core from several
Python threads at once, so each GEMM must stay on its own core. OpenBLAS left at N threads would
split every GEMM again and oversubscribe the cores; worse, between GEMMs its idle worker threads
spin for a long while (about 0.1 s), holding the cores that NumPy's elementwise work needs.

NumPy's wheels bundle OpenBLAS under a prefixed name (scipy_openblas64_), distributions ship
plain libopenblas; both are found among the loaded libraries. Other BLAS libraries (MKL, Apple's
Accelerate) are not touched: `available()` says False and callers keep to one thread of their own.
"""
import ctypes
import os
import threading

import numpy as np  # noqa: F401 - loads the BLAS that we look for below

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")
_GETTERS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads", "openblas_get_num_threads64_")
_api = None  # (get, set), or () when no OpenBLAS could be found
_lock = threading.Lock()


def _loaded_openblas_paths():
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:  # not Linux: look next to NumPy, where its wheels keep their libraries
        import glob
        base = os.path.dirname(os.path.dirname(np.__file__))
        paths = set(glob.glob(os.path.join(base, "numpy*libs", "*openblas*")))
    # NumPy's own copy first: another library (PyTorch on some platforms) may load an OpenBLAS too
    return sorted((p for p in paths if os.path.exists(p)), key=lambda p: ("numpy" not in p, p))


def _find():
    global _api
    if _api is None:
        found = ()
        for path in _loaded_openblas_paths():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
            set_ = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                found = (get, set_)
                break
        _api = found
    return _api


def available():
    """True when NumPy's BLAS is an OpenBLAS whose thread count we can set."""
    return bool(_find())


def get_threads():
    """Threads NumPy's BLAS uses for one call; None when unknown (not OpenBLAS)."""
    api = _find()
    return api[0]() if api else None


def set_threads(n):
    """Let NumPy's BLAS use n threads per call; returns the previous count (None: not OpenBLAS)."""
    if n < 1:
        raise ValueError(f"blas.set_threads: need at least one thread, got {n}")
    api = _find()
    if not api:
        return None
    with _lock:
        prev = api[0]()
        api[1](int(n))
    return prev


class threads:
    """Context manager: NumPy's BLAS uses n threads inside, what it used before afterwards.

        with blas.threads(1):
            ...
    """

    def __init__(self, n):
        self.n, self.prev = n, None

    def __enter__(self):
        self.prev = set_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            set_threads(self.prev)
