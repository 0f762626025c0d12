"""Token data for training: a token file on disk, a train/val split, random (B, T) windows.

The file (written by tokenizer.encode_file: flat uint16/uint32 ids + a .json sidecar) is opened
with np.memmap, so a corpus larger than memory costs only the windows actually drawn. As in
nanoGPT, the last 10% of the tokens are the validation split and a batch is B windows of T + 1
consecutive tokens at random offsets: x is the first T, y (the targets) the last T.

    >>> data = TokenData("shakespeare.bin")
    >>> x, y = data.get_batch("train", batch_size=12, block_size=64)     # int64 (12, 64) each
    >>> data.bytes_per_token("val")                                     # for bits per byte

Sampling draws from the loader's own seeded generator (not the global one), so the data order
depends only on the seed, and `state()` / `set_state()` let a resumed run draw the same batches.
"""
from pathlib import Path

import numpy as np


def open_token_data(path, val_fraction=0.1, seed=0, rank=0, world_size=1):
    """A ShardData for a folder of shards (shard_data.py), else a TokenData for one token file.

    rank / world_size split each batch of a shard folder between the processes of a distributed
    run; a single token file is sampled from the seed alone (each rank seeds its own)."""
    from .shard_data import ShardData, is_shard_folder
    if is_shard_folder(path):
        return ShardData(path, seed=seed, rank=rank, world_size=world_size)
    if Path(path).is_dir():
        raise FileNotFoundError(f"{path} is a folder without shards (.bin files with .bin.json sidecars)")
    return TokenData(path, val_fraction, seed=seed)


class TokenData:
    """Train/val token streams over one token file (or an in-memory id array)."""

    def __init__(self, source, val_fraction=0.1, seed=0, source_bytes=None):
        if isinstance(source, (str, Path)):
            from .tokenizer import read_token_file
            ids, meta = read_token_file(source)
            self.meta = meta
            source_bytes = meta["source_bytes"]
        else:
            ids = np.asarray(source)
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise ValueError(f"TokenData: expected a 1-d integer id array, got {ids.dtype} {ids.shape}")
            self.meta = {"num_tokens": len(ids), "source_bytes": source_bytes}
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(ids)
        n_val = int(round(n * val_fraction))
        self.splits = {"train": ids[:n - n_val], "val": ids[n - n_val:]}
        self.source_bytes = source_bytes
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._val_bytes = None

    def __len__(self):
        return sum(len(s) for s in self.splits.values())

    def get_batch(self, split, batch_size, block_size, rng=None):
        """(x, y) int64 arrays of shape (batch_size, block_size); y is x shifted by one token."""
        data = self._split(split)
        if len(data) < block_size + 1:
            raise ValueError(f"the {split} split has {len(data)} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1}; use a shorter block_size or more data")
        rng = self.rng if rng is None else rng
        starts = rng.integers(0, len(data) - block_size, size=batch_size)
        # one fancy-index gather from the memmap: (B, T+1) without a Python loop over rows
        window = np.asarray(data[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
        return window[:, :-1], window[:, 1:]

    def _split(self, split):
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        return self.splits[split]

    def bytes_per_token(self, split="val", decode=None):
        """Bytes of text per token in a split, for bits per byte.

        With decode (ids -> bytes, e.g. tokenizer.decode_bytes) the split's exact byte count is
        used; otherwise the whole file's ratio (source_bytes / num_tokens) stands in for it.
        """
        data = self._split(split)
        if decode is not None:
            return len(decode(np.asarray(data).tolist())) / max(len(data), 1)
        if not self.source_bytes:
            raise ValueError("bytes_per_token needs the source size: this data has no source_bytes "
                             "(pass source_bytes= or a decode function)")
        return self.source_bytes / max(len(self), 1)

    def state(self):
        """The sampler's RNG state (JSON-serialisable) for checkpoints."""
        return self.rng.bit_generator.state

    def set_state(self, state):
        bitgen = np.random.PCG64()
        bitgen.state = state
        self.rng = np.random.Generator(bitgen)


def document_segments(ids, eot_id):
    """Segment ids (B, T) of token windows (B, T): each <|endoftext|> opens a new document.

    The count of separators up to and including each position: tokens before the first
    separator (the end of a document the window starts inside) are segment 0, the separator and
    the document after it segment 1, and so on. Equal ids = same document, so attention masked
    by them (GPT's segment_ids) keeps each document to itself.
    """
    return (ids == eot_id).cumsum(axis=-1, dtype=ids.dtype if ids.dtype.kind == "i" else None)


def bits_per_byte(loss_nats, num_tokens, num_bytes):
    """Cross-entropy in nats per token -> bits per byte of text: loss * tokens / (bytes * ln 2)."""
    return float(loss_nats) * num_tokens / (num_bytes * np.log(2.0))
