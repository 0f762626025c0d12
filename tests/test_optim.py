"""Optimizers against hand-written NumPy references, on real problems, and through resumes.

The references below are written out here, line by line from the papers / PyTorch's docs, in
float64 NumPy; they share no code with tinygrad_llm.optim.
"""
import copy
import math

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, nn, optim

# --- a quadratic whose gradient depends on the parameters: g = A * (p - t) ----------------------


def quad_problem(rng, shapes, dtype):
    A = [rng.uniform(0.5, 2.0, s) for s in shapes]
    t = [rng.standard_normal(s) for s in shapes]
    p0 = [rng.standard_normal(s) for s in shapes]
    params = [nn.Parameter(p.astype(dtype)) for p in p0]
    return A, t, p0, params


def quad_backward(params, A, t):
    loss = None
    for p, a, tt in zip(params, A, t):
        term = (((p - Tensor(tt.astype(p.dtype))) ** 2) * Tensor(a.astype(p.dtype))).sum() * 0.5
        loss = term if loss is None else loss + term
    loss.backward()


def run_ours(opt, params, A, t, steps):
    for _ in range(steps):
        opt.zero_grad()
        quad_backward(params, A, t)
        opt.step()
    return [p.numpy().astype(np.float64) for p in params]


def sgd_ref(p, a, t, steps, lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False):
    p, buf = p.copy(), None
    for _ in range(steps):
        d = a * (p - t) + wd * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def adam_ref(p, a, t, steps, lr, b1, b2, eps, wd, decoupled):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for k in range(1, steps + 1):
        g = a * (p - t)
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** k), v / (1 - b2 ** k)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


SHAPES = [(3, 4), (5,), (2, 1, 3)]

CASES = [
    ("sgd", dict(lr=0.1), dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01), dict(lr=0.05, momentum=0.9, wd=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1), dict(lr=0.05, momentum=0.9, dampening=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
     dict(lr=0.05, momentum=0.8, nesterov=True, wd=0.1)),
    ("adam", dict(lr=0.1, betas=(0.9, 0.99), eps=1e-8), dict(wd=0.0)),
    ("adam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), dict(wd=0.1)),
    ("adamw", dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05), dict(wd=0.05)),
    ("adamw", dict(lr=0.03, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.0), dict(wd=0.0)),
]


