"""Devices, array modules, dtypes and the seeded random number generator.

Two devices exist: "cpu" runs on NumPy, "cuda" on CuPy. Every op reaches its array library
through `array_module(x)` (Chainer's `get_array_module`), so one code path serves both. CuPy is
imported only when a CUDA tensor is first asked for: the package imports and runs where CuPy is
absent.

The default device is "cpu", or what the environment variable TINYGRAD_LLM_DEVICE says.
"""
import os
import threading

import numpy as np

DEVICES = ("cpu", "cuda")
default_dtype = np.float32
_cupy = None  # the cupy module, once imported


_memory_choice = None  # None until keep_freed_memory runs (the first backward pass asks for it)
_memory_tuned = False  # whether this process's mallopt settings are ours


def keep_freed_memory(keep=True):
    """Let glibc's malloc keep freed arrays in the process instead of handing them back to the OS.

    By default an array above 128 KiB is mmapped and unmapped on free, and a freed heap top above
    128 KiB is trimmed: every fresh temporary of a training step then costs a page fault per 4 KiB
    touched, often more than the arithmetic on it (benchmarks/results/plain_loop_2026-12-02.txt).
    Arrays up to 32 MiB (glibc's largest threshold) now come from the heap and stay mapped once
    touched; the resident size stays at the step's peak.

    A process-wide setting, so importing the library never makes it: the first backward pass
    does (autograd.backward calls `tune_memory_on_first_backward`), so a loop of your own gets it
    as the trainer does. Call `keep_freed_memory(False)` before it, or set
    TINYGRAD_LLM_KEEP_MEMORY=0 (or glibc's own MALLOC_*_ variables), to leave malloc as it is;
    keep_freed_memory(False) after it puts glibc's defaults back. A no-op where malloc is not
    glibc's. Returns True when malloc was tuned.
    """
    global _memory_choice, _memory_tuned
    _memory_choice = bool(keep)
    if not keep and not _memory_tuned:  # nothing of ours to undo: malloc stays as it is
        return False
    if keep and os.environ.get("TINYGRAD_LLM_KEEP_MEMORY", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    if not keep:  # glibc's documented defaults (fixed from here on: no dynamic thresholds)
        mallopt(M_MMAP_THRESHOLD, 128 << 10)
        mallopt(M_TRIM_THRESHOLD, 128 << 10)
        mallopt(M_TOP_PAD, 128 << 10)
        _memory_tuned = False
        return False
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_TOP_PAD, 64 << 20)  # grow the heap in big steps: fewer brk calls while it fills
    _memory_tuned = True
    return True


def tune_memory_on_first_backward():
    """autograd.backward's first call: keep_freed_memory() unless the program already chose."""
    if _memory_choice is None:
        keep_freed_memory()


class DeviceError(RuntimeError):
    """A device is unknown, unavailable, or two devices were mixed in one op."""


def cupy_distributions():
    """The installed CuPy distributions (cupy-cuda12x, cupy-cuda13x, cupy, ...): two of them
    install over each other's files, and the CuPy that imports is then a mix of both."""
    from importlib import metadata
    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    return sorted(n for n in names if n == "cupy" or n.startswith("cupy-cuda") or n.startswith("cupy-rocm"))


def cupy():
    """Import CuPy on first use, with an error that says what to install when it is missing."""
    global _cupy
    if _cupy is None:
        dists = cupy_distributions()
        if len(dists) > 1:
            raise DeviceError(f"device 'cuda': several CuPy packages are installed ({', '.join(dists)}); "
                              "they overwrite each other's files: pip uninstall all but the one "
                              "matching the driver's CUDA version")
        try:
            import cupy as cp
        except ImportError as e:
            raise DeviceError(
                "device 'cuda' needs CuPy: pip install 'tinygrad-llm[cuda12]' (or [cuda13], by the "
                f"driver's CUDA version) on a machine with an NVIDIA GPU ({e})") from None
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # noqa: BLE001 - CuPy raises its own CUDA error types
            raise DeviceError(f"device 'cuda': CuPy is installed but no GPU answered ({e})") from None
        if count == 0:
            raise DeviceError("device 'cuda': CuPy is installed but sees no GPU")
        _cupy = cp
        _apply_tf32()
    return _cupy


# --- TF32 ---------------------------------------------------------------------------------------
# float32 matmuls on the GPU use TF32 tensor cores by default (10-bit mantissa products, float32
# accumulation: several times the float32 GEMM rate on Ampere and later). CuPy's own switch is
# the CUPY_TF32 environment variable, read once when the first float32 matmul runs; the
# per-dtype compute type below is the same setting made at run time, so it can be turned off
# and on again. TINYGRAD_LLM_TF32=0 in the environment starts with it off.
_tf32 = os.environ.get("TINYGRAD_LLM_TF32", "1") != "0"
_COMPUTE_TYPE_DEFAULT, _COMPUTE_TYPE_TF32 = 1, 7  # CuPy's COMPUTE_TYPE_* enum values


def set_tf32(enabled):
    """Allow (True) or forbid (False) TF32 tensor cores for float32 matmuls on the GPU."""
    global _tf32
    _tf32 = bool(enabled)
    if _cupy is not None:
        _apply_tf32()


def tf32_enabled():
    return _tf32


