"""Mixture-of-experts as ops: the router's choice and gate weights, the dispatch of tokens to
their experts, one GEMM per expert, the weighted combine, and the balancing losses.

A routed feed-forward layer (Shazeer et al. 2017; Switch, GShard; Mixtral, Qwen3-MoE, DeepSeek-V3)
with N tokens of width C, E experts and k experts per token:

    logits = x Wg^T                                  (N, E)   a Linear
    idx    = the k best experts per token            (N, k)   select_experts: integers, no gradient
    w      = the chosen experts' gate weights        (N, k)   TopKGate
    xs     = x's rows sorted by expert (stable)      (N k, C) Dispatch
    h      = xs[rows of e] @ W_e^T for each expert   (N k, .) ExpertLinear: one GEMM per expert
    y[t]   = sum_j w[t, j] ys[row of (t, j)]         (N, C)   Combine

Dispatch and combine are a permutation and its transpose: no padding to a capacity, no token
dropped, and no scatter-add: each token's k rows are gathered back and summed in a fixed order,
so every result repeats bit for bit (there are no float atomics to reorder on a GPU either).
The balancing losses (LoadBalanceLoss, RouterZLoss) read the router's logits.

`moe_textbook` is the whole layer as a loop over tokens and their experts, the reference the
tests hold the dispatched path to. Derivations: docs/backward.md#mixture-of-experts
"""
import os

import numpy as np

from .. import backend, blas
from ..autograd import Function
from ..backend import array_module, to_numpy
from ..cuda import syncs

SCORES = ("softmax", "sigmoid")
# DeepSeek-V3 divides by the sum of the chosen sigmoid scores plus this, so a sum of zeros
# cannot divide by zero (transformers' DeepseekV3TopkRouter adds the same)
SIGMOID_NORM_EPS = 1e-20


# ---------------------------------------------------------------------------------------------
# The router's scores and its choice (integers: no gradient)
# ---------------------------------------------------------------------------------------------

def softmax_rows(logits):
    """softmax over the last axis, shifted by the row max (router logits are few per row)."""
    xp = array_module(logits)
    e = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def sigmoid(x):
    xp = array_module(x)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + xp.exp(-x))


def router_scores(logits, score):
    """(N, E) scores the choice ranks: softmax probabilities (Mixtral, Qwen3-MoE) or sigmoids
    (DeepSeek-V3), computed as transformers does, in the logits' dtype."""
    if score not in SCORES:
        raise ValueError(f"router score {score!r}: expected one of {SCORES}")
    return softmax_rows(logits) if score == "softmax" else sigmoid(logits)


def check_router_logits(logits):
    """A clear error, naming the token, when a router's logits are not finite: NaN or inf logits
    give NaN scores, and a choice among NaNs would be a silent, meaningless routing."""
    xp = array_module(logits)
    bad_rows = ~xp.isfinite(logits).all(axis=-1)  # (N,)

    def describe():
        rows = np.flatnonzero(to_numpy(bad_rows))
        row = to_numpy(logits[int(rows[0])])
        n_nan = int(np.isnan(row).sum())
        what = "all NaN" if n_nan == row.size else f"{n_nan} NaN, {int(np.isinf(row).sum())} inf"
        return (f"MoE router: the scores of token {int(rows[0])} are {what} (of {row.size} "
                f"experts; {rows.size} of {logits.shape[0]} tokens have a non-finite score): "
                "the layer's input holds NaN or inf")
    syncs.check(bad_rows.any(), describe)


def _top_by_argmax(choice, k):
    """(N, k) the k largest entries per row, best first; a tie goes to the lower index.

    k passes of argmax, which NumPy and CuPy both define to return the first of equal maxima:
    the tie rule holds on both devices, where a sort's order of equal keys need not."""
    xp = array_module(choice)
    choice = choice.copy()
    rows = xp.arange(choice.shape[0])
    idx = xp.empty((choice.shape[0], k), dtype=np.int64)
    for j in range(k):
        best = choice.argmax(axis=-1)
        idx[:, j] = best
        choice[rows, best] = -np.inf
    return idx


