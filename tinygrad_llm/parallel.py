"""Data parallelism over CPU threads: a batch cut into row shards whose forward and backward
passes run at the same time, one shard per core.

Why: in a GPT training step on a few cores, GEMMs take two thirds of the time and run on every
core through OpenBLAS, but the other third (GELU, layer norm, softmax, the residual adds) is
NumPy's elementwise work, one core's, while OpenBLAS's idle workers spin on the others. With the
batch cut into one shard per core, each shard's whole forward and backward on a thread of its
own and BLAS held to one thread per call, every core works all the time: GEMMs and elementwise
passes both run in parallel, NumPy releases the GIL inside each call, and the threads meet once
per step. (GPT step, 2 cores: 6 layers x 384 wide, T=256, B=12: forward + backward 1270 ms vs
1430-1700 ms; nanoGPT's CPU model: 34.8 vs 39.1 ms. benchmarks/train_cpu.py has the full step.)
The price is the GIL: the shards take turns for it between NumPy calls, and a thread that waits
leaves its core idle until woken. On the small model two shards at once take ~34.5 ms where one
alone takes 31 ms; more shards than cores only add waiting.

What stays exact. The batch loss is the mean over its n counted targets (those that are not
ignore_index), so shard i's loss, a mean over its own n_i, is backpropagated with weight n_i / n:
the gradients add up to one whole-batch backward's, up to the order of the float additions. That
order is fixed, so runs repeat bit for bit: the calling thread's shard accumulates into .grad as
it goes, the other shards into lists that are added afterwards, shard by shard. Dropout: each
worker shard draws from a generator of its own, seeded from the main one before the shards start.

When it falls back to one plain backward: one shard asked for (or a batch of one row), arrays not
NumPy's (CuPy runs its own kernels), a BLAS whose threads we cannot set (blas.available()), the
backward tracer or a study.scope open (they record one graph), or a shard with no counted target.
"""
import os

import numpy as np

from . import autograd, backend, blas
from .autocast import open_regions, within
from .tensor import Tensor

# Shards beyond this give each thread so few rows that Python's per-op overhead, paid by every
# shard and serialised by the GIL, outweighs the cores; measured up to 2 shards on 2 cores.
MAX_SHARDS = 8


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_shards(batch_rows):
    """Shards for a batch of this many rows: $TINYGRAD_LLM_SHARDS if set, else one per usable
    core, at most MAX_SHARDS (balanced: see balanced_shards)."""
    env = os.environ.get("TINYGRAD_LLM_SHARDS")
    return balanced_shards(batch_rows, int(env) if env else min(usable_cores(), MAX_SHARDS))