def _apply_tf32():
    import importlib
    import warnings

    for name in ("cupy._core._routines_linalg", "cupy._core._gpu._routines_linalg"):
        try:
            linalg = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(linalg, "set_compute_type"):
            break
    else:
        return  # a CuPy without the switch: its default (CUPY_TF32) stands
    kind = (getattr(linalg, "COMPUTE_TYPE_TF32", _COMPUTE_TYPE_TF32) if _tf32 else
            getattr(linalg, "COMPUTE_TYPE_DEFAULT", _COMPUTE_TYPE_DEFAULT))
    with warnings.catch_warnings():  # GPUs before compute capability 8.0 fall back to float32
        warnings.simplefilter("ignore")
        linalg.set_compute_type(np.float32, kind)


def cuda_available():
    """True when CuPy imports and sees at least one GPU."""
    try:
        cupy()
        return True
    except DeviceError:
        return False


def check_device(device):
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; expected one of {DEVICES}")
    return device


def default_device():
    return check_device(os.environ.get("TINYGRAD_LLM_DEVICE", "cpu"))


def xp_of(device):
    """The array module for a device name: numpy for "cpu", cupy for "cuda"."""
    return np if device == "cpu" else cupy()


def array_module(x):
    """numpy or cupy, whichever owns array x (numpy for anything that is not a cupy array)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def device_of(x):
    return "cuda" if (_cupy is not None and isinstance(x, _cupy.ndarray)) else "cpu"


def to_device(x, device):
    """Copy array x to device (a no-op when it is already there)."""
    if device_of(x) == device:
        return x
    if device == "cpu":
        return x.get()
    return cupy().asarray(x)


def to_numpy(x):
    return x.get() if device_of(x) == "cuda" else x


# --- thread pools -------------------------------------------------------------------------------
_pools = {}  # name -> (pid, workers, ThreadPoolExecutor)
_pools_lock = threading.Lock()


def thread_pool(name, workers, initializer=None):
    """A ThreadPoolExecutor kept per name, with at least `workers` threads, made on first use.

    Fork-safe: a child of fork inherits the executor object but not its threads (a task submitted
    there would wait forever), so a pool made by another process is replaced, not reused.
    """
    from concurrent.futures import ThreadPoolExecutor
    with _pools_lock:
        pid, size, pool = _pools.get(name, (None, 0, None))
        if pool is None or size < workers or pid != os.getpid():
            if pool is not None and pid == os.getpid():
                pool.shutdown(wait=True)
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"tinygrad_llm-{name}",
                                      initializer=initializer)
            _pools[name] = (os.getpid(), workers, pool)
        return pool


# --- random numbers -----------------------------------------------------------------------------
# One seeded generator per device. Initialisation, data order and dropout draw from these, so
# `manual_seed` makes a run repeatable and `get_rng_state`/`set_rng_state` let a checkpoint resume
# exactly where the run left off.
_rng = {"cpu": np.random.Generator(np.random.PCG64(0))}


def manual_seed(seed):
    """Seed every device's generator (like torch.manual_seed)."""
    seed = int(seed)
    _rng["cpu"] = np.random.Generator(np.random.PCG64(seed))
    _rng.pop("cuda", None)  # made on first use, without importing CuPy here
    _cuda_seed[0] = seed


_cuda_seed = [0]
_cuda_generator = [None]  # the GPU generator's class, registered by cuda/random.py


def register_cuda_generator(cls):
    """Set the class backend.rng("cuda") makes: cls(seed) with random, standard_normal,
    get_state and set_state (cuda/random.py registers its Philox stream when imported)."""
    _cuda_generator[0] = cls


_thread_rng = threading.local()  # .cpu: a generator this thread draws from instead (set_thread_rng)


def set_thread_rng(generator):
    """Make the calling thread draw its CPU random numbers from generator (None: the shared one).

    A thread that runs one shard of a sharded step (parallel.py) gets a generator of its own,
    seeded from the main one before the shards start, so the numbers do not depend on the order
    the threads happen to run in.
    """
    _thread_rng.cpu = generator


def rng(device="cpu"):
    """The generator that draws on `device` (numpy.random.Generator or its CuPy twin).

    A thread that runs one shard of a sharded step has a CPU generator of its own (seeded from
    the main one before the shards start): shards then draw the same numbers whatever order the
    threads happen to run in.
    """
    if device == "cpu":
        own = getattr(_thread_rng, "cpu", None)
        if own is not None:
            return own
    if device not in _rng:
        # a Philox stream whose state is two integers (a checkpoint saves it: cuda/random.py)
        if _cuda_generator[0] is None:
            raise DeviceError("no GPU generator registered: import tinygrad_llm (its cuda package "
                              "registers one)")
        _rng[device] = _cuda_generator[0](_cuda_seed[0])
    return _rng[device]


def get_rng_state():
    """The CPU generator's state as a JSON-serialisable dict (for checkpoints)."""
    return _rng["cpu"].bit_generator.state


def set_rng_state(state):
    bitgen = np.random.PCG64()
    bitgen.state = state
    _rng["cpu"] = np.random.Generator(bitgen)


def get_cuda_rng_state():
    """The GPU generator's state (seed and counter, JSON-serialisable), for checkpoints."""
    return rng("cuda").get_state()


def set_cuda_rng_state(state):
    rng("cuda").set_state(state)


# --- dtypes -----------------------------------------------------------------------------------
def is_float(dtype):
    """Floating point, bfloat16 included (ml_dtypes' bfloat16 has NumPy kind "V")."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name == "bfloat16"


def resolve_dtype(dtype):
    """np.dtype for a user dtype (None -> the default, float32)."""
    return np.dtype(default_dtype if dtype is None else dtype)
