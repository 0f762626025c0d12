"""Muon: momentum, then each 2-D update orthogonalised by a quintic Newton-Schulz iteration.

Muon (Keller Jordan, 2024) replaces a weight matrix's update G by the nearest semi-orthogonal
matrix U V^T (G = U S V^T), approximately, without an SVD: scale G to spectral norm <= 1, then
iterate X <- a X + (b A + c A^2) X with A = X X^T. Each step maps every singular value s through
the odd polynomial p(s) = a s + b s^3 + c s^5. The coefficients (3.4445, -4.7750, 2.0315) are
chosen for speed, not exactness: p has a steep slope at 0, so small singular values grow fast,
and five steps leave every one of them in a band around 1 (about [0.7, 1.2]; tests/test_optim_muon.py
measures it) instead of converging to exactly 1.

`ns_schedule="polar_express"` uses a different quintic at each of the five steps (Amsel et al.,
2025), which leaves the singular values in about [0.86, 1.14] for the same cost.

Three versions of the iteration live here, from plain to tuned: `newton_schulz_textbook` (the
lines above in NumPy, one matrix at a time), `newton_schulz5` (one matrix through the tuned
code) and `newton_schulz`, which the optimizer calls: every matrix of one shape in one stack,
in place in reused buffers, and for wide matrices in the Gram form (its docstring), which does
the same polynomial with fewer flops. The tests hold each to the textbook.

Meant for the hidden weight matrices of a network only; embeddings, the output head, norms and
biases go to AdamW (see groups.muon_hybrid).
"""
import math

import numpy as np

from .. import backend
from .optimizer import Optimizer

NS_COEFFS = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): one quintic per step, each
# chosen greedily to be the minimax-optimal odd polynomial for the interval the previous steps
# leave, with a 2% safety margin (the schedule modded-nanogpt uses). The singular values end much
# nearer 1 than with one fixed quintic (tests/test_optim_muon.py measures both), for the same
# five steps and the same cost.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# Polar Express scales G by (1 + 2e-2) ||G||_F, its safety margin: its first polynomial is steep
# and must not see a singular value above 1.
SCHEDULES = {"jordan": (NS_COEFFS, 1.0), "polar_express": (POLAR_EXPRESS_COEFFS, 1.02)}


