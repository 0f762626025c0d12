"""The mixture-of-experts ops: the choice (ties, groups, bias) against a sort-based textbook, every
op gradchecked in float64 on hypothesis shapes (experts with no token and tied router scores
included), and the dispatched layer against the token-by-token textbook."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from opcheck import SETTINGS, check, seeds, values

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops.moe import (DispatchPlan, moe_textbook, router_scores, select_experts,
                                  select_experts_textbook, softmax_rows)


def tied_scores(N, E, seed, levels=3):
    """Scores drawn from a few values, so most rows have ties (the choice must still be defined)."""
    return np.random.default_rng(seed).integers(0, levels, (N, E)).astype(np.float64) / levels


@SETTINGS
@given(N=st.integers(1, 6), groups=st.sampled_from([(1, 1, 1), (1, 1, 4), (2, 1, 2), (2, 2, 3), (4, 2, 2)]),
       per=st.integers(2, 4), seed=seeds, ties=st.booleans(), with_bias=st.booleans())
def test_select_experts_matches_the_textbook(N, groups, per, seed, ties, with_bias):
    n_group, topk_group, k = groups
    E = n_group * per
    assume(k <= topk_group * per)
    scores = tied_scores(N, E, seed) if ties else values((N, E), seed)
    bias = values((E,), seed + 1) * 0.1 if with_bias else None
    got = select_experts(scores, k, bias, n_group, topk_group)
    np.testing.assert_array_equal(got, select_experts_textbook(scores, k, bias, n_group, topk_group))


def test_ties_go_to_the_lower_expert_id():
    scores = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.7, 0.7, 0.7], [0.3, 0.3, 0.9, 0.3]])
    np.testing.assert_array_equal(select_experts(scores, 2), [[0, 1], [1, 2], [2, 0]])
    # groups tie too: groups (0, 1) and (2, 3) both score 1.0; the lower group wins
    np.testing.assert_array_equal(select_experts(scores[:1], 2, n_group=2, topk_group=1), [[0, 1]])
    # the choice bias breaks a tie without touching the scores
    np.testing.assert_array_equal(select_experts(scores[:1], 1, bias=np.array([0, 0, 0.01, 0])), [[2]])


def test_group_limited_choice_keeps_to_the_best_groups():
    # group 1 (experts 2, 3) has the best single expert's partner missing: sum of two best decides
    scores = np.array([[0.60, 0.55, 0.90, 0.00, 0.50, 0.50]])
    # group sums of the two best: g0 = 1.15, g1 = 0.90, g2 = 1.00 -> with topk_group=1 only g0
    np.testing.assert_array_equal(select_experts(scores, 2, n_group=3, topk_group=1), [[0, 1]])
    np.testing.assert_array_equal(select_experts(scores, 2, n_group=3, topk_group=2), [[0, 1]])
    np.testing.assert_array_equal(select_experts(scores, 3, n_group=3, topk_group=2), [[0, 1, 4]])
    np.testing.assert_array_equal(select_experts(scores, 1, n_group=1), [[2]])


# --- TopKGate -------------------------------------------------------------------------------------
def gate_ref(score, normalize, scale):
    def ref(logits, idx):
        s = router_scores(logits, score)
        w = np.take_along_axis(s, idx, axis=-1)
        if normalize:
            w = w / (w.sum(-1, keepdims=True) + (1e-20 if score == "sigmoid" else 0.0))
        return w * scale
    return ref


@SETTINGS
@given(N=st.integers(1, 5), E=st.integers(1, 6), k=st.integers(1, 4), seed=seeds, ties=st.booleans(),
       score=st.sampled_from(["softmax", "sigmoid"]), normalize=st.booleans(),
       scale=st.sampled_from([1.0, 2.5]))
def test_topk_gate_gradcheck(device, N, E, k, seed, ties, score, normalize, scale):
    k = min(k, E)
    logits = tied_scores(N, E, seed) * 3 if ties else values((N, E), seed)
    # the choice is made once, from tied logits too; the gate is differentiated with it held fixed
    idx = select_experts(router_scores(logits, score), k)
    ref = gate_ref(score, normalize, scale)
    check(lambda lg: F.topk_gate(lg, idx, score, normalize, scale), lambda lg: ref(lg, idx), [logits], device)


def test_renormalised_softmax_gate_ignores_the_unchosen_logits():
    logits = Tensor(values((3, 5), 0), requires_grad=True)
    idx = select_experts(softmax_rows(logits.numpy()), 2)
    (F.topk_gate(logits, idx, "softmax", True) * Tensor(values((3, 2), 1))).sum().backward()
    g = logits.grad.numpy()
    unchosen = np.ones_like(g, bool)
    np.put_along_axis(unchosen, idx, False, axis=-1)
    assert np.all(g[unchosen] == 0) and np.all(g[~unchosen] != 0)
    logits.grad = None  # without renormalising, every logit moves the softmax's denominator
    (F.topk_gate(logits, idx, "softmax", False) * Tensor(values((3, 2), 1))).sum().backward()
    assert np.all(logits.grad.numpy() != 0)


# --- dispatch, expert GEMMs, combine ---------------------------------------------------------------
def plan_for(N, E, k, seed, empty=0):
    """A plan whose tokens avoid the last `empty` experts (experts that receive no token)."""
    scores = values((N, E), seed)
    scores[:, E - empty:] = -10.0
    return DispatchPlan(select_experts(scores, k), E)


@SETTINGS
@given(N=st.integers(1, 6), E=st.integers(1, 5), k=st.integers(1, 3), C=st.integers(1, 4), seed=seeds)
def test_dispatch_gradcheck(device, N, E, k, C, seed):
    k = min(k, E)
    plan = plan_for(N, E, k, seed)
    check(lambda x: F.dispatch(x, plan), lambda x: x[np.asarray(plan.rows)], [values((N, C), seed + 1)], device)


@SETTINGS
@given(N=st.integers(1, 6), E=st.integers(1, 5), k=st.integers(1, 3), C=st.integers(1, 4),
       seed=seeds, grad=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_combine_gradcheck(device, N, E, k, C, seed, grad):
    k = min(k, E)
    plan = plan_for(N, E, k, seed)

    def ref(ys, w):
        slots = ys[np.asarray(plan.inv)].reshape(N, k, C)
        return (w[:, :, None] * slots).sum(axis=1)
    check(lambda ys, w: F.combine(ys, w, plan), ref, [values((N * k, C), seed + 1), values((N, k), seed + 2)],
          device, grad=list(grad))


@SETTINGS
@given(N=st.integers(1, 6), E=st.integers(2, 5), k=st.integers(1, 2), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), empty=st.integers(0, 2), seed=seeds,
       grad=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_expert_linear_gradcheck_with_idle_experts(device, N, E, k, n_in, n_out, empty, seed, grad):
    empty = min(empty, E - k)
    plan = plan_for(N, E, k, seed, empty)
    assert all(plan.counts[E - empty:] == 0)
    off = plan.offsets

    def ref(xs, w):
        return np.concatenate([xs[lo:hi] @ w[e].T for e, (lo, hi) in enumerate(zip(off, off[1:]))])
    xs, w = values((N * k, n_in), seed + 1), values((E, n_out, n_in), seed + 2)
    check(lambda xs, w: F.expert_linear(xs, w, off), ref, [xs, w], device, grad=list(grad))
    if grad[1] and empty:
        wt = Tensor(w, requires_grad=True)
        F.expert_linear(Tensor(xs), wt, off).sum().backward()
        assert np.all(wt.grad.numpy()[E - empty:] == 0)  # an idle expert's weights get exactly zero


# --- balancing losses ---------------------------------------------------------------------------
@SETTINGS
@given(N=st.integers(1, 6), E=st.integers(1, 6), k=st.integers(1, 3), seed=seeds,
       score=st.sampled_from(["softmax", "sigmoid"]))
def test_load_balance_loss_gradcheck(device, N, E, k, seed, score):
    k = min(k, E)
    logits = values((N, E), seed)
    counts = DispatchPlan(select_experts(router_scores(logits, score), k), E).counts

    def ref(lg):
        p = router_scores(lg, score)
        if score == "sigmoid":
            p = p / p.sum(-1, keepdims=True)
        return np.asarray(E * np.sum(counts / N * p.mean(0)))
    check(lambda lg: F.load_balance_loss(lg, counts, score), ref, [logits], device)


def test_load_balance_loss_is_k_at_a_perfect_balance_and_more_when_skewed():
    N, E, k = 8, 4, 2
    even = F.load_balance_loss(Tensor(np.zeros((N, E))), np.full(E, N * k // E)).item()
    assert even == pytest.approx(k)
    skewed = np.zeros((N, E))
    skewed[:, 0] = 3.0
    assert F.load_balance_loss(Tensor(skewed), np.array([N, N, 0, 0])).item() > k


@SETTINGS
@given(N=st.integers(1, 6), E=st.integers(1, 6), seed=seeds, scale=st.sampled_from([1.0, 30.0]))
def test_router_z_loss_gradcheck(device, N, E, seed, scale):
    def ref(lg):
        m = lg.max(-1, keepdims=True)
        lse = m + np.log(np.exp(lg - m).sum(-1, keepdims=True))
        return np.asarray((lse ** 2).mean())
    check(F.router_z_loss, ref, [values((N, E), seed) * scale], device)


# --- the whole routed layer --------------------------------------------------------------------
@SETTINGS
@given(N=st.integers(1, 6), C=st.integers(1, 4), I=st.integers(1, 3), seed=seeds,
       router=st.sampled_from([("softmax", True, 1, 1, 2), ("softmax", False, 1, 1, 2),
                               ("sigmoid", True, 2, 1, 2), ("sigmoid", True, 2, 2, 3), ("sigmoid", False, 1, 1, 1)]),
       act=st.sampled_from(["swiglu", "gelu"]))
def test_moe_layer_matches_the_textbook_and_gradchecks(N, C, I, seed, router, act):
    from tinygrad_llm.nn.moe import MoE
    score, norm, n_group, topk_group, k = router
    E = 4
    tl.manual_seed(seed)
    moe = MoE(C, E, k, I, act=act, router=score, norm_topk_prob=norm, n_group=n_group, topk_group=topk_group,
              routed_scaling_factor=1.5, dtype=np.float64)
    if score == "sigmoid":
        moe.gate.e_score_correction_bias.data[...] = values((E,), seed + 2) * 0.05
    x = values((N, C), seed + 1)
    logits = x @ moe.gate.weight.numpy().T
    s = router_scores(logits, score)
    bias = moe.gate.e_score_correction_bias.numpy() if score == "sigmoid" else None
    # finite differences must not cross a change of choice: keep the k-th and (k+1)-th apart
    choice = np.sort(s + (0 if bias is None else bias), axis=-1)[:, ::-1]
    assume(k == E or np.all(choice[:, k - 1] - choice[:, k] > 1e-4))
    w1 = moe.experts.gate_up_proj if act == "swiglu" else moe.experts.up_proj
    want = moe_textbook(x, moe.gate.weight.numpy(), (w1.numpy(), moe.experts.down_proj.numpy()), k, score,
                        norm, 1.5, bias, n_group, topk_group, act)
    np.testing.assert_allclose(moe(Tensor(x)).numpy(), want, rtol=1e-12, atol=1e-12)
    xt = Tensor(x, requires_grad=True)
    assert tl.gradcheck(lambda *_: moe(xt), [xt, moe.gate.weight, w1, moe.experts.down_proj],
                        atol=1e-7, rtol=1e-5)


def test_the_dispatched_layer_repeats_bit_for_bit():
    from tinygrad_llm.nn.moe import MoE
    moe = MoE(16, 8, 2, 12, n_shared=1)
    x = Tensor(values((40, 16), 3).astype(np.float32), requires_grad=True)
    runs = []
    for _ in range(2):
        x.grad = None
        for p in moe.parameters():
            p.grad = None
        moe(x).sum().backward()
        runs.append([x.grad.numpy().copy()] + [p.grad.numpy().copy() for p in moe.parameters()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_experts_spread_over_cores_give_the_same_bits_as_one_after_another():
    from tinygrad_llm import blas
    if not blas.available():
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads can be set")
    plan = plan_for(300, 8, 2, 0)
    xs, w = (values(s, 1).astype(np.float32) for s in ((600, 32), (8, 24, 32)))
    dy = values((600, 24), 2).astype(np.float32)
    runs = []
    for threads in (2, 1):  # one thread per call: the experts run one after another
        with blas.threads(threads):
            xt, wt = Tensor(xs, requires_grad=True), Tensor(w, requires_grad=True)
            y = F.expert_linear(xt, wt, plan.offsets)
            y.backward(Tensor(dy))
            runs.append((y.numpy(), xt.grad.numpy(), wt.grad.numpy()))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
