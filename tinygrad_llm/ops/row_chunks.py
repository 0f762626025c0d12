"""Run a row-wise NumPy function over chunks of rows that fit in a core's cache, on a few threads.

A chain of NumPy passes over a big array streams it through memory once per pass, and each
fresh temporary costs page faults. Cut into row chunks of about CHUNK_ELEMENTS elements, the
same chain runs on data and temporaries that stay in L2, and the chunks can go to several
threads (NumPy releases the GIL inside its loops). The function itself is unchanged: an op's
*_cpu function is what runs on each chunk. CuPy arrays are passed through whole.
("Chunk", not "block": a block is a transformer Block, and a CUDA thread block in the kernels.)

    out = by_row_chunks(fn, x, dy)          # fn(x_chunk, dy_chunk) -> array or tuple of arrays
    out = by_row_chunks(fn, x, inplace=True)  # fn(x_chunk, out=...) writes into the result's rows

With inplace=True, fn takes out= (its result arrays' rows for this chunk, or None for the first
chunk, which tells the result shapes) and writes there, so no chunk is copied into the result.
"""
import os
import threading

import numpy as np

from .. import backend

# 2 MiB of float32 per array: a chunk and its temporaries stay in L2/L3. Not smaller: an fn
# without out= has its results copied into the stacked output, one pass more, which arrays that
# fit in cache whole do not repay (GPT step, small config: 61.3/60.0 ms at 1 << 18 vs 59.9/58.5 ms
# at 1 << 19). With out= (GELU, layer and RMS norm) nothing is copied: sharded GPT step, 6 layers
# x 384, T=256: 1249 ms in chunks of 1 << 19, 1256 ms at 1 << 17, 1262 ms in one piece.
CHUNK_ELEMENTS = 1 << 19
# One thread unless told otherwise (TINYGRAD_LLM_THREADS=2): on a dedicated machine a second thread
# nearly doubles elementwise throughput, but on a shared, loaded one the GIL hand-offs between
# NumPy calls cost more than the second core gives (measured: benchmarks/ops_cpu.py).
THREADS = max(1, int(os.environ.get("TINYGRAD_LLM_THREADS", "1")))


def _get_pool():
    return backend.thread_pool("row_chunks", max(2, os.cpu_count() or 1))


def by_row_chunks(fn, *arrays, threads=None, inplace=False):
    """fn(*chunks) over matching chunks of rows (axis 0) of every array, results stacked back.

    All arrays share their first axis; each result of fn has a first axis of the chunk's length.
    Small arrays, and arrays that are not NumPy's, go through fn in one call. inplace: fn accepts
    out= (see the module docstring) and the chunks after the first write straight into the result.
    """
    first = arrays[0]
    n = first.shape[0] if first.ndim else 0
    row = max(1, first.size // max(n, 1))
    step = max(1, CHUNK_ELEMENTS // row)
    if not isinstance(first, np.ndarray) or n <= step:
        return fn(*arrays)
    starts = list(range(0, n, step))
    head = fn(*(a[:step] for a in arrays))  # the first chunk tells the result shapes and dtypes
    single = not isinstance(head, tuple)
    head = (head,) if single else head
    outs = tuple(np.empty((n,) + h.shape[1:], dtype=h.dtype) for h in head)
    for o, h in zip(outs, head):
        o[:step] = h

    def work(lo):
        if inplace:
            rows = tuple(o[lo:lo + step] for o in outs)
            fn(*(a[lo:lo + step] for a in arrays), out=rows[0] if single else rows)
            return
        res = fn(*(a[lo:lo + step] for a in arrays))
        for o, r in zip(outs, (res,) if single else res):
            o[lo:lo + step] = r

    rest = starts[1:]
    k = min(THREADS if threads is None else threads, len(rest))
    if k <= 1:
        for lo in rest:
            work(lo)
        return outs[0] if single else outs
    _share(work, rest, k - 1)
    return outs[0] if single else outs


def _share(work, items, helpers):
    """work(item) for every item, on this thread and up to `helpers` pool threads.

    The caller takes items itself and never waits for a helper that has not started: on a busy
    machine a helper may get no core for milliseconds, and then the caller simply does its share.
    """
    it = iter(items)
    lock = threading.Lock()
    state = {"closed": False, "active": 0, "error": None}
    idle = threading.Condition(lock)

    def helper():
        with lock:
            if state["closed"]:
                return
            state["active"] += 1
        try:
            for item in it:
                work(item)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            state["error"] = e
        finally:
            with lock:
                state["active"] -= 1
                idle.notify_all()

    pool = _get_pool()
    for _ in range(helpers):
        pool.submit(helper)
    try:
        for item in it:  # list iterators hand out each item once, even across threads
            work(item)
    finally:
        with lock:
            state["closed"] = True
            while state["active"]:
                idle.wait()
    if state["error"] is not None:
        raise state["error"]
