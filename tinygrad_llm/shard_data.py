"""Training data from a folder of shards (`tokenize encode --out DIR`), in flat memory.

    data = ShardData("shards/", seed=0, rank=0, world_size=1)
    x, y = data.get_batch("train", 12, 64)       # int64 (12, 64) each; y is x shifted by one
    data.state()                                  # the position, for a checkpoint

The train shards' ids are cut into windows of T + 1 ids starting at 0, T, 2T, ... (a window's
last id, the last target, is the next window's first input). Epoch e visits the train shards in
an order drawn from (seed, e), and each shard's windows in an order drawn from (seed, e, shard):
every window once per epoch. A step takes the next B * world_size windows of that order and rank
r the r-th B of them, so the ranks' windows are disjoint and together are what one process with
a batch of B * world_size would draw. The rank and world size are parameters: the distributed
runner passes its own.

State: the orders follow from the seed, so the position (epoch, shard, window) is the whole
state of the sampler; state() gives it as JSON and set_state() resumes there exactly.

Memory: a window is read from its shard file straight into the batch (seek + readinto), so
nothing of the corpus stays in the process: the resident size is flat however large the corpus,
and the pages read live in the OS's page cache. (np.memmap, mapped afresh per batch as nanoGPT
does, is flat between batches too, but on Linux 6.x a fault maps a whole page-cache folio: about
1.4 MB per window of 1025 ids, 90 MB for a batch of 64, for the length of each gather.) A shard's
window order (4 bytes a window) is the largest thing kept, and only for the shard being read.

Validation is the val shard: get_batch("val", ..., rng=rng) draws random windows from it (the
trainer's fixed evaluation batches); splits["val"] reads it by slices, for a full evaluation.
"""
from pathlib import Path

import numpy as np

from .tokenizer import read_token_file
from .tokenizer.corpus import sidecar_path
from .tokenizer.shards import check_shard_sidecar


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0  # JSON true is no count


def is_shard_folder(path):
    path = Path(path)
    return path.is_dir() and any(path.glob("*.bin.json"))