def _pick(a, idx):
    """a[t, idx[t, j]] (N, k): the entries of each row at its chosen columns."""
    return a[array_module(a).arange(a.shape[0])[:, None], idx]


def select_experts(scores, k, bias=None, n_group=1, topk_group=1):
    """(N, k) int64 expert ids per token, best first, from scores (N, E).

    bias (E,), when given, is added for the choice only (DeepSeek-V3's e_score_correction_bias:
    it steers the load, the gate weights never see it). With n_group > 1 the E experts form
    n_group equal groups; a group's score is the sum of its two best choice scores, only the
    topk_group best groups stay eligible, and the k experts come from those (DeepSeek-V3's
    group-limited routing). Ties: the lower expert (or group) index wins.
    """
    xp = array_module(scores)
    N, E = scores.shape
    choice = scores if bias is None else scores + bias
    if n_group > 1:
        per = E // n_group
        grouped = choice.reshape(N, n_group, per)  # (N, G, E/G)
        flat = grouped.reshape(N * n_group, per)  # (N G, E/G)
        best2 = _pick(flat, _top_by_argmax(flat, 2))  # (N G, 2)
        group_scores = best2.sum(axis=-1).reshape(N, n_group)  # (N, G)
        keep = _top_by_argmax(group_scores, topk_group)  # (N, topk_group)
        allowed = xp.zeros((N, n_group), dtype=bool)
        allowed[xp.arange(N)[:, None], keep] = True
        choice = xp.where(xp.repeat(allowed, per, axis=-1), choice, -np.inf)  # (N, E)
    return _top_by_argmax(choice, k)


def select_experts_textbook(scores, k, bias=None, n_group=1, topk_group=1):
    """select_experts as a loop over tokens with Python's sort: (score desc, index asc)."""
    scores = np.asarray(scores, dtype=np.float64)
    N, E = scores.shape
    choice = scores + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    per = E // n_group
    out = np.empty((N, k), dtype=np.int64)
    for t in range(N):
        groups = sorted(range(n_group),
                        key=lambda g: (-sum(sorted(choice[t, g * per:(g + 1) * per])[-2:]), g))
        eligible = [e for g in groups[:topk_group] for e in range(g * per, (g + 1) * per)]
        if n_group == 1:
            eligible = list(range(E))
        out[t] = sorted(eligible, key=lambda e: (-choice[t, e], e))[:k]
    return out


# ---------------------------------------------------------------------------------------------
# The gate weights of the chosen experts
# ---------------------------------------------------------------------------------------------

