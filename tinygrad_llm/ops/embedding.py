"""Embedding lookup as one op; its backward is a scatter-add of rows over repeated ids."""
import numpy as np

from .. import backend, cuda
from ..autograd import Function
from ..backend import array_module
from ..cuda import syncs


def embedding_backward_textbook(ids, dy, V):
    """dW (V, C): dy scatter-added into the rows its ids name, one position at a time (np.add.at);
    the tests check the tuned embedding_backward_cpu against it."""
    dw = np.zeros((V, dy.shape[-1]), dtype=dy.dtype)
    np.add.at(dw, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
    return dw


def embedding_forward_cpu(ids, weight):
    """y[..., :] = weight[ids[...], :] for weight (V, C)."""
    xp = array_module(weight)
    return xp.take(weight, ids, axis=0)


def embedding_backward_cpu(ids, dy, V):
    """dW (V, C): row v is the sum of dy over every position whose id is v.

    np.add.at does this one element at a time. Here the ids are sorted (stable) and each row gets
    its rank among the rows that share its id; all rank-0 rows are written at once, then rank 1 is
    added, and so on. Within one rank no id repeats, so plain fancy-index += is exact, and the
    number of rounds is the largest count of any one id (a handful for a big vocabulary, about
    N / V for a small one).
    """
    xp = array_module(dy)
    C = dy.shape[-1]
    ids = ids.reshape(-1)
    dy = dy.reshape(-1, C)  # (N, C)
    N = ids.shape[0]
    dw = xp.zeros((V, C), dtype=dy.dtype)
    if N == 0:
        return dw
    if xp is not np:
        # the GPU's deterministic path is the kernel (cuda/embedding.py, the same order as the
        # rank rounds below); with the kernels off, CuPy's add.at (atomics: the sums' order, and
        # so their last bits, may change from run to run). The rank rounds need
        # maximum.accumulate, which CuPy does not implement.
        xp.add.at(dw, ids, dy)
        return dw
    order = xp.argsort(ids, kind="stable")
    s = ids[order]
    first = xp.empty(N, dtype=bool)
    first[0] = True
    xp.not_equal(s[1:], s[:-1], out=first[1:])
    pos = xp.arange(N)
    rank = pos - xp.maximum.accumulate(xp.where(first, pos, 0))  # position within its id's run
    dw[s[first]] = dy[order[first]]
    for k in range(1, int(rank.max()) + 1):
        m = rank == k
        dw[s[m]] += dy[order[m]]
    return dw


class Embedding(Function):
    """y = weight[ids] for integer ids of any shape and weight (V, C); y has shape ids.shape + (C,).

    Backward: dW[v] = sum of dy[i] over positions i with ids[i] = v (no gradient for ids); with a
    padding_idx p, dW[p] = 0 (PyTorch's nn.Embedding(padding_idx=p): the padding row never trains).
    Saved: the ids only.  Derivation: docs/backward.md#embedding
    """

    @staticmethod
    def forward(ctx, weight, ids=None, padding_idx=None):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
        if weight.ndim != 2:
            raise ValueError(f"embedding: weight must be (num_embeddings, dim), got shape {weight.shape}")
        V = weight.shape[0]
        if ids.size:  # on the GPU a device flag, read with the logged loss (cuda/syncs.py)
            syncs.check((ids < 0).any() | (ids >= V).any(),
                        lambda: f"embedding: id {syncs.out_of_range(ids, V)} is outside [0, {V}) "
                                f"for a weight of shape {weight.shape}")
        if padding_idx is not None and not 0 <= padding_idx < V:
            raise ValueError(f"embedding: padding_idx {padding_idx} is outside [0, {V})")
        ctx.save_for_backward(ids)
        ctx.V, ctx.padding_idx = V, padding_idx
        return embedding_forward_cpu(ids, weight)

    @staticmethod
    def backward(ctx, dy):
        (ids,) = ctx.saved
        dw = None
        if backend.device_of(dy) == "cuda":
            dy = backend.cupy().ascontiguousarray(dy)
            if cuda.serves(dy):  # deterministic: no float atomics
                dw = cuda.embedding_backward(ids, dy, ctx.V)
        if dw is None:
            dw = embedding_backward_cpu(ids, dy, ctx.V)
        if ctx.padding_idx is not None:
            dw[ctx.padding_idx] = 0
        return dw