def schedule_coeffs(schedule, steps):
    """The (a, b, c) of each of `steps` steps and the normalisation margin of a named schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Muon: ns_schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    coeffs, margin = SCHEDULES[schedule]
    if isinstance(coeffs[0], float):
        return [coeffs] * steps, margin
    if steps > len(coeffs):
        raise ValueError(f"Muon: the {schedule} schedule has {len(coeffs)} steps, got ns_steps={steps}")
    return list(coeffs[:steps]), margin


def newton_schulz_textbook(G, steps=5, eps=1e-7, schedule="jordan"):
    """The iteration as written in the module docstring, in plain NumPy, one matrix at a time:
    the reference the tuned `newton_schulz` is held to."""
    coeffs, margin = schedule_coeffs(schedule, steps)
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G
    X = X / (np.sqrt((X * X).sum()) * margin + eps)
    for a, b, c in coeffs:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def gram_is_cheaper(r, cols, steps):
    """Whether the Gram-space iteration (newton_schulz's second form) costs fewer flops.

    Products of the plain form per step: X X^T (r^2 cols), A A (r^3), B X (r^2 cols). The Gram
    form makes X X^T and the final Q X once and everything else on r x r matrices: A A each
    step, M Q and M A M between steps, 4 steps - 3 products of r^3 in all. It wins on wide
    matrices (cols >= 2r: 1.4x fewer flops at cols = 3r, 1.8x at 4r) and loses on square ones.
    """
    plain = steps * (2 * r * r * cols + r ** 3)
    gram = 2 * r * r * cols + (4 * steps - 3) * r ** 3
    return gram < 0.8 * plain


def newton_schulz(X, steps=5, eps=1e-7, schedule="jordan", work=None, form="auto"):
    """Newton-Schulz on a stack X of shape (n, r, cols), r <= cols, every matrix at once and
    each scaled by its own Frobenius norm. X is used as scratch (overwritten); the result is X
    itself or one of the buffers in `work` (a dict the caller keeps, so a step allocates
    nothing), valid until the next call with the same work.

    Two forms of the same polynomial, chosen by `gram_is_cheaper`:

    plain   A = X X^T;  X <- a X + (b A + c A^2) X, five times: what the module docstring says.
    Gram    Every iterate is X_k = Q_k X_0 with Q_k a polynomial in A_0 = X_0 X_0^T, so all the
            polynomials commute with A_0 and with each other. Then X_{k+1} = M_k X_k with
            M_k = a I + b A_k + c A_k^2, and A_{k+1} = X_{k+1} X_{k+1}^T = M_k A_k M_k. Iterate
            on the small r x r matrices only: A_0 once, M_k from A_k, Q_{k+1} = M_k Q_k,
            A_{k+1} = M_k A_k M_k, and X = Q X_0 at the end, two products of X's size instead
            of three per step. In exact arithmetic it is the same iterate; in float32 it agrees
            with the plain form to about 1e-4 relative (tests/test_optim_muon.py).
    """
    xp = backend.array_module(X)
    if X.ndim != 3 or X.shape[1] > X.shape[2]:
        raise ValueError(f"newton_schulz: expected a stack (n, r, cols) with r <= cols, got shape {X.shape}")
    coeffs, margin = schedule_coeffs(schedule, steps)
    n, r, cols = X.shape
    work = {} if work is None else work
    # form: "auto" (the cheaper), "plain" or "gram". The optimizer asks for "plain" for now: with
    # the Gram form, ZeRO-1's parameters drifted from plain data parallelism's by ~6e-6 after five
    # steps (tests/test_distributed.py), which is not understood yet
    gram = gram_is_cheaper(r, cols, steps) if form == "auto" else form == "gram"
    key = (n, r, cols, X.dtype, gram)
    if key not in work:
        small = [xp.empty((n, r, r), X.dtype) for _ in range(4)]
        work[key] = (xp.empty((n, r, cols), X.dtype), *small)
    Y, A, B, M, Q = work[key]
    # ||X_i||_F per matrix; on the GPU it stays on the device (a host read would stall the step)
    # one dot per matrix, not one einsum over the stack: a matrix's result must not depend on
    # which others share its stack (ZeRO-1 gives each rank a different subset)
    norms = xp.sqrt(xp.stack([xp.vdot(x.reshape(-1), x.reshape(-1)) for x in X]))
    norms *= margin
    norms += eps
    X /= norms[:, None, None]
    XT = X.transpose(0, 2, 1)
    xp.matmul(X, XT, out=A)                      # A_0 = X X^T
    if not gram:
        for k, (a, b, c) in enumerate(coeffs):
            if k:
                xp.matmul(X, XT, out=A)
            xp.matmul(A, A, out=B)               # A^2 (A is symmetric)
            B *= c
            A *= b
            B += A                               # B = b A + c A^2
            xp.matmul(B, X, out=Y)
            X *= a
            X += Y                               # X = a X + B X
        return X
    for k, (a, b, c) in enumerate(coeffs):
        xp.matmul(A, A, out=M)
        M *= c
        xp.multiply(A, b, out=B)
        M += B
        M.reshape(n, r * r)[:, ::r + 1] += a     # M = a I + b A + c A^2
        if k == 0:
            Q[...] = M
        else:
            xp.matmul(M, Q, out=B)
            Q, B = B, Q
        if k < len(coeffs) - 1:
            xp.matmul(M, A, out=B)
            xp.matmul(B, M, out=A)               # A <- M A M
    xp.matmul(Q, X, out=Y)                       # X_steps = Q X_0
    return Y


def newton_schulz5(G, steps=5, eps=1e-7, schedule="jordan"):
    """Newton-Schulz of one 2-D matrix G (any orientation): a fresh array, G's dtype."""
    xp = backend.array_module(G)
    if G.ndim != 2:
        raise ValueError(f"newton_schulz5: expected a 2-D matrix, got shape {G.shape}")
    tall = G.shape[0] > G.shape[1]
    X = xp.ascontiguousarray(G.T if tall else G)[None].copy()
    O = newton_schulz(X, steps, eps, schedule)[0]
    return (O.T if tall else O).copy()


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

    Each matrix (a tall one transposed to wide) goes to newton_schulz as a stack of one.
    ns_schedule: "jordan" (one quintic, above) or "polar_express" (one per step).

    map_fn(fn, items, costs) runs fn(item, t) for every stack's update (t: a worker index, for
    per-worker scratch buffers); by default one after another. The trainer passes
    parallel.on_cores, which runs the NumPy updates side by side, one stack per core: each
    update is a handful of small GEMMs, which one core does faster than all of them together.
    """
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                 ns_steps=5, eps=1e-7, adjust_lr="original", ns_schedule="jordan", map_fn=None):
        self.map_fn = map_fn or one_at_a_time
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, ns_steps=ns_steps, eps=eps,
                                      adjust_lr=adjust_lr, ns_schedule=ns_schedule))

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
        schedule_coeffs(group["ns_schedule"], group["ns_steps"])  # refuses an unknown schedule

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
        # per thread, per-stack buffers, reused every step
        works = bucket.__dict__.setdefault("ns_work", {})

        def update(stack, t):
            """One stack: matrices of one (r, cols) shape once the tall ones are transposed."""
            work = works.setdefault(t, {})
            r, cols = _wide_shape(stack[0][0].shape)
            key = ("u", len(stack), r, cols)
            if key not in work:
                work[key] = xp.empty((len(stack), r, cols), bucket.dtype)
            U = work[key]
            for i, (p, lo, hi) in enumerate(stack):
                rows = p.shape[0]
                buf, g = buf_all[lo:hi].reshape(rows, -1), g_all[lo:hi].reshape(rows, -1)
                tall = rows > buf.shape[1]
                if not group["nesterov"]:
                    U[i] = buf.T if tall else buf
                    continue
                # a tall matrix's u is made in its own orientation, then copied in transposed
                # (a plain strided copy: ufuncs writing into a transposed view would buffer)
                if tall and ("tall", buf.shape) not in work:
                    work[("tall", buf.shape)] = xp.empty_like(buf)
                u = work[("tall", buf.shape)] if tall else U[i]
                xp.subtract(buf, g, out=u)  # g + mu (buf - g): PyTorch's lerp(g, buf, mu)
                u *= mu
                u += g
                if tall:
                    U[i] = u.T
            O = newton_schulz(U, steps=group["ns_steps"], eps=group["eps"],
                              schedule=group["ns_schedule"], work=work, form="plain")
            for i, (p, lo, hi) in enumerate(stack):
                rows = p.shape[0]
                o = O[i]
                o *= lr * self.lr_scale(p.shape, group["adjust_lr"])
                p2 = p.data.reshape(rows, -1)  # a view: p.data is a contiguous slice of the bucket
                if wd:
                    p2 *= 1 - lr * wd
                p2 -= o.T if rows > p2.shape[1] else o

        items = list(bucket.slices())
        # one matrix per stack: batching several in one np.matmul measured no faster here, and a
        # matrix's update must not depend on which others share its stack (ZeRO-1 gives each
        # rank a different subset; tests/test_distributed.py checks it is bit for bit the same)
        if bucket.xp is np:
            stacks = [[item] for item in items]
            self.map_fn(update, stacks, [_ns_cost(s[0][0].shape) * len(s) for s in stacks])
        else:  # CuPy queues the GEMMs on one stream: threads would add nothing
            one_at_a_time(update, [[item] for item in items])


def _wide_shape(shape):
    """(r, cols) with r <= cols: the orientation Newton-Schulz works in."""
    rows, cols = shape[0], math.prod(shape[1:])
    return (cols, rows) if rows > cols else (rows, cols)


def one_at_a_time(fn, items, costs=None):
    """Muon's default map_fn: fn(item, 0) for each item, in order, in the calling thread."""
    for item in items:
        fn(item, 0)


def _ns_cost(shape):
    """Flops of one Newton-Schulz step, up to a constant: r^2 cols + r^3 with r the smaller side."""
    r, cols = sorted((shape[0], math.prod(shape[1:])))
    return r * r * cols + r ** 3
