"""Muon: momentum, then each 2-D update orthogonalised by a quintic Newton-Schulz iteration.

Muon (Keller Jordan, 2024) replaces a weight matrix's update G by the nearest semi-orthogonal
matrix U V^T (G = U S V^T), approximately, without an SVD: scale G to spectral norm <= 1, then
iterate X <- a X + (b A + c A^2) X with A = X X^T. Each step maps every singular value s through
the odd polynomial p(s) = a s + b s^3 + c s^5. The coefficients (3.4445, -4.7750, 2.0315) are
chosen for speed, not exactness: p has a steep slope at 0, so small singular values grow fast,
and five steps leave every one of them in a band around 1 (about [0.7, 1.2]; tests/test_optim_muon.py
measures it) instead of converging to exactly 1.

Meant for the hidden weight matrices of a network only; embeddings, the output head, norms and
biases go to AdamW (see groups.muon_hybrid).
"""
import math

import numpy as np

from .. import backend
from .optimizer import Optimizer

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(G, steps=5, eps=1e-7, coeffs=NS_COEFFS, work=None):
    """The quintic Newton-Schulz orthogonalisation of a 2-D array G (G's dtype).

    X = G / (||G||_F + eps) has spectral norm <= 1 (the Frobenius norm bounds it). A tall G is
    transposed first, so the Gram matrix A = X X^T is the small (min, min) one.
    work: a dict of reusable buffers (the optimizer passes one, so a step allocates nothing);
    with it the result is a view into those buffers, valid until the next call. Without it the
    result is a fresh array.
    """
    xp = backend.array_module(G)
    if G.ndim != 2:
        raise ValueError(f"newton_schulz5: expected a 2-D matrix, got shape {G.shape}")
    a, b, c = coeffs
    tall = G.shape[0] > G.shape[1]
    r, cols = (G.shape[1], G.shape[0]) if tall else G.shape
    key = (r, cols, G.dtype)
    if work is None or key not in work:
        bufs = (xp.empty((r, cols), G.dtype), xp.empty((r, cols), G.dtype),
                xp.empty((r, r), G.dtype), xp.empty((r, r), G.dtype))
        if work is not None:
            work[key] = bufs
    else:
        bufs = work[key]
    X, Y, A, B = bufs
    flat = G.reshape(-1)
    # a Python float on the CPU; on the GPU a device scalar (a host read would stall the step)
    norm = math.sqrt(float(xp.vdot(flat, flat))) if xp is np else xp.sqrt(xp.vdot(flat, flat))
    xp.divide(G.T if tall else G, norm + eps, out=X)  # X: C-contiguous (r, cols), r <= cols
    for _ in range(steps):
        # A = X X^T and A^2 = A A^T (A is symmetric): NumPy sends a product of an array with its
        # own transpose to BLAS syrk, which computes one triangle (measured 0.8x the time of gemm)
        xp.matmul(X, X.T, out=A)  # (r, r)
        xp.matmul(A, A.T, out=B)
        B *= c
        A *= b
        B += A                    # B = b A + c A^2
        xp.matmul(B, X, out=Y)
        X *= a
        X += Y                    # X = a X + B X
    return X.T if tall else X


class Muon(Optimizer):
    """Muon for 2-D weights (higher-dimensional ones are viewed as (shape[0], -1)):

        buf = momentum * buf + (1 - momentum) * g          (an EMA, PyTorch's lerp form)
        u = (1 - momentum) * g + momentum * buf  if nesterov, else  u = buf
        O = newton_schulz5(u)
        p = p * (1 - lr * weight_decay) - lr * scale * O

    scale = max(1, rows / cols) ** 0.5 (adjust_lr="original", Keller Jordan's), or
    0.2 * sqrt(max(rows, cols)) (adjust_lr="match_rms_adamw": update RMS like AdamW's, so
    AdamW's lr and weight decay carry over). This matches torch.optim.Muon (which runs the
    iteration in bfloat16; we stay in the parameter's dtype).

    map_fn(fn, items, costs) runs fn(item, t) for every matrix's update (t: a worker index, for
    per-worker scratch buffers); by default one after another. The trainer passes
    parallel.on_cores, which runs the NumPy updates side by side, one matrix per core: each
    update is a handful of small GEMMs, which one core does faster than all of them together.
    """
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                 ns_steps=5, eps=1e-7, adjust_lr="original", map_fn=None):
        self.map_fn = map_fn or one_at_a_time
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, ns_steps=ns_steps, eps=eps,
                                      adjust_lr=adjust_lr))

    def _check_group(self, group):
        super()._check_group(group)
        for i, p in enumerate(group["params"]):
            if p.ndim < 2:
                raise ValueError(f"Muon: parameter {i} has shape {p.shape}; Muon updates matrices "
                                 "only. Give biases, norms and embeddings to AdamW "
                                 "(optim.muon_hybrid does the split)")
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {group['momentum']}")
        if group["adjust_lr"] not in ("original", "match_rms_adamw"):
            raise ValueError(f"Muon: adjust_lr must be 'original' or 'match_rms_adamw', "
                             f"got {group['adjust_lr']!r}")

    @staticmethod
    def lr_scale(shape, adjust_lr="original"):
        rows, cols = shape[0], math.prod(shape[1:])
        if adjust_lr == "original":
            return max(1.0, rows / cols) ** 0.5
        return 0.2 * math.sqrt(max(rows, cols))

    def _update(self, group, bucket):
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        xp = bucket.xp

        def momentum(g, buf, s):
            xp.subtract(g, buf, out=s[0])
            s[0] *= 1 - mu
            buf += s[0]

        bucket.map_chunks(momentum, (bucket.grad, bucket.state["momentum_buffer"]), 1)
        buf_all, g_all = bucket.state["momentum_buffer"], bucket.grad
        # per thread, per-shape buffers, reused every step
        works = bucket.__dict__.setdefault("ns_work", {})

        def update(item, t):
            p, lo, hi = item
            work = works.setdefault(t, {})
            rows = p.shape[0]
            buf, g = buf_all[lo:hi].reshape(rows, -1), g_all[lo:hi].reshape(rows, -1)
            if group["nesterov"]:
                ukey = ("u",) + buf.shape
                if ukey not in work:
                    work[ukey] = xp.empty_like(buf)
                u = work[ukey]
                xp.subtract(buf, g, out=u)  # g + mu (buf - g): PyTorch's lerp(g, buf, mu)
                u *= mu
                u += g
            else:
                u = buf
            O = newton_schulz5(u, steps=group["ns_steps"], eps=group["eps"], work=work)
            O *= lr * self.lr_scale(p.shape, group["adjust_lr"])
            p2 = p.data.reshape(rows, -1)  # a view: p.data is a contiguous slice of the bucket
            if wd:
                p2 *= 1 - lr * wd
            p2 -= O

        items = list(bucket.slices())
        if bucket.xp is np:
            self.map_fn(update, items, [_ns_cost(p.shape) for p, _, _ in items])
        else:  # CuPy queues the GEMMs on one stream: threads would add nothing
            one_at_a_time(update, items)


def one_at_a_time(fn, items, costs=None):
    """Muon's default map_fn: fn(item, 0) for each item, in order, in the calling thread."""
    for item in items:
        fn(item, 0)


def _ns_cost(shape):
    """Flops of one Newton-Schulz step, up to a constant: r^2 cols + r^3 with r the smaller side."""
    r, cols = sorted((shape[0], math.prod(shape[1:])))
    return r * r * cols + r ** 3
