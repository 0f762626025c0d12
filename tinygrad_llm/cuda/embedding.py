"""Deterministic embedding backward (kernels/embedding.cu): the ids sorted by (id, position), then
one block per id run adds its rows in position order. Matches ops/embedding.py's
embedding_backward_cpu bit for bit."""
import numpy as np

from .. import backend
from . import runtime as rt

FILE = "embedding.cu"
rt.register(FILE, ("embedding_backward",))


def embedding_backward(ids, dy, V):
    """dW (V, C) = the sum of dy's rows over each id, in increasing position order.

    ids: integer array (any shape); dy: contiguous float array of shape ids.shape + (C,).
    """
    cp = backend.cupy()
    C = dy.shape[-1]
    ids = ids.reshape(-1)
    N = ids.shape[0]
    if dy.shape[:-1] != () and dy.size != N * C:
        raise ValueError(f"embedding backward: dy of shape {dy.shape} does not fit {N} ids")
    if N >= 2**31 or C >= 2**31 or V * max(N, 1) >= 2**62:
        raise ValueError(f"embedding backward: {N} ids x {C} columns is too large for the kernel")
    dw = cp.zeros((V, C), dtype=dy.dtype)
    if N == 0 or C == 0:
        return dw
    ids = ids.astype(np.int64)
    # unique keys: any sort puts them in one order, so the run's order never depends on the sort
    order = cp.argsort(ids * N + cp.arange(N, dtype=np.int64))
    sorted_ids = cp.ascontiguousarray(ids[order])
    threads = min(256, -(-C // 32) * 32)
    rt.launch(FILE, "embedding_backward", dy.dtype, (N, -(-C // threads)), (threads,),
              dy.reshape(N, C), order.astype(np.int64), sorted_ids, dw, N, C)
    return dw
