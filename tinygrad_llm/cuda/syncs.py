"""Host synchronisations on the GPU: where a step waits for the device, and how it avoids it.

A GPU step is a queue of kernel launches the host runs ahead of; any read of a device value on the
host (`float(x)`, `x.item()`, `bool(x.any())`, `int(x.max())`) waits for the queue to drain and
leaves the GPU idle while Python catches up. The training step reads nothing: value checks on
device arrays (token ids, targets) become device flags, queued while `deferred_checks()` is active
and read, all in one transfer with the loss, by `read()` when the loss is logged.

`counting()` counts the syncs CuPy declares (CuPy calls `_core.syncdetect._declare_synchronize`
at each of its synchronising copies) by the file:line in tinygrad_llm that caused them;
`python -m tinygrad_llm bench --device cuda` prints them per step.
"""
import collections
import contextlib
import sys
from pathlib import Path

import numpy as np

from .. import backend

_PACKAGE = str(Path(__file__).resolve().parents[1])
_HERE = str(Path(__file__).resolve())


# --- counting --------------------------------------------------------------------------------------
class SyncCount:
    """Syncs seen while counting, by the place in tinygrad_llm that caused them."""

    def __init__(self):
        self.places = collections.Counter()

    @property
    def total(self):
        return sum(self.places.values())

    def lines(self):
        return [f"{n:5d}  {where}" for where, n in self.places.most_common()]


def _place():
    """file:line (function) of the innermost tinygrad_llm frame outside this module."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith(_PACKAGE) and fn != _HERE:
            rel = Path(fn).relative_to(Path(_PACKAGE).parent).as_posix()
            return f"{rel}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "(outside tinygrad_llm)"


@contextlib.contextmanager
def counting(cp=None):
    """Count the host syncs inside the block: `with counting() as c: ...; c.total, c.places`."""
    cp = cp or backend.cupy()
    detect = getattr(getattr(cp, "_core", None), "syncdetect", None)
    if detect is None:  # a CuPy whose _core package has not bound the submodule as an attribute
        import importlib
        detect = importlib.import_module(f"{cp.__name__}._core.syncdetect")
    original = detect._declare_synchronize
    count = SyncCount()

    def declare():
        count.places[_place()] += 1
        return original()
    detect._declare_synchronize = declare
    try:
        yield count
    finally:
        detect._declare_synchronize = original


# --- deferred checks -------------------------------------------------------------------------------
_deferring = 0  # depth of deferred_checks() blocks
_queue = []  # (device flag, describe) waiting for the next read()
MAX_QUEUED = 4096  # past this many a check reads the queue at once (a caller that never reads)


def _on_device(a):
    return backend.device_of(a) == "cuda"


def check(bad, describe):
    """Raise ValueError(describe()) when the flag `bad` (a 0-d bool array) is set.

    A host flag is checked at once. A device flag is queued while a `deferred_checks()` block is
    active and raised by the next `read()` (or `flush()`), else read at once (a sync).
    describe() builds the message; it may read device arrays (it runs only on the error path).
    """
    if _deferring and _on_device(bad):
        _queue.append((bad, describe))
        if len(_queue) >= MAX_QUEUED:
            flush()
    elif bool(bad):
        raise ValueError(describe())


@contextlib.contextmanager
def deferred_checks():
    """Queue the device checks made inside the block instead of reading each one at once; they
    stay queued after it, for the next read() or flush()."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def _take():
    queued = list(_queue)
    _queue.clear()
    return queued


def _raise_set(queued, flags):
    for (_, describe), bad in zip(queued, flags):
        if bad:
            raise ValueError(describe())


def flush():
    """Read every queued check (one transfer) and raise the first one whose flag is set."""
    queued = _take()
    if queued:
        xp = backend.array_module(queued[0][0])
        _raise_set(queued, xp.stack([xp.asarray(f).reshape(()) for f, _ in queued]).get())


def out_of_range(ids, n):
    """The id in ids furthest outside [0, n) (the smallest if any is negative, else the largest),
    for an error message: it reads ids on the host, so call it only on the error path."""
    lo = int(ids.min())
    return lo if lo < 0 else int(ids.max())


def read(value):
    """A device scalar as a Python float (a host value passes through), with every queued check
    read in the same transfer and raised if its flag is set: one host sync for all of them."""
    if not _on_device(value):
        flush()
        return float(value)
    xp = backend.array_module(value)
    queued = _take()
    parts = [xp.asarray(value, dtype=np.float64).reshape(1)]
    parts += [xp.asarray(f, dtype=np.float64).reshape(1) for f, _ in queued]
    host = (xp.concatenate(parts) if len(parts) > 1 else parts[0]).get()
    _raise_set(queued, host[1:])
    return float(host[0])