class TopKGate(Function):
    """w = the gate weights of the k chosen experts idx (N, k), from the router's logits (N, E).

    softmax:  p = softmax(logits), w = p[idx], or w = p[idx] / sum_j p[idx_j] when normalized
              (then w = softmax over the chosen logits alone: the others get no gradient).
    sigmoid:  s = sigmoid(logits), w = s[idx], or s[idx] / (sum_j s[idx_j] + 1e-20) (DeepSeek-V3).
    Both times `scale` (routed_scaling_factor) multiplies w. idx is a constant: the choice is an
    integer function of the logits, flat almost everywhere, so it carries no gradient.

    Backward: with g = dy * scale and w' the weights before scale,
      softmax, normalized:  dlogits[idx] = w' (g - sum_j w'_j g_j), 0 elsewhere
      softmax, plain:       dlogits = p (G - sum_j w'_j g_j), G = g scattered into (N, E)
      sigmoid:              dlogits[idx] = ds s (1 - s), ds = g, or (g - sum_j w'_j g_j) / S
                            when normalized (S the denominator); 0 elsewhere.
    Saved: the (N, E) probabilities (plain softmax) or the chosen scores, w' and idx.
    Derivation: docs/backward.md#topkgate
    """

    @staticmethod
    def forward(ctx, logits, idx, score="softmax", normalize=True, scale=1.0):
        if logits.ndim != 2 or idx.ndim != 2 or idx.shape[0] != logits.shape[0]:
            raise ValueError(f"topk_gate: logits (N, E) and idx (N, k) expected, got {logits.shape} "
                             f"and {idx.shape}")
        s = router_scores(logits, score)  # (N, E)
        w = _pick(s, idx)  # (N, k)
        denom = None
        if normalize:
            denom = w.sum(axis=-1, keepdims=True)  # (N, 1)
            if score == "sigmoid":
                denom += SIGMOID_NORM_EPS
            w = w / denom
        keep_all = score == "softmax" and not normalize  # the unchosen logits take a gradient too
        ctx.save_for_backward(s if keep_all else _pick(s, idx), w, idx, denom)
        ctx.score, ctx.normalize, ctx.scale, ctx.E = score, normalize, float(scale), logits.shape[1]
        return w * ctx.scale if ctx.scale != 1.0 else w

    @staticmethod
    def backward(ctx, dy):
        s, w, idx, denom = ctx.saved
        xp = array_module(dy)
        g = dy * ctx.scale if ctx.scale != 1.0 else dy  # (N, k)
        wg = (w * g).sum(axis=-1, keepdims=True)  # (N, 1)
        if ctx.score == "softmax" and not ctx.normalize:  # s is p (N, E)
            G = xp.zeros_like(s)
            G[xp.arange(G.shape[0])[:, None], idx] = g
            return s * (G - wg)
        if ctx.score == "softmax":  # a softmax over the chosen logits
            d_chosen = w * (g - wg)
        else:  # s holds the chosen sigmoids
            ds = (g - wg) / denom if ctx.normalize else g
            d_chosen = ds * s * (1.0 - s)
        dlogits = xp.zeros((dy.shape[0], ctx.E), dtype=dy.dtype)
        dlogits[xp.arange(dy.shape[0])[:, None], idx] = d_chosen  # the k ids of a row are distinct
        return dlogits


# ---------------------------------------------------------------------------------------------
# Dispatch, one GEMM per expert, combine
# ---------------------------------------------------------------------------------------------

class DispatchPlan:
    """Where each (token, choice) slot goes when the N k slots are sorted by expert.

    order   (N k,)  slot ids (t k + j) in sorted order: by expert, then by slot (stable)
    rows    (N k,)  the token of each sorted row, order // k
    inv     (N k,)  the sorted row of each slot: the inverse permutation of order
    counts  (E,)    tokens per expert (host ints); offsets (E + 1,): expert e owns rows
                    offsets[e]:offsets[e + 1]
    """

    def __init__(self, idx, n_experts):
        xp = array_module(idx)
        N, k = idx.shape
        M = N * k
        flat = idx.reshape(-1).astype(np.int64)  # (N k,) expert of each slot
        # the slot id breaks ties in the key itself, so any sort gives the stable order
        self.order = xp.argsort(flat * M + xp.arange(M, dtype=np.int64))
        self.rows = self.order // k
        self.inv = xp.empty_like(self.order)
        self.inv[self.order] = xp.arange(M, dtype=self.order.dtype)
        # the one host read of the layer (a sync on a GPU): GEMM sizes live on the host
        self.counts = np.asarray(to_numpy(xp.bincount(flat, minlength=n_experts)), dtype=np.int64)
        self.offsets = [0] + np.cumsum(self.counts).tolist()
        self.n_tokens, self.k, self.n_experts = N, k, n_experts


class Dispatch(Function):
    """xs = x[rows]: each token's row copied once per chosen expert, in the plan's sorted order.

    A gather by a permutation of the N k slots. Backward, its transpose: dx[t] =
    sum_j dxs[inv[t k + j]], each token's k rows gathered back and summed in the order j = 0..k-1
    (no scatter-add, so the sum is the same every run). Saved: inv.
    Derivation: docs/backward.md#dispatch
    """

    @staticmethod
    def forward(ctx, x, plan):
        if x.ndim != 2 or x.shape[0] != plan.n_tokens:
            raise ValueError(f"dispatch: x must be (N, C) with N = {plan.n_tokens} tokens, got {x.shape}")
        ctx.save_for_backward(plan.inv)
        ctx.k = plan.k
        return array_module(x).take(x, plan.rows, axis=0)  # (N k, C)

    @staticmethod
    def backward(ctx, dxs):
        (inv,) = ctx.saved
        xp = array_module(dxs)
        g = xp.take(dxs, inv, axis=0)  # (N k, C) in slot order
        N, C = g.shape[0] // ctx.k, g.shape[1]
        return g.reshape(N, ctx.k, C).sum(axis=1) if ctx.k > 1 else g


