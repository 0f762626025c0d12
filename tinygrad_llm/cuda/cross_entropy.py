"""Fused cross-entropy over large vocabularies (kernels/cross_entropy.cu): one block per row,
the row read once forward (online max and sum-of-exp) and once backward. Matches
ops/cross_entropy.py's references with label_smoothing = 0."""
import numpy as np

from .. import backend
from . import runtime as rt

FILE = "cross_entropy.cu"
rt.register(FILE, ("cross_entropy_forward", "cross_entropy_backward"))


def _targets64(targets, n_rows):
    t = backend.cupy().ascontiguousarray(targets, dtype=np.int64)
    if t.shape != (n_rows,):
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not fit "
                         f"{n_rows} rows of logits")
    return t


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """(loss, lse), one per row of logits (N, V): loss = lse - logits[target], 0 where ignored,
    NaN where a target is out of range."""
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy kernel: logits must be (N, V), got shape {logits.shape}")
    n_rows, V = rt.rows(logits, "cross_entropy")
    t = _targets64(targets, n_rows)
    loss = rt.empty((n_rows,), logits.dtype)
    lse = rt.empty((n_rows,), logits.dtype)
    if n_rows and V:
        rt.launch(FILE, "cross_entropy_forward", logits.dtype, (n_rows,),
                  (rt.row_threads(V, logits.dtype),), logits, t, loss, lse, n_rows, V,
                  np.int64(ignore_index))
    return loss, lse


def cross_entropy_backward(logits, targets, lse, dloss, ignore_index=-100):
    """dlogits = (softmax(logits) - onehot(targets)) * dloss per row; zero rows where ignored.

    dloss: a 0-d array (one scale for every row: the mean reduction's dy / count) or (N,).
    """
    n_rows, V = rt.rows(logits, "cross_entropy backward")
    t = _targets64(targets, n_rows)
    dloss = backend.cupy().ascontiguousarray(dloss, dtype=logits.dtype)
    if dloss.size == 1:
        stride = 0
    elif dloss.shape == (n_rows,):
        stride = 1
    else:
        raise ValueError(f"cross_entropy backward: dloss of shape {dloss.shape} must be a scalar "
                         f"or ({n_rows},)")
    dlogits = rt.empty(logits.shape, logits.dtype)
    if n_rows and V:
        rt.launch(FILE, "cross_entropy_backward", logits.dtype, (n_rows,),
                  (rt.row_threads(V, logits.dtype),), logits, t, lse, dloss, stride, dlogits,
                  n_rows, V, np.int64(ignore_index))
    return dlogits