def make(kind, params, kw):
    return {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[kind](params, **kw)


def reference(kind, p, a, t, steps, kw, ref_kw):
    if kind == "sgd":
        return sgd_ref(p, a, t, steps, **ref_kw)
    b1, b2 = kw["betas"]
    return adam_ref(p, a, t, steps, kw["lr"], b1, b2, kw["eps"], ref_kw["wd"], kind == "adamw")


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("kind,kw,ref_kw", CASES)
def test_first_steps_match_hand_reference(kind, kw, ref_kw, dtype, atol):
    rng = np.random.default_rng(1)
    A, t, p0, params = quad_problem(rng, SHAPES, dtype)
    got = run_ours(make(kind, params, kw), params, A, t, steps=4)
    for g, p, a, tt in zip(got, p0, A, t):
        want = reference(kind, p, a, tt, 4, kw, ref_kw)
        np.testing.assert_allclose(g, want, rtol=0, atol=atol)
        assert not np.allclose(want, p)  # the steps moved the parameters


def test_param_groups_have_their_own_hyperparameters_and_lr_is_settable():
    rng = np.random.default_rng(2)
    A, t, p0, params = quad_problem(rng, [(4, 3), (6,)], np.float64)
    opt = optim.AdamW([{"params": [params[0]], "weight_decay": 0.1},
                       {"params": [params[1]], "lr": 0.02, "weight_decay": 0.0}], lr=0.05)
    assert opt.param_groups[1]["lr"] == 0.02 and opt.param_groups[0]["lr"] == 0.05
    run_ours(opt, params, A, t, steps=2)
    opt.param_groups[0]["lr"] = 0.01  # takes effect on the next step, as in PyTorch
    run_ours(opt, params, A, t, steps=2)
    # reference: two steps at lr 0.05 then two at 0.01 (bias correction keeps counting)
    p, a, tt = p0[0].copy(), A[0], t[0]
    m, v = np.zeros_like(p), np.zeros_like(p)
    for k in range(1, 5):
        lr = 0.05 if k <= 2 else 0.01
        g = a * (p - tt)
        p = p * (1 - lr * 0.1)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p = p - lr * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
    np.testing.assert_allclose(params[0].numpy(), p, atol=1e-12)
    want1 = adam_ref(p0[1], A[1], t[1], 4, 0.02, 0.9, 0.999, 1e-8, 0.0, True)
    np.testing.assert_allclose(params[1].numpy(), want1, atol=1e-12)


# --- real problems ------------------------------------------------------------------------------


def least_squares(opt_fn, steps, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((64, 8)).astype(np.float32)
    W = rng.standard_normal((8, 4)).astype(np.float32)
    Y = X @ W + 0.01 * rng.standard_normal((64, 4)).astype(np.float32)
    lin = nn.Linear(8, 4)
    opt, sched = opt_fn(lin)
    Xt, Yt = Tensor(X), Tensor(Y)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((lin(Xt) - Yt) ** 2).mean()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return float(((lin(Xt) - Yt) ** 2).mean().item())


def mlp_fit(opt_fn, steps, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (128, 3)).astype(np.float32)
    Y = (np.sin(X[:, :1] * 1.5) + X[:, 1:2] * X[:, 2:3] * 0.5).astype(np.float32)
    model = nn.Sequential(nn.Linear(3, 32), Tanh(), nn.Linear(32, 32), Tanh(), nn.Linear(32, 1))
    opt, sched = opt_fn(model)
    Xt, Yt = Tensor(X), Tensor(Y)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(Xt) - Yt) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return first, float(((model(Xt) - Yt) ** 2).mean().item())


class Tanh(nn.Module):
    def forward(self, x):
        return x.tanh()


def _cosine(opt, steps):
    return opt, optim.LRScheduler(opt, optim.warmup_cosine(0, steps, floor=0.0))


SOLVERS = {
    "sgd": lambda m, n: (optim.SGD(m.parameters(), lr=0.05, momentum=0.9), None),
    "sgd-nesterov": lambda m, n: (optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True), None),
    "adam": lambda m, n: _cosine(optim.Adam(m.parameters(), lr=0.05), n),
    "adamw": lambda m, n: _cosine(optim.AdamW(m.parameters(), lr=0.05, weight_decay=1e-4), n),
    "muon-hybrid": lambda m, n: _cosine(optim.muon_hybrid(m, muon_lr=0.05, adamw_lr=0.02), n),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_drives_least_squares_to_the_noise_floor(name):
    steps = 300
    loss = least_squares(lambda m: SOLVERS[name](m, steps), steps)
    assert loss < 2e-3, loss  # the noise floor is 1e-4; the starting loss is about 8


@pytest.mark.parametrize("name", list(SOLVERS))
def test_fits_a_small_mlp(name):
    steps = 300
    first, last = mlp_fit(lambda m: SOLVERS[name](m, steps), steps)
    assert last < 0.02 and last < first / 20, (first, last)


# --- resuming -----------------------------------------------------------------------------------


def _mlp(seed):
    tl.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), Tanh(), nn.Linear(16, 16), Tanh(), nn.Linear(16, 3))


RESUMABLE = {
    "adamw": lambda m: optim.AdamW(optim.param_groups_for_weight_decay(m, 0.1), lr=1e-2),
    "sgd-momentum": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
    "muon-hybrid": lambda m: optim.muon_hybrid(m, muon_lr=0.02, adamw_lr=1e-2, muon_weight_decay=0.01,
                                               adamw_weight_decay=0.1),
}


def _train(model, opt, sched, batches):
    for X, Y in batches:
        opt.zero_grad()
        loss = ((model(Tensor(X)) - Tensor(Y)) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("load_model_first", [True, False])
@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_after_k_steps_is_bit_identical(name, load_model_first):
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((8, 6)).astype(np.float32),
                rng.standard_normal((8, 3)).astype(np.float32)) for _ in range(7)]
    schedule = optim.warmup_cosine(2, 7, floor=0.1)
    model = _mlp(0)
    opt = RESUMABLE[name](model)
    sched = optim.LRScheduler(opt, schedule)
    _train(model, opt, sched, batches[:3])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    _train(model, opt, sched, batches[3:])
    straight = model.state_dict()

    model2 = _mlp(123)  # different initial values: everything must come from the checkpoint
    if load_model_first:
        model2.load_state_dict(saved[0])
    opt2 = RESUMABLE[name](model2)
    sched2 = optim.LRScheduler(opt2, schedule)
    if not load_model_first:
        model2.load_state_dict(saved[0])  # into the optimizer's flat buffers, in place
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    _train(model2, opt2, sched2, batches[3:])
    resumed = model2.state_dict()
    for k in straight:
        assert np.array_equal(straight[k], resumed[k]), k