def _mm_into(a, b, out):
    """out[...] = a @ b, in place where the module allows it (NumPy and CuPy both take out=)."""
    array_module(a).matmul(a, b, out=out)


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def run_experts(jobs, xp):
    """Run the per-expert GEMMs jobs [(rows, fn)], each writing its own output block.

    On the CPU, while BLAS may use several threads, the experts are spread over the cores instead
    (largest first, each to the least loaded core) with one BLAS thread each: an expert's GEMM has
    only its own rows, and OpenBLAS splits such a GEMM over the cores worse than whole GEMMs side
    by side. Where BLAS is already held to one thread (the sharded step runs one shard per core),
    on the GPU, or with one core, they run one after the other. Every job writes a block no other
    touches, so the result is the same either way, bit for bit."""
    k = min(_cores(), len(jobs))
    if xp is not np or k <= 1 or not blas.available() or (blas.get_threads() or 1) <= 1:
        for _, fn in jobs:
            fn()
        return
    loads, mine = [0] * k, [[] for _ in range(k)]
    for rows, fn in sorted(jobs, key=lambda j: -j[0]):
        t = loads.index(min(loads))
        mine[t].append(fn)
        loads[t] += rows

    def run(t):
        for fn in mine[t]:
            fn()

    with blas.threads(1):
        pool = backend.thread_pool("experts", k - 1)
        futures = [pool.submit(run, t) for t in range(1, k)]
        error = None
        try:
            run(0)
        except BaseException as e:  # noqa: BLE001 - re-raised once the others are done
            error = e
        for f in futures:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001
                error = error or e
    if error is not None:
        raise error


class ExpertLinear(Function):
    """y[rows of e] = xs[rows of e] @ W[e]^T for each expert e: xs (N k, in) sorted by expert,
    W (E, out, in) the experts' weights stacked as a checkpoint stores them.

    One GEMM per expert over its contiguous rows, no padding; an expert with no rows costs
    nothing. Backward, per expert: dxs[rows of e] = dy[rows of e] @ W[e],
    dW[e] = dy[rows of e]^T xs[rows of e] (zero for an expert that received no token).
    Saved: xs if W needs a gradient, W if xs does.  Derivation: docs/backward.md#expertlinear
    """

    @staticmethod
    def forward(ctx, xs, weight, offsets):
        if weight.ndim != 3 or xs.ndim != 2 or xs.shape[1] != weight.shape[2]:
            raise ValueError(f"expert_linear: xs {xs.shape} does not fit stacked weights {weight.shape} "
                             "(expected xs (rows, in) and weights (E, out, in))")
        if len(offsets) != weight.shape[0] + 1 or offsets[-1] != xs.shape[0]:
            raise ValueError(f"expert_linear: offsets for {len(offsets) - 1} experts covering "
                             f"{offsets[-1]} rows do not fit xs {xs.shape} and weights {weight.shape}")
        xp = array_module(xs)
        y = xp.empty((xs.shape[0], weight.shape[1]), dtype=xs.dtype)
        run_experts([(hi - lo, lambda e=e, lo=lo, hi=hi: _mm_into(xs[lo:hi], weight[e].T, y[lo:hi]))
                     for e, (lo, hi) in enumerate(zip(offsets, offsets[1:])) if hi > lo], xp)
        need_x, need_w = ctx.needs_input_grad
        ctx.save_for_backward(xs if need_w else None, weight if need_x else None)
        ctx.offsets, ctx.w_shape = offsets, weight.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        xs, weight = ctx.saved
        need_x, need_w = ctx.needs_input_grad
        xp = array_module(dy)
        spans = [(e, lo, hi) for e, (lo, hi) in enumerate(zip(ctx.offsets, ctx.offsets[1:]))]
        dxs = xp.empty((dy.shape[0], ctx.w_shape[2]), dtype=dy.dtype) if need_x else None
        dw = xp.empty(ctx.w_shape, dtype=dy.dtype) if need_w else None
        jobs = []
        for e, lo, hi in spans:
            if hi == lo:
                if need_w:
                    dw[e] = 0  # an expert no token reached: its weights get a zero gradient
                continue
            if need_x:
                jobs.append((hi - lo, lambda e=e, lo=lo, hi=hi: _mm_into(dy[lo:hi], weight[e], dxs[lo:hi])))
            if need_w:
                jobs.append((hi - lo, lambda e=e, lo=lo, hi=hi: _mm_into(dy[lo:hi].T, xs[lo:hi], dw[e])))
        run_experts(jobs, xp)
        return dxs, dw


