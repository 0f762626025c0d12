"""KV caches for the Llama-layout transformer: one per layer, full or bounded by a sliding window.

    FullLayerCache    k, v of every position so far, in a preallocated buffer that doubles when a
                      conversation outgrows it (never per token: generate reserves what it needs)
    WindowLayerCache  a ring of the last W positions for a layer that sees only a window of W keys
                      (Mistral, Gemma, Qwen2 sliding layers): memory O(W) however long the text

A ring slot is pos % W. One new query (decoding) attends over the whole ring as it is: every key
in it lies inside the query's window, and attention does not depend on the order of its keys, so
no copy is made. Several new tokens at once (a prompt, a chat turn) need the W - 1 keys before
the first of them too, in order: those are gathered (at most W - 1 rows) ahead of the new keys,
so the attention op's window rule (p - W < j <= p, keys ending at the last query) holds.
"""
import numpy as np

from ..tensor import Tensor


class FullLayerCache:
    """k and v (B, n_kv, capacity, D) filled from position 0; views of the first `end` positions."""

    def __init__(self, B, n_kv, head_dim, dtype, xp, capacity):
        self.shape, self.dtype, self.xp = (B, n_kv, head_dim), dtype, xp
        self.k = self.v = None
        self._allocate(max(1, capacity))

    def _allocate(self, capacity):
        B, n_kv, D = self.shape
        k = self.xp.empty((B, n_kv, capacity, D), self.dtype)
        v = self.xp.empty((B, n_kv, capacity, D), self.dtype)
        if self.k is not None:  # a longer buffer: the positions so far move over once
            n = self.k.shape[2]
            k[:, :, :n], v[:, :, :n] = self.k, self.v
        self.k, self.v = k, v

    def update(self, start, k, v):
        """Write k, v (B, n_kv, T, D) at positions start.. and return all of them so far."""
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            self._allocate(max(end, 2 * self.k.shape[2]))
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class WindowLayerCache:
    """The last `window` positions of k and v in a ring (slot = position % window), grown up to the
    window's length as positions arrive, so a short text never holds a full window's buffer."""

    def __init__(self, B, n_kv, head_dim, dtype, xp, window, capacity):
        self.window = window
        self.ring = FullLayerCache(B, n_kv, head_dim, dtype, xp, min(window, max(1, capacity)))

    def update(self, start, k, v):
        W, T, ring = self.window, k.shape[2], self.ring
        end = start + T
        if end <= W:  # no slot reused yet: positions are slots, as in a full cache
            if end > ring.k.shape[2]:
                ring._allocate(min(W, max(end, 2 * ring.k.shape[2])))
            return ring.update(start, k, v)
        if ring.k.shape[2] < W:
            ring._allocate(W)
        keep = min(T, W)  # the new positions that stay in the ring
        if T == 1:
            slot = start % W
            ring.k[:, :, slot], ring.v[:, :, slot] = k[:, :, 0], v[:, :, 0]
            return ring.k, ring.v  # every key within the window; order does not matter to one query
        n_old = min(start, W - 1)  # the keys before the first new token that it still sees
        old = np.arange(start - n_old, start) % W
        xp = ring.xp
        k_all = xp.concatenate([ring.k[:, :, old], k], axis=2)  # (B, n_kv, n_old + T, D), in order
        v_all = xp.concatenate([ring.v[:, :, old], v], axis=2)
        slots = np.arange(end - keep, end) % W
        ring.k[:, :, slots], ring.v[:, :, slots] = k[:, :, T - keep:], v[:, :, T - keep:]
        return k_all, v_all


class KVCache:
    """The cache of every layer of a model, and how many positions it holds (`length`).

    A forward pass with a cache runs tokens at positions length.. ; each attention layer calls
    update(layer_idx, k, v) and attends over what it returns, and the model calls advance(T) once
    the whole pass is done. capacity: the positions to reserve up front (generate passes prompt +
    new tokens), so decoding writes into place and never reallocates.
    """

    def __init__(self, config, B, dtype, xp=np, capacity=None):
        capacity = capacity or config.max_position_embeddings
        shape = (B, config.num_key_value_heads, config.head_dim)
        self.layers = []
        for layer_type in config.layer_types:
            if layer_type == "sliding_attention":
                self.layers.append(WindowLayerCache(*shape, dtype, xp, config.sliding_window, capacity))
            else:
                self.layers.append(FullLayerCache(*shape, dtype, xp, capacity))
        self.length, self.batch = 0, B

    def update(self, layer_idx, k, v):
        """Store k, v (Tensors (B, n_kv, T, D)) of layer layer_idx; the keys and values (Tensors) its
        queries attend over."""
        k_all, v_all = self.layers[layer_idx].update(self.length, k.data, v.data)
        return Tensor(k_all), Tensor(v_all)

    def advance(self, T):
        self.length += T

    def nbytes(self):
        total = 0
        for layer in self.layers:
            buf = layer.ring if isinstance(layer, WindowLayerCache) else layer
            total += buf.k.nbytes + buf.v.nbytes
        return total