def test_optimizer_state_dict_layout_and_wrong_shape_error():
    p = nn.Parameter(np.ones((2, 3), np.float32))
    q = nn.Parameter(np.ones(4, np.float32))
    opt = optim.AdamW([p, q], lr=0.1)
    p.grad, q.grad = Tensor(np.ones((2, 3), np.float32)), Tensor(np.ones(4, np.float32))
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1] and sd["param_groups"][0]["params"] == [0, 1]
    assert sd["state"][0]["exp_avg"].shape == (2, 3) and sd["state"][0]["step"] == 1
    np.testing.assert_allclose(sd["state"][1]["exp_avg"], 0.1)
    sd["state"][0]["exp_avg_sq"] = np.zeros((3, 2), np.float32)
    want = r"param 0 exp_avg_sq: saved shape \(3, 2\) vs parameter shape \(2, 3\)"
    with pytest.raises(ValueError, match=want):
        optim.AdamW([p, q]).load_state_dict(sd)


def test_state_dict_is_a_snapshot():
    p = nn.Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = Tensor(np.ones(3, np.float32))
    opt.step()
    sd = opt.state_dict()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["momentum_buffer"], 1.0)


# --- the flat buffers stay invisible ------------------------------------------------------------


def test_flat_buffers_keep_shapes_values_and_identity():
    model = _mlp(0)
    before = model.state_dict()
    ids = [id(p) for p in model.parameters()]
    optim.AdamW(model.parameters())
    assert [id(p) for p in model.parameters()] == ids
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
        assert v.shape == before[k].shape


def test_rebinding_data_and_none_grads_are_followed():
    rng = np.random.default_rng(4)
    A, t, p0, params = quad_problem(rng, [(3, 2), (4,)], np.float64)
    opt = optim.SGD(params, lr=0.1, momentum=0.5)
    fresh = rng.standard_normal((3, 2))
    params[0].data = fresh.copy()  # e.g. a user re-initialising a weight by rebinding
    for _ in range(2):
        for p in params:
            p.grad = None  # like model.zero_grad(): backward allocates new grads, step copies them in
        quad_backward(params, A, t)
        opt.step()
    np.testing.assert_allclose(params[0].numpy(), sgd_ref(fresh, A[0], t[0], 2, 0.1, 0.5), atol=1e-12)
    np.testing.assert_allclose(params[1].numpy(), sgd_ref(p0[1], A[1], t[1], 2, 0.1, 0.5), atol=1e-12)


def test_step_without_any_gradient_changes_nothing():
    p = nn.Parameter(np.ones((2, 2), np.float32))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_array_equal(p.numpy(), 1.0)
    assert opt.state_dict()["state"][0]["step"] == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_big_buckets_take_the_chunked_threaded_path(monkeypatch, threads):
    from tinygrad_llm.optim import flat
    monkeypatch.setattr(flat, "CHUNK", 1000)
    monkeypatch.setattr(flat, "MIN_PARALLEL", 0)
    monkeypatch.setattr(flat, "THREADS", threads)
    n = 50 * 1000 + 123  # not a multiple of the chunk: each thread's last chunk is short
    rng = np.random.default_rng(5)
    p0, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    p = nn.Parameter(p0.copy())
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.1, betas=(0.9, 0.99))
    for _ in range(2):
        p.grad = Tensor(g)
        opt.step()
    p64, m, v = p0.astype(np.float64), 0.0, 0.0
    for k in (1, 2):
        p64 = p64 * (1 - 0.01)
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g.astype(np.float64) ** 2
        p64 = p64 - 0.1 * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.99 ** k)) + 1e-8)
    np.testing.assert_allclose(p.numpy(), p64, atol=2e-6)


def test_optimizer_input_errors():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([])
    p = nn.Parameter(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)


# --- clipping -----------------------------------------------------------------------------------


