"""Data-parallel training steps over a distributed.World: the gradient all-reduce, global-norm
clipping, the optimizer step, and ZeRO-1 (sharded optimizer state).

Every rank holds the whole model and runs forward and backward on its own rows; the mean loss
over the global batch is the mean of the ranks' mean losses (every rank has the same number of
counted targets), so its gradient is the ranks' gradients summed, divided by the world size.

Buckets. The optimizer already packs each parameter group in one flat gradient buffer
(optim/flat.py) and every .grad is a view into it, so the all-reduce is one in-place collective
per buffer: a few large messages instead of one per parameter.

ZeRO-1 (zero=1, llm.c's and DeepSpeed's stage 1): the optimizer state is split across ranks.
Each flat buffer is cut into one contiguous block of whole parameters per rank (whole, so Muon
still sees each matrix entire; the cuts are placed over all buffers end to end, so each rank's
blocks add up to about 1/N of the parameters even where one buffer is mostly one big matrix); then
per step
    reduce-scatter   each rank receives the summed gradient of its own block only
    clip             the global norm from every rank's sum of squares (one scalar all-reduce)
    update           each rank steps its block with the optimizer state of its block only
    all-gather       the updated blocks go to every rank, which now has the whole model again
Communication equals plain data parallelism's (a reduce-scatter plus an all-gather is one
all-reduce); optimizer memory per rank drops to about 1/N. Checkpoints gather the state on rank 0
and save it in the ordinary layout, so a run may resume with or without ZeRO.
"""
import math
import os

import numpy as np

from . import backend
from .optim.flat import FlatBucket
from .tensor import Tensor


def _optimizers(optimizer):
    return list(optimizer.optimizers) if hasattr(optimizer, "optimizers") else [optimizer]


def flat_buckets(optimizer):
    """(optimizer part, its param group, FlatBucket) for every flat buffer, in a fixed order."""
    out = []
    for o in _optimizers(optimizer):
        for gi, group in enumerate(o.param_groups):
            for b in o._buckets[gi]:
                out.append((o, group, b))
    return out


def _bind_grads(bucket):
    """Make every .grad of the bucket a view of its flat gradient (holding the values it had)."""
    bucket.gather_grads()
    for p, gv in zip(bucket.params, bucket.grad_views):
        if p.grad is None or p.grad.data is not gv:
            p.grad = Tensor(gv)