def balanced_shards(rows, at_most):
    """The fewest shards, at most `at_most`, whose largest has as few rows as `at_most` shards
    allow: 12 rows on 8 cores make 6 shards of 2 rows (8 shards would still take 2 rows' time,
    with 2 more threads waiting on the GIL)."""
    n = max(1, min(int(at_most), rows))
    largest = -(-rows // n) if rows else 1
    return max(1, -(-rows // largest))


def _worker_init():
    blas.set_threads(1)  # OpenMP builds of OpenBLAS keep the count per thread: set it here too


def _get_pool(workers):
    return backend.thread_pool("shard", workers, initializer=_worker_init)


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


def _loss_value(loss):
    if not isinstance(loss, Tensor) or loss.data.size != 1:
        raise ValueError(f"loss_backward: loss_fn must return a one-element Tensor, got "
                         f"{type(loss).__name__} {getattr(loss, 'shape', '')}")
    # on the GPU the loss stays a device scalar: reading it would stall every step, so the
    # caller reads it when it logs it (cuda/syncs.py)
    return loss.item() if backend.device_of(loss.data) == "cpu" else loss.data


def _backward(loss, weight, leaf_sink=None):
    if not loss.requires_grad:
        raise autograd.GraphError("loss_backward: the loss does not require grad (no parameter "
                                  "had requires_grad=True, or it was computed under no_grad)")
    seed = loss.data.dtype.type(weight) * backend.array_module(loss.data).ones_like(loss.data)
    autograd.backward(loss._ctx or loss, seed, leaf_sink=leaf_sink)


def loss_backward(loss_fn, inputs, targets, shards=None, scale=1.0, ignore_index=-100):
    """Backpropagate scale * loss_fn(inputs, targets) with the batch cut into row shards that run
    at the same time, one thread each; returns the batch's loss before scale (a float on the CPU,
    a 0-d device array on the GPU: read it when it is logged).

    loss_fn(inputs_rows, targets_rows) -> one-element Tensor: the mean of a per-target loss over
    the targets that are not ignore_index (as cross_entropy's reduction="mean"). inputs and
    targets share their first (batch) axis. shards: None for default_shards(batch rows), else at
    most this many (balanced_shards).
    Gradients land in the leaves' .grad as one backward of the whole batch would put them.
    """
    x, y = _raw(inputs), _raw(targets)
    rows = y.shape[0] if getattr(y, "ndim", 0) else 0
    n = default_shards(rows) if shards is None else balanced_shards(rows, shards)
    bounds = [rows * i // n for i in range(n + 1)]
    counts = ([int(np.count_nonzero(y[lo:hi] != ignore_index)) for lo, hi in zip(bounds, bounds[1:])]
              if n > 1 and isinstance(y, np.ndarray) else [])
    if (n <= 1 or not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray)
            or autograd.graph_is_observed() or not blas.available()
            or not all(counts) or getattr(x, "shape", (0,))[0] != rows):
        loss = loss_fn(inputs, targets)
        value = _loss_value(loss)
        _backward(loss, scale)
        return value

    total = sum(counts)
    seeds = backend.rng("cpu").integers(0, 2 ** 63, size=n - 1)  # drawn here: a fixed order
    sinks = [[] for _ in range(n - 1)]
    # grad mode and autocast are per thread: the workers compute in this thread's
    grad_enabled, regions = autograd.is_grad_enabled(), open_regions()

    def shard(i, sink):
        lo, hi = bounds[i], bounds[i + 1]
        loss = loss_fn(x[lo:hi], y[lo:hi])
        value = _loss_value(loss)
        _backward(loss, scale * counts[i] / total, sink)
        return value

    def worker(i):
        backend.set_thread_rng(np.random.Generator(np.random.PCG64(int(seeds[i - 1]))))
        try:
            with autograd.set_grad_enabled(grad_enabled), within(regions):
                return shard(i, sinks[i - 1])
        finally:
            backend.set_thread_rng(None)

    with blas.threads(1):
        pool = _get_pool(n - 1)
        futures = [pool.submit(worker, i) for i in range(1, n)]
        values, first_error = [None] * n, None
        try:
            values[0] = shard(0, None)  # this thread: straight into .grad
        except BaseException as e:  # noqa: BLE001 - re-raised once the workers are done
            first_error = e
        for i, f in enumerate(futures, start=1):  # wait for all: they share the BLAS setting
            try:
                values[i] = f.result()
            except BaseException as e:  # noqa: BLE001
                first_error = first_error or e
    if first_error is not None:
        raise first_error
    for sink in sinks:  # shard by shard, each in its walk's order: the same sums every run
        for leaf, g, owned in sink:
            autograd.accumulate_leaf(leaf, g, owned)
    return float(sum(v * c for v, c in zip(values, counts)) / total)


def on_cores(fn, items, costs=None):
    """fn(item, t) for every item, spread over threads t = 0..k-1 (k: one per usable core, at
    most one per item; t = 0 is the calling thread), with BLAS at one thread per call meanwhile.

    For independent pieces of work made of small GEMMs (Muon's Newton-Schulz per matrix): one
    thread per core beats one GEMM at a time on every core, whose threads cost more than they
    split. Items go to threads by cost, largest first, each to the least loaded thread, so the
    split is the same every call and each item's result repeats bit for bit; fn may keep per-t
    scratch buffers. Runs in the calling thread alone where BLAS threads cannot be set.
    """
    items = list(items)
    k = min(usable_cores(), MAX_SHARDS, len(items))
    if k <= 1 or not blas.available():
        for item in items:
            fn(item, 0)
        return
    costs = list(costs) if costs is not None else [1] * len(items)
    loads, mine = [0] * k, [[] for _ in range(k)]
    for i in sorted(range(len(items)), key=lambda i: -costs[i]):
        t = loads.index(min(loads))
        mine[t].append(items[i])
        loads[t] += costs[i]

    def run(t):
        for item in mine[t]:
            fn(item, t)

    with blas.threads(1):
        futures = [_get_pool(k - 1).submit(run, t) for t in range(1, k)]
        error = None
        try:
            run(0)
        except BaseException as e:  # noqa: BLE001 - re-raised once the workers are done
            error = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001
                error = error or e
    if error is not None:
        raise error
