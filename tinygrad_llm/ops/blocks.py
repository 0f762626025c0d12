"""Run a row-wise NumPy function over blocks of rows that fit in a core's cache, on a few threads.

A chain of NumPy passes over a big array streams it through memory once per pass, and each
fresh temporary costs page faults. Cut into blocks of about BLOCK_ELEMENTS elements, the same
chain runs on data and temporaries that stay in L2, and the blocks can go to several threads
(NumPy releases the GIL inside its loops). The function itself is unchanged: the plain xp
reference of an op is what runs on each block. CuPy arrays are passed through whole.

    out = by_blocks(fn, x, dy)          # fn(x_block, dy_block) -> array or tuple of arrays
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_ELEMENTS = 1 << 16  # 256 KiB of float32 per array: a block and its temporaries fit in L2
THREADS = max(1, int(os.environ.get("TINYGRAD_LLM_THREADS", min(os.cpu_count() or 1, 4))))
_pool = None


def _get_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=THREADS - 1, thread_name_prefix="tinygrad_llm")
    return _pool


def by_blocks(fn, *arrays, threads=None):
    """fn(*blocks) over matching blocks of rows (axis 0) of every array, results stacked back.

    All arrays share their first axis; each result of fn has a first axis of the block's length.
    Small arrays, and arrays that are not NumPy's, go through fn in one call.
    """
    first = arrays[0]
    n = first.shape[0] if first.ndim else 0
    row = max(1, first.size // max(n, 1))
    step = max(1, BLOCK_ELEMENTS // row)
    if not isinstance(first, np.ndarray) or n <= step:
        return fn(*arrays)
    starts = list(range(0, n, step))
    head = fn(*(a[:step] for a in arrays))  # the first block tells the result shapes and dtypes
    single = not isinstance(head, tuple)
    head = (head,) if single else head
    outs = tuple(np.empty((n,) + h.shape[1:], dtype=h.dtype) for h in head)
    for o, h in zip(outs, head):
        o[:step] = h

    def run(lo_starts):
        for lo in lo_starts:
            res = fn(*(a[lo:lo + step] for a in arrays))
            for o, r in zip(outs, (res,) if single else res):
                o[lo:lo + step] = r

    rest = starts[1:]
    k = min(THREADS if threads is None else threads, len(rest))
    if k <= 1:
        run(rest)
    else:
        parts = [rest[i * len(rest) // k:(i + 1) * len(rest) // k] for i in range(k)]
        futures = [_get_pool().submit(run, p) for p in parts[1:]]
        run(parts[0])
        for f in futures:
            f.result()
    return outs[0] if single else outs