def _with_grads(*grads):
    ps = []
    for g in grads:
        p = nn.Parameter(np.zeros(np.shape(g), np.float32))
        p.grad = Tensor(np.asarray(g, np.float32))
        ps.append(p)
    return ps


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_total():
    rng = np.random.default_rng(6)
    gs = [rng.standard_normal((4, 5)), rng.standard_normal(7)]
    ps = _with_grads(*gs)
    total = optim.clip_grad_norm_(ps, max_norm=1.0)
    want = math.sqrt(sum((g.astype(np.float32).astype(np.float64) ** 2).sum() for g in gs))
    assert total == pytest.approx(want, rel=1e-6)
    after = math.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum()) for p in ps))
    assert after == pytest.approx(1.0, rel=1e-5)
    ps = _with_grads([0.3, 0.4])
    assert optim.clip_grad_norm_(ps, max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_allclose(ps[0].grad.numpy(), [0.3, 0.4])  # under the limit: untouched


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_grad_norm_reports_nonfinite_and_leaves_grads(bad):
    ps = _with_grads([1.0, bad], [3.0])
    total = optim.clip_grad_norm_(ps, max_norm=1.0)
    assert (math.isinf(total) if bad == np.inf else math.isnan(total))
    np.testing.assert_array_equal(ps[1].grad.numpy(), [3.0])


# --- schedules ----------------------------------------------------------------------------------


def nanogpt_get_lr(it, learning_rate=6e-4, min_lr=6e-5, warmup_iters=10, lr_decay_iters=100):
    # nanoGPT train.py, written out
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_warmup_cosine_is_nanogpts_get_lr():
    fn = optim.nanogpt_lr(6e-4, 6e-5, 10, 100)
    mult = optim.warmup_cosine(10, 100, floor=0.1)
    for it in range(0, 130):
        assert fn(it) == pytest.approx(nanogpt_get_lr(it), rel=1e-12)
        assert 6e-4 * mult(it) == pytest.approx(nanogpt_get_lr(it), rel=1e-12)


def test_wsd_shape():
    fn = optim.wsd(warmup=10, total=100, decay=0.2, floor=0.1)
    assert fn(0) == pytest.approx(1 / 11) and fn(9) == pytest.approx(10 / 11)
    assert all(fn(s) == 1.0 for s in range(10, 80))
    assert fn(90) == pytest.approx(0.1 + 0.9 * 0.5)
    assert fn(100) == fn(500) == 0.1
    vals = [fn(s) for s in range(80, 101)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    sq = optim.wsd(0, 100, decay=0.5, shape="sqrt")
    assert sq(75) == pytest.approx(1 - math.sqrt(0.5))
    assert optim.constant()(12345) == 1.0
    with pytest.raises(ValueError, match="wsd"):
        optim.wsd(90, 100, decay=0.2)


def test_lr_scheduler_multiplies_each_groups_base_lr_and_resumes():
    p, q = nn.Parameter(np.ones(2, np.float32)), nn.Parameter(np.ones(2, np.float32))
    opt = optim.SGD([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.1}], lr=0.5)
    fn = optim.warmup_cosine(4, 20, floor=0.0)
    sched = optim.LRScheduler(opt, fn)
    assert sched.get_last_lr() == [pytest.approx(fn(0)), pytest.approx(0.1 * fn(0))]
    for _ in range(6):
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * fn(6))
    state = sched.state_dict()
    opt2 = optim.SGD([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.1}], lr=0.5)
    sched2 = optim.LRScheduler(opt2, fn)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    absolute = optim.LRScheduler(opt2, lambda s: 0.25, absolute=True)
    assert absolute.get_last_lr() == [0.25, 0.25]


