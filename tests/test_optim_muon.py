"""Muon: the Newton-Schulz orthogonalisation measured against an SVD, and the optimizer's first
steps against a NumPy reference written out here."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm import Tensor, nn, optim
from tinygrad_llm.optim import newton_schulz5

# Five quintic steps with (3.4445, -4.7750, 2.0315) map a normalised singular value s in
# [2e-3, 1] into [0.6818, 1.2024] (iterating the scalar polynomial on a fine grid gives exactly
# that band); float32 rounding adds a little, hence [0.68, 1.21].
BAND = (0.68, 1.21)


@st.composite
def matrices(draw):
    """A float32 matrix with known singular vectors and a spectrum spread over [0.05, 1] x scale,
    so every normalised singular value s / ||G||_F is >= 0.05 / sqrt(96) > 2e-3."""
    kind = draw(st.sampled_from(["tall", "wide", "square"]))
    a = draw(st.integers(1, 96))
    b = a if kind == "square" else draw(st.integers(a + 1, 97))
    r, c = (b, a) if kind == "tall" else (a, b)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    k = min(r, c)
    U = np.linalg.qr(rng.standard_normal((r, k)))[0]
    V = np.linalg.qr(rng.standard_normal((c, k)))[0]
    s = np.exp(rng.uniform(np.log(0.05), 0.0, k))
    scale = 10.0 ** draw(st.floats(-3, 3))
    return ((U * (s * scale)) @ V.T).astype(np.float32), U, V


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_newton_schulz_singular_values_land_in_the_band(m):
    G, U, V = m
    O = newton_schulz5(G)
    assert O.shape == G.shape and O.dtype == np.float32
    sv = np.linalg.svd(O.astype(np.float64), compute_uv=False)
    assert BAND[0] <= sv.min() and sv.max() <= BAND[1], (G.shape, sv.min(), sv.max())
    # the iteration is a polynomial in G G^T applied to G: G's singular vectors are kept exactly,
    # so U^T O V is diagonal
    D = U.T @ O.astype(np.float64) @ V
    off = D - np.diag(np.diag(D))
    assert np.linalg.norm(off) <= 1e-4 * np.linalg.norm(D)
    # and the result points where the SVD's orthogonal factor U V^T points: cosine similarity
    # measured over 300 draws of this strategy: median 0.986, lowest 0.971
    ortho = U @ V.T
    cos = (O * ortho).sum() / (np.linalg.norm(O) * np.linalg.norm(ortho))
    assert cos > 0.96, cos


@settings(max_examples=30, deadline=None)
@given(st.integers(16, 80), st.integers(16, 80), st.integers(0, 2**31 - 1))
def test_newton_schulz_matches_svd_direction_on_gaussian_matrices(r, c, seed):
    # gradient-like matrices, no spectrum control: square ones have tiny singular values that
    # five steps do not lift, yet the direction agrees with U V^T (cosine over 1000 shapes in
    # [16, 80]^2, a quarter square: median 0.985, lowest 0.967). Tiny matrices are left out: a
    # near-singular 2x2 has half its spectrum near 0 and a cosine near 1/sqrt(2).
    G = np.random.default_rng(seed).standard_normal((r, c)).astype(np.float32)
    O = newton_schulz5(G).astype(np.float64)
    U, _, Vt = np.linalg.svd(G.astype(np.float64), full_matrices=False)
    ortho = U @ Vt
    assert (O * ortho).sum() / (np.linalg.norm(O) * np.linalg.norm(ortho)) > 0.95
    assert np.linalg.svd(O, compute_uv=False).max() <= BAND[1]


def test_newton_schulz_rejects_non_matrices():
    with pytest.raises(ValueError, match=r"2-D matrix, got shape \(3,\)"):
        newton_schulz5(np.ones(3, np.float32))


# --- the optimizer against a reference written out here ----------------------------------------


def ns_ref(G, steps=5, eps=1e-7):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (np.sqrt((X * X).sum()) + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.shape[0] > G.shape[1] else X


def muon_ref(p, target, steps, lr, mu, wd, nesterov):
    p, buf = p.copy(), np.zeros_like(p)
    for _ in range(steps):
        g = p - target  # grad of 0.5 ||p - target||^2
        buf = mu * buf + (1 - mu) * g
        u = (1 - mu) * g + mu * buf if nesterov else buf
        scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
        p = p * (1 - lr * wd) - lr * scale * ns_ref(u)
    return p


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-10), (np.float32, 1e-6)])
@pytest.mark.parametrize("nesterov,wd", [(True, 0.0), (True, 0.1), (False, 0.05)])
def test_muon_first_steps_match_reference(nesterov, wd, dtype, atol):
    rng = np.random.default_rng(0)
    shapes = [(6, 3), (3, 7), (5, 5)]  # tall (lr scaled by sqrt(2)), wide, square
    p0 = [rng.standard_normal(s) * 0.5 for s in shapes]
    tgt = [rng.standard_normal(s) * 0.5 for s in shapes]
    params = [nn.Parameter(p.astype(dtype)) for p in p0]
    opt = optim.Muon(params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    for _ in range(3):
        opt.zero_grad()
        loss = None
        for p, t in zip(params, tgt):
            term = ((p - Tensor(t.astype(dtype))) ** 2).sum() * 0.5
            loss = term if loss is None else loss + term
        loss.backward()
        opt.step()
    for p, a, t in zip(params, p0, tgt):
        want = muon_ref(a, t, 3, 0.05, 0.9, wd, nesterov)
        np.testing.assert_allclose(p.numpy(), want, rtol=0, atol=atol)
        assert not np.allclose(want, a)


def test_muon_views_higher_dimensional_weights_as_matrices():
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((4, 2, 3))
    w = nn.Parameter(w0.copy())
    opt = optim.Muon([w], lr=0.1, momentum=0.0, nesterov=False)
    g = rng.standard_normal((4, 2, 3))
    w.grad = Tensor(g)
    opt.step()
    want = w0 - 0.1 * ns_ref(g.reshape(4, 6)).reshape(4, 2, 3)
    np.testing.assert_allclose(w.numpy(), want, atol=1e-10)


def test_muon_refuses_vectors_with_a_pointer_to_the_hybrid():
    with pytest.raises(ValueError, match=r"shape \(5,\).*muon_hybrid"):
        optim.Muon([nn.Parameter(np.ones(5, np.float32))])


def test_adjust_lr_options():
    assert optim.Muon.lr_scale((8, 2)) == 2.0 and optim.Muon.lr_scale((2, 8)) == 1.0
    assert optim.Muon.lr_scale((16, 64), "match_rms_adamw") == pytest.approx(0.2 * 8)


# --- the tuned, batched iteration against the textbook one -------------------------------------

from tinygrad_llm.optim import muon as muon_module  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(matrices(), st.integers(1, 3), st.sampled_from(["jordan", "polar_express"]),
       st.sampled_from(["plain", "gram", "auto"]))
def test_batched_newton_schulz_matches_the_textbook(m, n, schedule, form):
    G = m[0]
    G = G.T if G.shape[0] > G.shape[1] else G
    rng = np.random.default_rng(G.shape[0] * 1000 + G.shape[1])
    # a stack of n matrices of one shape, each with its own scale: each is normalised by its own norm
    stack = np.stack([G * np.float32(10.0 ** rng.uniform(-2, 2)) for _ in range(n)])
    want = np.stack([muon_module.newton_schulz_textbook(x.astype(np.float64), schedule=schedule)
                     for x in stack])
    real = muon_module.gram_is_cheaper
    if form != "auto":
        muon_module.gram_is_cheaper = lambda r, cols, steps: form == "gram"
    try:
        got = muon_module.newton_schulz(stack.copy(), schedule=schedule)
    finally:
        muon_module.gram_is_cheaper = real
    assert got.shape == stack.shape and got.dtype == np.float32
    # float32 against float64: measured up to about 5e-6 relative on these spectra
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want), (G.shape, n, schedule, form)


@settings(max_examples=20, deadline=None)
@given(st.integers(8, 64), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_gram_form_agrees_with_plain_form_on_gaussian_matrices(r, ratio, seed):
    G = np.random.default_rng(seed).standard_normal((2, r, r * ratio)).astype(np.float32)
    real = muon_module.gram_is_cheaper
    outs = []
    for gram in (False, True):
        muon_module.gram_is_cheaper = lambda r, cols, steps, gram=gram: gram
        try:
            outs.append(muon_module.newton_schulz(G.copy()))
        finally:
            muon_module.gram_is_cheaper = real
    assert np.linalg.norm(outs[1] - outs[0]) <= 1e-4 * np.linalg.norm(outs[0])


def test_gram_form_is_chosen_for_wide_matrices_only():
    assert muon_module.gram_is_cheaper(128, 512, 5) and muon_module.gram_is_cheaper(128, 384, 5)
    assert not muon_module.gram_is_cheaper(128, 128, 5)


# Polar Express: iterating its five polynomials on s in [2e-3, 1] / 1.02 gives [0.8589, 1.1411]
POLAR_BAND = (0.855, 1.145)


@settings(max_examples=40, deadline=None)
@given(matrices())
def test_polar_express_lands_in_a_tighter_band(m):
    G, U, V = m
    sv = np.linalg.svd(newton_schulz5(G, schedule="polar_express").astype(np.float64), compute_uv=False)
    assert POLAR_BAND[0] <= sv.min() and sv.max() <= POLAR_BAND[1], (G.shape, sv.min(), sv.max())
    jordan = np.linalg.svd(newton_schulz5(G).astype(np.float64), compute_uv=False)
    assert np.abs(sv - 1).max() < np.abs(jordan - 1).max()


def test_unknown_schedule_and_too_many_steps_are_refused():
    p = nn.Parameter(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="ns_schedule must be one of"):
        optim.Muon([p], ns_schedule="fast")
    with pytest.raises(ValueError, match="has 5 steps, got ns_steps=6"):
        optim.Muon([p], ns_schedule="polar_express", ns_steps=6)
    with pytest.raises(ValueError, match=r"r <= cols, got shape \(1, 5, 3\)"):
        muon_module.newton_schulz(np.ones((1, 5, 3), np.float32))


@pytest.mark.parametrize("schedule", ["jordan", "polar_express"])
def test_muon_step_with_many_matrices_of_one_shape_matches_the_textbook(schedule):
    # four matrices of each of two wide shapes and their tall transposes: the optimizer stacks
    # them by shape and splits each stack over the cores; each must get its own update
    rng = np.random.default_rng(3)
    shapes = [(8, 24), (24, 8), (8, 24), (24, 8), (6, 6), (6, 6), (5, 20), (20, 5)]
    p0 = [rng.standard_normal(s) for s in shapes]
    g = [rng.standard_normal(s) for s in shapes]
    params = [nn.Parameter(p.copy()) for p in p0]
    opt = optim.Muon(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01,
                     ns_schedule=schedule)
    for p, gi in zip(params, g):
        p.grad = Tensor(gi.copy())
    opt.step()
    for p, a, gi in zip(params, p0, g):
        u = 0.1 * gi + 0.9 * (0.1 * gi)  # first step, nesterov: buf = 0.1 g, u = lerp(g, buf, 0.9)
        scale = max(1.0, a.shape[0] / a.shape[1]) ** 0.5
        want = a * (1 - 0.1 * 0.01) - 0.1 * scale * muon_module.newton_schulz_textbook(u, schedule=schedule)
        np.testing.assert_allclose(p.numpy(), want, rtol=0, atol=1e-10)