class DataParallel:
    """The collective half of a training step; in a world of one without ZeRO, exactly the
    single-process step (clip_grad_norm_, optimizer.step)."""

    def __init__(self, world, model, optimizer, zero=0):
        if zero not in (0, 1):
            raise ValueError(f"zero={zero}: only ZeRO stage 1 (or 0: off) is implemented")
        self.world, self.model, self.optimizer, self.zero = world, model, optimizer, zero
        self.params = list(model.parameters())
        self.shards = []
        if zero:  # the buffers' parameters end to end, weighted by the state they keep (AdamW
            # two arrays, Muon one), cut once: each rank's blocks balance over all buffers
            buckets = flat_buckets(optimizer)
            offsets, first = [0], []
            for o, _, b in buckets:
                first.append(len(offsets) - 1)
                for size in b.sizes:
                    offsets.append(offsets[-1] + size * max(len(o.state_names), 1))
            edges = partition(offsets, world.size)
            for (o, group, b), i0 in zip(buckets, first):
                mine = [min(max(e - i0, 0), len(b.sizes)) for e in edges]  # clipped to this buffer
                self.shards.append(ZeroShard(o, group, b, world, mine))

    @property
    def active(self):
        return self.world.size > 1 or self.zero

    def broadcast_parameters(self):
        """Rank 0's weights on every rank (all ranks then start from one model)."""
        if self.world.size == 1:
            return
        for _, _, b in flat_buckets(self.optimizer):
            self.world.broadcast_(b.data)

    def sync_gradients(self):
        """After the backward passes: the gradient of the global batch's mean loss, on every
        rank (plain), or each rank's block of it (ZeRO-1)."""
        if self.zero:
            for s in self.shards:
                s.reduce_scatter_grad()
            return
        if self.world.size == 1:
            return
        scale = 1.0 / self.world.size
        for _, _, b in flat_buckets(self.optimizer):
            _bind_grads(b)
            self.world.allreduce_(b.grad)
            b.grad *= scale

    def clip_(self, max_norm):
        """Scale the gradients so their global norm is at most max_norm; returns the norm."""
        if not self.zero:  # every rank holds the whole reduced gradient: the norm is the same on all
            from .optim import clip_grad_norm_
            return clip_grad_norm_(self.params, max_norm)
        sq = sum(s.grad_sq() for s in self.shards)
        total = self.world.sum(sq)
        total = math.sqrt(total) if total == total and total != math.inf else total
        if math.isfinite(total) and total > max_norm:
            coef = max_norm / (total + 1e-6)  # clip_grad_norm_'s formula
            for s in self.shards:
                s.shard.grad *= coef
        return total

    def step(self):
        if not self.zero:
            self.optimizer.step()
            return
        from .autograd import no_grad
        with no_grad():
            for s in self.shards:
                s.step()
            for s in self.shards:
                s.allgather_params()

    # ---------------------------------------------------------------------------- checkpoints
    def optimizer_state_dict(self):
        """The whole optimizer state in the ordinary layout, on rank 0 (None elsewhere); under
        ZeRO every rank must call it (it gathers the blocks)."""
        if not self.zero:
            return self.optimizer.state_dict() if self.world.is_main else None
        for s in self.shards:
            s.gather_state_to_bucket()
        try:
            return self.optimizer.state_dict() if self.world.is_main else None
        finally:
            for s in self.shards:
                s.bucket.state = {}

    def load_optimizer_state_dict(self, state):
        if not self.zero:
            self.optimizer.load_state_dict(state)
            return
        for s in self.shards:
            s.bucket.state = {k: s.bucket.xp.zeros(s.bucket.n, dtype=s.bucket.dtype) for k in s.names}
        try:
            self.optimizer.load_state_dict(state)
            for s in self.shards:
                s.take_block_of_bucket_state()
        finally:
            for s in self.shards:
                s.bucket.state = {}

    def optimizer_memory(self):
        """(bytes of optimizer state on this rank, bytes without ZeRO)."""
        full = sum(b.n * b.data.itemsize * len(o.state_names) for o, _, b in flat_buckets(self.optimizer))
        if not self.zero:
            return full, full
        return sum(sum(v.nbytes for v in s.shard.state.values()) for s in self.shards), full


def partition(offsets, parts):
    """Cut a flat buffer holding parameters [offsets[i], offsets[i+1]) into `parts` contiguous
    blocks of whole parameters, each as near n / parts elements as the parameter edges allow.
    Returns the parameter index where each block starts, plus len(params) at the end."""
    n, edges = offsets[-1], [0]
    for r in range(1, parts):
        target = n * r / parts
        i = min(range(edges[-1], len(offsets)), key=lambda j: abs(offsets[j] - target))
        edges.append(i)
    edges.append(len(offsets) - 1)
    return edges