class Combine(Function):
    """y[t] = sum_j w[t, j] ys[inv[t k + j]]: each token's k expert outputs, weighted, summed in
    the order j = 0..k-1. ys (N k, C) in sorted order, w (N, k) the gate weights.

    Backward: dw[t, j] = dy[t] . ys[inv[t k + j]];  dys[r] = w[slot r] dy[token r] for the
    slot order[r] of sorted row r (the transpose of the gather: every row gets exactly one).
    Saved: the gathered outputs (N, k, C), w, and order.  Derivation: docs/backward.md#combine
    """

    @staticmethod
    def forward(ctx, ys, w, plan):
        N, k = plan.n_tokens, plan.k
        if ys.ndim != 2 or ys.shape[0] != N * k or w.shape != (N, k):
            raise ValueError(f"combine: ys (N k, C) and w (N, k) with N = {N}, k = {k} expected, "
                             f"got {ys.shape} and {w.shape}")
        xp = array_module(ys)
        g = xp.take(ys, plan.inv, axis=0).reshape(N, k, ys.shape[1])  # (N, k, C) slot order
        y = g[:, 0] * w[:, 0:1]
        for j in range(1, k):
            y += g[:, j] * w[:, j:j + 1]
        need_ys, need_w = ctx.needs_input_grad
        ctx.save_for_backward(g if need_w else None, w if need_ys else None, plan.order)
        return y

    @staticmethod
    def backward(ctx, dy):
        g, w, order = ctx.saved
        need_ys, need_w = ctx.needs_input_grad
        xp = array_module(dy)
        dys = dw = None
        if need_w:
            dw = xp.einsum("nkc,nc->nk", g, dy)
        if need_ys:
            N, k = w.shape
            slots = (w[:, :, None] * dy[:, None, :]).reshape(N * k, dy.shape[1])  # (N k, C) slot order
            dys = xp.take(slots, order, axis=0)
        return dys, dw


# ---------------------------------------------------------------------------------------------
# Balancing losses
# ---------------------------------------------------------------------------------------------

def _balance_probs(logits, score):
    """(N, E) the router's distribution over experts: softmax probabilities, or for a sigmoid
    router its scores normalised to sum 1 (DeepSeek-V3's s / sum s); and the sigmoids."""
    if score == "softmax":
        return softmax_rows(logits), None
    s = sigmoid(logits)
    return s / s.sum(axis=-1, keepdims=True), s