# --- weight-decay groups ------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self, tie):
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 8)
        self.norm = nn.RMSNorm(8)
        self.lm_head = nn.Linear(8 if not tie else 4, 10, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_weight_decay_split_by_ndim_and_module_type():
    m = Tiny(tie=False)
    decay, no_decay = optim.param_groups_for_weight_decay(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _names(m, decay) == ["fc.weight", "lm_head.weight"]
    assert _names(m, no_decay) == ["fc.bias", "ln.bias", "ln.weight", "norm.weight", "wte.weight"]
    decay, _ = optim.param_groups_for_weight_decay(m, 0.1, decay_embeddings=True)
    assert "wte.weight" in _names(m, decay)
    tied = Tiny(tie=True)  # the tied head is the embedding: no decay unless asked
    decay, no_decay = optim.param_groups_for_weight_decay(tied, 0.1)
    assert _names(tied, decay) == ["fc.weight"] and "wte.weight" in _names(tied, no_decay)


def test_muon_hybrid_routes_hidden_matrices_to_muon():
    m = Tiny(tie=False)
    opt = optim.muon_hybrid(m, muon_lr=0.02, adamw_lr=3e-4, adamw_weight_decay=0.1)
    muon, adamw = opt.optimizers
    assert isinstance(muon, optim.Muon) and isinstance(adamw, optim.AdamW)
    assert _names(m, muon.param_groups[0]) == ["fc.weight"]
    assert [g["lr"] for g in opt.param_groups] == [0.02, 3e-4, 3e-4]
    assert _names(m, adamw.param_groups[0]) == ["lm_head.weight"]  # the untied head decays
    opt.param_groups[0]["lr"] = 0.01
    assert muon.param_groups[0]["lr"] == 0.01


def test_a_parameter_cast_to_another_dtype_rebuilds_its_bucket_with_the_state():
    rng = np.random.default_rng(7)
    A, t, p0, params = quad_problem(rng, [(3, 2)], np.float32)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    run_ours(opt, params, A, t, steps=1)
    after_one = params[0].numpy().astype(np.float64)
    params[0].data = params[0].data.astype(np.float64)  # rebound to a float64 array
    got = run_ours(opt, params, A, t, steps=2)[0]
    assert params[0].dtype == np.float64
    # reference: the momentum buffer after step one is the first gradient
    buf = A[0] * (p0[0].astype(np.float32).astype(np.float64) - t[0])
    p = after_one
    for _ in range(2):
        buf = 0.9 * buf + A[0] * (p - t[0])
        p = p - 0.1 * buf
    np.testing.assert_allclose(got, p, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "adamw", "muon"])
def test_steps_on_each_device_match_the_cpu(device, kind):
    rng = np.random.default_rng(8)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (4, 6)]]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values] for _ in range(3)]
    make_opt = {"sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                "adamw": lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.1),
                "muon": lambda ps: optim.Muon(ps, lr=0.1, weight_decay=0.1)}[kind]
    results = []
    for dev in ("cpu", device):
        ps = [nn.Parameter(Tensor(v.copy(), device=dev)) for v in values]
        opt = make_opt(ps)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = Tensor(g, device=dev)
            opt.step()
        assert all(p.device == dev for p in ps)
        results.append([p.numpy() for p in ps])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_model_moved_after_the_optimizer_was_built_keeps_training_with_its_state():
    rng = np.random.default_rng(9)
    batches = [(rng.standard_normal((8, 6)).astype(np.float32),
                rng.standard_normal((8, 3)).astype(np.float32)) for _ in range(4)]

    def run(move):
        model = _mlp(0)
        opt = optim.AdamW(model.parameters(), lr=1e-2)
        for i, (X, Y) in enumerate(batches):
            if move and i == 2:
                model.to("cuda")  # the optimizer notices and re-packs on the GPU, state included
            dev = next(model.parameters()).device
            opt.zero_grad()
            loss = ((model(Tensor(X, device=dev)) - Tensor(Y, device=dev)) ** 2).mean()
            loss.backward()
            opt.step()
        assert all(p.device == ("cuda" if move else "cpu") for p in model.parameters())
        return model.state_dict()

    a, b = run(False), run(True)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw", "muon"])
def test_a_step_allocates_no_parameter_sized_arrays(kind, big, monkeypatch):
    import tracemalloc

    from tinygrad_llm.optim import flat
    if big:  # the chunked, threaded path
        monkeypatch.setattr(flat, "CHUNK", 4096)
        monkeypatch.setattr(flat, "MIN_PARALLEL", 0)
    rng = np.random.default_rng(10)
    ps = [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(600, 400), (300, 800)]]
    opt = {"sgd": lambda: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
           "adam": lambda: optim.Adam(ps, weight_decay=0.1),
           "adamw": lambda: optim.AdamW(ps, weight_decay=0.1),
           "muon": lambda: optim.Muon(ps, weight_decay=0.1)}[kind]()
    opt.zero_grad()
    for p in ps:
        p.grad.data[...] = rng.standard_normal(p.shape)
    opt.step()
    opt.step()  # scratch and Newton-Schulz buffers exist from here on
    tracemalloc.start()
    opt.step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 1.9 MB of parameters; what may be allocated is NumPy's fixed ufunc iteration buffer
    # (8192 elements, 32 KiB, used when Muon scales a transposed view) and small Python objects
    assert peak < 64 * 1024, peak