class ZeroShard:
    """One flat bucket under ZeRO-1: this rank's block of it as a FlatBucket of its own (data a
    view of the bucket's, grad and optimizer state its own arrays of the block's size)."""

    def __init__(self, optimizer, group, bucket, world, edges):
        """edges[r]: the index of the bucket's first parameter in rank r's block (edges[-1]: all)."""
        self.optimizer, self.group, self.bucket, self.world = optimizer, group, bucket, world
        self.names = tuple(optimizer.state_names)
        self.counts = [bucket.offsets[edges[r + 1]] - bucket.offsets[edges[r]] for r in range(world.size)]
        i0, i1 = edges[world.rank], edges[world.rank + 1]
        self.lo, self.hi = bucket.offsets[i0], bucket.offsets[i1]
        self.shard = _block_bucket(bucket, i0, i1, self.names)
        bucket.state = {}  # the whole-buffer state is never allocated again (checkpoints excepted)

    @property
    def grad(self):
        return self.shard.grad

    def reduce_scatter_grad(self):
        self.bucket.gather_grads()
        self.world.reduce_scatter(self.bucket.grad, self.counts, self.shard.grad)
        if self.world.size > 1:
            self.shard.grad *= 1.0 / self.world.size

    def grad_sq(self):
        g = self.shard.grad
        return float(g @ g) if g.size else 0.0

    def step(self):
        if self.shard.n:
            self.shard.step += 1
            self.optimizer._update(self.group, self.shard)
        self.bucket.step = self.shard.step

    def allgather_params(self):
        self.world.allgather_(self.bucket.data, self.counts)

    def gather_state_to_bucket(self):
        """bucket.state = the whole state (rank 0; gathered from every rank's block)."""
        world, b = self.world, self.bucket
        full = {}
        for k in self.names:
            block = np.ascontiguousarray(backend.to_numpy(self.shard.state[k]))
            out = np.empty(b.n, dtype=block.dtype) if world.is_main else None
            full[k] = world.gather(block, self.counts, out)
        b.state = full if world.is_main else {}
        steps = world.allgather_json(self.shard.step)
        b.step = max(steps)

    def take_block_of_bucket_state(self):
        for k in self.names:
            self.shard.state[k][...] = self.bucket.state[k][self.lo:self.hi]
        self.shard.step = self.bucket.step


def _block_bucket(bucket, i0, i1, names):
    """A FlatBucket over parameters i0..i1-1 of `bucket` whose data is a view of bucket.data."""
    s = FlatBucket.__new__(FlatBucket)
    lo, hi = bucket.offsets[i0], bucket.offsets[i1]
    xp = bucket.xp
    s.params, s.xp, s.dtype, s.device = bucket.params[i0:i1], xp, bucket.dtype, bucket.device
    s.sizes = bucket.sizes[i0:i1]
    s.offsets = [o - lo for o in bucket.offsets[i0:i1 + 1]]
    s.n = hi - lo
    s.data = bucket.data[lo:hi]
    s.grad = xp.zeros(s.n, dtype=bucket.dtype)
    s.views = bucket.views[i0:i1]
    s.grad_views = [s.grad[a:b].reshape(p.shape) for p, a, b in zip(s.params, s.offsets, s.offsets[1:])]
    s.state = {k: xp.zeros(s.n, dtype=bucket.dtype) for k in names}
    s.step = bucket.step
    s._scratch = {}
    return s


# --------------------------------------------------------------------------------- CPU cores
def share_cores(world):
    """Ranks that share a machine split its cores: each gets usable_cores // ranks-on-this-machine
    row-shard threads, BLAS threads and optimizer threads, instead of every rank taking them all
    (2 ranks x 2 threads on 2 cores only wait on each other). $TINYGRAD_LLM_SHARDS, when set, wins."""
    if world.local_size == 1:
        return
    from . import blas, parallel
    from .optim import flat
    cores = max(1, parallel.usable_cores() // world.local_size)
    os.environ.setdefault("TINYGRAD_LLM_SHARDS", str(cores))
    if blas.available():
        blas.set_threads(cores)
    flat.THREADS = min(flat.THREADS, cores)


# ------------------------------------------------------------------------------ per-rank RNG
def rank_seed(seed, rank):
    """A seed of its own for each rank > 0 (rank 0 keeps `seed`, so one rank is the plain run)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint32)[0])


def seed_rank(world, seed, data):
    """Dropout and batch windows of their own on each rank: the global RNG and a random-window
    sampler (TokenData's rng) reseeded from (seed, rank). A loader told the rank and world size
    (ShardData) already gives each rank its own windows and is left alone. Rank 0 is left as the
    single-process run would be."""
    if world.rank == 0:
        return
    backend.manual_seed(rank_seed(seed, world.rank))
    if getattr(data, "world_size", 1) == 1 and hasattr(data, "rng"):
        data.rng = np.random.Generator(np.random.PCG64(rank_seed(seed + 1, world.rank)))
