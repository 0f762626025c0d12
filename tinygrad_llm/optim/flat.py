"""Flat parameter buckets: every parameter of a group packed in one contiguous array.

Why: an optimizer step over hundreds of small arrays is hundreds of ufunc calls per formula
line, each one pass over memory. With one flat buffer per group, an AdamW step is a handful of
in-place ufuncs, run chunk by chunk (so the few arrays a chunk touches stay in cache: each byte
of state crosses memory once per step, not once per ufunc) and split across a small thread pool
(NumPy releases the GIL inside ufuncs).

How it stays invisible: building a bucket copies each parameter's values into the flat array and
rebinds `p.data` to a view of it (same shape, dtype and device; the Parameter object is the same).
Anything that writes *into* `p.data` (load_state_dict, init functions, `p.data[...] = x`) writes
into the buffer. Anything that *rebinds* `p.data` (Module.to(device), `p.data = new_array`) is
noticed at the next step: the bucket copies the new values back in, or is rebuilt on the new
device/dtype with the optimizer state carried over. Gradients: `Optimizer.zero_grad()` zeroes the
flat gradient and hands each parameter a view of it as `.grad`, so backward accumulates straight
into the buffer; a `.grad` that is some other array (after `model.zero_grad()`, say) is copied in
at step time, and a parameter with no gradient takes part with a zero gradient.
"""
import os

import numpy as np

from .. import backend
from ..tensor import Tensor

# Elements per chunk: 256K float32 = 1 MiB per array, so the arrays one AdamW chunk touches stay
# in L2/L3 while the chunks are few enough that the two threads rarely wait on each other for
# the GIL between ufuncs. AdamW step on a quiet 2-core machine, OpenBLAS idle: 10.7M parameters
# (6 layers x 384) 15.8 ms at 256K vs 18.5 ms at 64K and 18.0 ms at 1M; 0.8M parameters (nanoGPT's
# CPU model) 1.04 ms on two threads vs 1.45 ms inline, whole-array.
CHUNK = 1 << 18
# Buckets smaller than this run inline, whole-array: their state fits in L2 anyway.
MIN_PARALLEL = 1 << 18
THREADS = max(1, min(int(os.environ.get("TINYGRAD_LLM_OPTIM_THREADS", "2")), os.cpu_count() or 1))


def _get_pool():
    return backend.thread_pool("optim", THREADS)


class FlatBucket:
    """Parameters of one group that share a device and a dtype, packed in one flat array.

    data, grad   flat arrays (n,); params' .data are views into data
    views        per parameter: its view into data (identity tells us whether it was rebound)
    state        name -> flat array (n,) of optimizer state (exp_avg, momentum_buffer, ...)
    step         number of updates applied so far
    """

    def __init__(self, params, state_names=()):
        self.params = list(params)
        first = self.params[0].data
        self.xp, self.dtype, self.device = backend.array_module(first), first.dtype, backend.device_of(first)
        self.sizes = [p.size for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.n = self.offsets[-1]
        xp = self.xp
        self.data = xp.empty(self.n, dtype=self.dtype)
        self.grad = xp.zeros(self.n, dtype=self.dtype)
        self.views, self.grad_views = [], []
        for p, lo, hi in zip(self.params, self.offsets, self.offsets[1:]):
            self.data[lo:hi] = p.data.reshape(-1)
            p.data = self.data[lo:hi].reshape(p.shape)
            self.views.append(p.data)
            self.grad_views.append(self.grad[lo:hi].reshape(p.shape))
        self.state = {name: xp.zeros(self.n, dtype=self.dtype) for name in state_names}
        self.step = 0
        self._scratch = {}

    def slices(self):
        return zip(self.params, self.offsets, self.offsets[1:])

    def needs_rebuild(self):
        """True when a parameter moved to another device or dtype (the bucket must be rebuilt);
        values merely rebound on the same device/dtype are copied back in here."""
        for i, p in enumerate(self.params):
            if p.data is self.views[i]:
                continue
            if backend.device_of(p.data) != self.device or p.data.dtype != self.dtype:
                return True
            if p.data.shape != self.views[i].shape:
                raise ValueError(f"optimizer: parameter {i} changed shape from {self.views[i].shape} "
                                 f"to {p.data.shape}; build a new optimizer")
            self.views[i][...] = p.data
            p.data = self.views[i]
        return False

    def gather_grads(self):
        """Make self.grad hold every parameter's gradient; False when none has one."""
        any_grad = False
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                self.grad_views[i][...] = 0
                continue
            any_grad = True
            if g.data is not self.grad_views[i]:
                self.grad_views[i][...] = g.data
        return any_grad

    def zero_grad(self, set_to_none=False):
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        self.grad.fill(0)
        for p, gv in zip(self.params, self.grad_views):
            if p.grad is None or p.grad.data is not gv:
                p.grad = Tensor(gv)

    def scratch(self, k, size, workers):
        """k reusable scratch rows of `size` elements for each of `workers` threads (allocated
        once, then reused every step)."""
        key = (k, size, workers)
        if key not in self._scratch:
            self._scratch[key] = [self.xp.empty((k, size), dtype=self.dtype) for _ in range(workers)]
        return self._scratch[key]

    def map_chunks(self, fn, arrays, k):
        """Call fn(*[a[lo:hi] for a in arrays], scratch) over the flat range.

        fn sees slices of the flat arrays and k scratch rows of matching length, and must work in
        place. On the CPU, big buckets go chunk by chunk, split across the thread pool; small ones
        and GPU buckets go in one call.
        """
        n = self.n
        if self.xp is not np or n < MIN_PARALLEL:
            fn(*arrays, self.scratch(k, n, 1)[0])
            return
        bounds = [n * t // THREADS for t in range(THREADS + 1)]
        chunk = min(CHUNK, -(-n // THREADS))
        scratch = self.scratch(k, chunk, THREADS)

        def run(t):
            s = scratch[t]
            for lo in range(bounds[t], bounds[t + 1], chunk):
                hi = min(lo + chunk, bounds[t + 1])
                fn(*[a[lo:hi] for a in arrays], s[:, :hi - lo])

        if THREADS == 1:
            run(0)
            return
        futures = [_get_pool().submit(run, t) for t in range(1, THREADS)]
        try:
            run(0)  # this thread takes a share too: one thread fewer to wake and wait for
        finally:
            for f in futures:
                f.result()