class LoadBalanceLoss(Function):
    """aux = E sum_e f_e P_e: f_e = counts[e] / N, the share of the N tokens' choices that went
    to expert e (a constant: counts are integers), and P_e = mean_t p[t, e], the router's mean
    probability for e (Switch Transformer's loss; with k choices it is transformers'
    load_balancing_loss_func on one layer, k at a perfect balance). p: softmax(logits), or for a
    sigmoid router s / sum_e s.

    Backward: dp[t, e] = dy E f_e / N for every t, then softmax's rule,
    dlogits = p (dp - sum_e p dp); for sigmoid scores ds = (dp - sum_e p dp) / sum_e s and
    dlogits = ds s (1 - s). Saved: p (and s).  Derivation: docs/backward.md#loadbalanceloss
    """

    @staticmethod
    def forward(ctx, logits, counts, score="softmax"):
        xp = array_module(logits)
        N, E = logits.shape
        p, s = _balance_probs(logits, score)
        f = xp.asarray(counts, dtype=logits.dtype) / N  # (E,)
        P = p.mean(axis=0)  # (E,)
        ctx.save_for_backward(p, s, f)
        return xp.asarray(E * (f * P).sum(), dtype=logits.dtype)

    @staticmethod
    def backward(ctx, dy):
        p, s, f = ctx.saved
        N, E = p.shape
        dp = (dy * E / N) * f  # (E,): the same for every token
        dq = dp - (p * dp).sum(axis=-1, keepdims=True)  # (N, E)
        if s is None:
            return p * dq
        return dq / s.sum(axis=-1, keepdims=True) * s * (1.0 - s)


class RouterZLoss(Function):
    """z = mean_t (log sum_e exp logits[t, e])^2 (ST-MoE's router z-loss: keeps logits small).

    Backward: dlogits[t] = dy (2 / N) lse_t softmax(logits[t]).  Saved: lse and the softmax.
    Derivation: docs/backward.md#routerzloss
    """

    @staticmethod
    def forward(ctx, logits):
        xp = array_module(logits)
        m = logits.max(axis=-1, keepdims=True)
        e = xp.exp(logits - m)
        z = e.sum(axis=-1, keepdims=True)
        lse = m + xp.log(z)  # (N, 1)
        ctx.save_for_backward(lse, e / z)
        return xp.asarray((lse * lse).mean(), dtype=logits.dtype)

    @staticmethod
    def backward(ctx, dy):
        lse, p = ctx.saved
        return (dy * 2.0 / p.shape[0]) * lse * p


def routing_entropy(logits, score):
    """Mean over tokens of the entropy (nats) of the router's distribution over experts (softmax
    probabilities, or normalised sigmoid scores): log E is uniform routing, 0 a one-hot router."""
    xp = array_module(logits)
    p, _ = _balance_probs(logits, score)
    return -(p * xp.log(xp.maximum(p, np.finfo(p.dtype).tiny))).sum(axis=-1).mean()


# ---------------------------------------------------------------------------------------------
# The textbook version of the whole layer
# ---------------------------------------------------------------------------------------------

def moe_textbook(x, gate_weight, experts, k, score="softmax", normalize=True, scale=1.0, bias=None,
                 n_group=1, topk_group=1, act="swiglu"):
    """The routed part of an MoE layer, token by token, float64: for token t and each chosen
    expert e, the expert's MLP on x[t] times its gate weight, summed. experts: (w1, w2) with w1
    (E, 2I, C) (gate rows, then up rows) for "swiglu" or (E, I, C) for "gelu", w2 (E, C, I)."""
    from .activation import gelu_textbook
    x, Wg = np.asarray(x, np.float64), np.asarray(gate_weight, np.float64)
    w1, w2 = (np.asarray(a, np.float64) for a in experts)
    logits = x @ Wg.T  # (N, E)
    s = router_scores(logits, score)
    idx = select_experts_textbook(s, k, bias, n_group, topk_group)
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        wt = s[t, idx[t]]
        if normalize:
            wt = wt / (wt.sum() + (SIGMOID_NORM_EPS if score == "sigmoid" else 0.0))
        for j, e in enumerate(idx[t]):
            h = w1[e] @ x[t]
            if act == "swiglu":
                gate, up = np.split(h, 2)
                a = gate / (1.0 + np.exp(-gate)) * up
            else:
                a = gelu_textbook(h, "tanh")
            y[t] += scale * wt[j] * (w2[e] @ a)
    return y