class ShardData:
    """The val and train shards of a folder, sampled as described above."""

    def __init__(self, folder, seed=0, rank=0, world_size=1):
        self.folder = Path(folder)
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardData: rank {rank} is not in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        shards = sorted(p for p in self.folder.glob("*.bin") if sidecar_path(p).exists())
        if not shards:
            raise FileNotFoundError(f"{self.folder} holds no shards (.bin files with .bin.json sidecars); "
                                    "write them with `python -m tinygrad_llm tokenize encode --out DIR`")
        metas = {}
        for p in shards:
            ids, metas[p] = read_token_file(p)  # checks each file against its sidecar
            check_shard_sidecar(metas[p], sidecar_path(p))
            del ids
        val = [p for p in shards if metas[p].get("split") == "val"]
        self.train_paths = [p for p in shards if metas[p].get("split") == "train"]
        if len(val) != 1 or not self.train_paths:
            raise ValueError(f"{self.folder}: expected one val shard and at least one train shard, found "
                             f"{len(val)} val and {len(self.train_paths)} train (see the sidecars' \"split\")")
        self.val_path = val[0]
        for key in ("dtype", "vocab_size", "tokenizer", "eot_id"):
            values = {str(m.get(key)) for m in metas.values()}
            if len(values) > 1:
                raise ValueError(f"{self.folder}: the shards disagree on {key} ({sorted(values)})")
        first = metas[self.val_path]
        self.dtype = np.dtype(first["dtype"])
        self.train_sizes = np.array([metas[p]["num_tokens"] for p in self.train_paths], dtype=np.int64)
        self.val_size = first["num_tokens"]
        train_bytes = sum(metas[p]["source_bytes"] for p in self.train_paths)
        self.meta = {"vocab_size": first["vocab_size"], "tokenizer": first["tokenizer"],
                     "eot_id": first.get("eot_id"), "dtype": first["dtype"],
                     "num_tokens": int(self.train_sizes.sum()) + self.val_size,
                     "source_bytes": train_bytes + first["source_bytes"]}
        self._bytes = {"train": train_bytes, "val": first["source_bytes"]}
        self.epoch = self.shard = self.window = 0
        self._order = self._perm = None  # caches: (epoch, order), ((epoch, shard, T), perm)
        self._block_size = None

    def __len__(self):
        return self.meta["num_tokens"]

    @property
    def splits(self):
        """{"val": the val shard as a ShardFile}; train is many shards and has no single array."""
        return {"val": ShardFile(self.val_path, self.dtype, self.val_size)}

    # ------------------------------------------------------------------------------- sampling
    def _shard_order(self, epoch):
        if self._order is None or self._order[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._order = (epoch, rng.permutation(len(self.train_paths)))
        return self._order[1]

    def _windows(self, epoch, shard, T):
        """The window order of a shard: a permutation of its (n - 1) // T windows."""
        key = (epoch, shard, T)
        if self._perm is None or self._perm[0] != key:
            n = (int(self.train_sizes[shard]) - 1) // T
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, shard]))
            self._perm = (key, rng.permutation(n).astype(np.int32 if n < 2 ** 31 else np.int64))
        return self._perm[1]

    def _next_windows(self, count, T):
        """(shard, window index) arrays of the next `count` windows, advancing the position."""
        if self._block_size not in (None, T):
            raise ValueError(f"ShardData: block_size {T} after {self._block_size}; the position counts "
                             "windows of one size")
        if ((self.train_sizes - 1) // T).sum() == 0:
            raise ValueError(f"{self.folder}: no train shard holds block_size + 1 = {T + 1} tokens")
        self._block_size = T
        shards, windows = [], []
        while count:
            s = int(self._shard_order(self.epoch)[self.shard])
            perm = self._windows(self.epoch, s, T)
            take = min(count, len(perm) - self.window)
            windows.append(perm[self.window:self.window + take])
            shards.append(np.full(take, s))
            count -= take
            self.window += take
            if self.window == len(perm):
                self.window, self.shard = 0, self.shard + 1
                if self.shard == len(self.train_paths):
                    self.shard, self.epoch = 0, self.epoch + 1
        return np.concatenate(shards), np.concatenate(windows).astype(np.int64)

    def get_batch(self, split, batch_size, block_size, rng=None):
        """(x, y) int64 (batch_size, block_size). train: this rank's share of the next windows
        in order (rng given: random windows instead, not moving the position); val: random
        windows of the val shard drawn with rng (default: one seeded from the seed)."""
        B, T = batch_size, block_size
        if split == "train" and rng is None:
            shards, windows = self._next_windows(B * self.world_size, T)
            mine = slice(self.rank * B, (self.rank + 1) * B)
            return self._gather(shards[mine], windows[mine] * T, T)
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        rng = np.random.default_rng(self.seed) if rng is None else rng
        if split == "val":
            if self.val_size < T + 1:
                raise ValueError(f"the val shard has {self.val_size} tokens, fewer than block_size + 1 = "
                                 f"{T + 1}; encode with a larger --val-tokens or use a shorter block_size")
            return self._gather(None, rng.integers(0, self.val_size - T, size=B), T)
        room = np.maximum(self.train_sizes - T, 0)  # random starts per shard
        flat = rng.integers(0, room.sum(), size=B)
        ends = np.cumsum(room)
        shards = np.searchsorted(ends, flat, side="right")
        return self._gather(shards, flat - (ends[shards] - room[shards]), T)

    def _gather(self, shards, starts, T):
        """Windows of T + 1 ids at starts (in the train shards named, or the val shard if None)."""
        out = np.empty((len(starts), T + 1), dtype=np.int64)
        groups = [(None, np.arange(len(starts)))] if shards is None else \
            [(s, np.flatnonzero(shards == s)) for s in np.unique(shards)]
        for s, rows in groups:
            path = self.val_path if s is None else self.train_paths[int(s)]
            size = self.val_size if s is None else int(self.train_sizes[int(s)])
            ShardFile(path, self.dtype, size).read_windows(starts[rows], T + 1, out, rows)
        return out[:, :-1], out[:, 1:]

    # ----------------------------------------------------------------------------- bookkeeping
    def bytes_per_token(self, split="val", decode=None):
        """Bytes of text per token of a split, from the sidecars (exact: decode is not needed)."""
        tokens = self.val_size if split == "val" else int(self.train_sizes.sum())
        return self._bytes[split] / max(tokens, 1)

    def state(self):
        """The sampler's position (JSON), for checkpoints."""
        return {"kind": "shards", "seed": self.seed, "epoch": self.epoch, "shard": self.shard,
                "window": self.window, "block_size": self._block_size,
                "train_tokens": int(self.train_sizes.sum())}

    def set_state(self, state):
        """Resume at a position from state(); every field is checked first (a ValueError naming
        it), so a damaged one changes nothing."""
        if not isinstance(state, dict) or state.get("kind") != "shards":
            raise ValueError("ShardData.set_state: this checkpoint's data state is not a shard "
                             "position (was the run trained on a single token file?)")
        for key in ("seed", "epoch", "shard", "window", "train_tokens"):
            if not _whole(state.get(key)):
                raise ValueError(f"ShardData.set_state: {key} must be a whole number >= 0, got "
                                 f"{state.get(key)!r:.40}")
        if state["train_tokens"] != int(self.train_sizes.sum()):
            raise ValueError(f"ShardData.set_state: the checkpoint was trained on {state['train_tokens']:,} "
                             f"train tokens, {self.folder} holds {int(self.train_sizes.sum()):,}")
        T = state.get("block_size")
        if T is not None and not (_whole(T) and T >= 1):
            raise ValueError(f"ShardData.set_state: block_size must be null or a whole number >= 1, got {T!r:.40}")
        if state["shard"] >= len(self.train_paths):
            raise ValueError(f"ShardData.set_state: shard {state['shard']} of {len(self.train_paths)} train shards")
        if T is not None:
            order = np.random.Generator(np.random.PCG64([state["seed"], state["epoch"]])).permutation(
                len(self.train_paths))  # as _shard_order draws it, under the state's seed
            windows = (int(self.train_sizes[order[state["shard"]]]) - 1) // T
            if state["window"] >= max(windows, 1):
                raise ValueError(f"ShardData.set_state: window {state['window']} of a shard that holds "
                                 f"{windows} windows of {T} tokens")
        self.seed, self.epoch, self.shard, self.window = (state["seed"], state["epoch"], state["shard"],
                                                          state["window"])
        self._block_size = T
        self._order = self._perm = None


class ShardFile:
    """One shard's ids, read from its file on demand (never mapped): len(f), f[a:b], np.asarray(f)."""

    def __init__(self, path, dtype, num_tokens):
        self.path, self.dtype, self.n = Path(path), np.dtype(dtype), int(num_tokens)

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"ShardFile takes contiguous slices, got {key!r}")
        lo, hi, _ = key.indices(self.n)
        out = np.empty(max(hi - lo, 0), dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            self._read(f, lo, out)
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def read_windows(self, starts, length, out, rows):
        """out[rows[i]] = ids[starts[i]:starts[i] + length], one read per window."""
        buf = np.empty(length, dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            for r, start in zip(rows, starts):
                self._read(f, int(start), buf)
                out[r] = buf

    def _read(self, f, start, buf):
        f.seek(start * self.dtype.itemsize)
        view, done = memoryview(buf).cast("B"), 0
        while done < len(view):  # a read may return less than asked; loop until the window is in
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{self.path}: ends before id {start + len(buf)}; truncated since it was opened?")
            done += n
