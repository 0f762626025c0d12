"""The sharded training step (parallel.py) and the BLAS thread control (blas.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl
from tinygrad_llm import blas, optim, parallel
from tinygrad_llm.models import GPT, GPTConfig

V = 13


def tiny_gpt(dtype=np.float64, dropout=0.0, seed=0):
    tl.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=dropout))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def batch(B, T=8, seed=1, ignored=0):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    y.reshape(-1)[:ignored] = -100  # the first targets do not count
    return x, y


def run(model, x, y, shards, scale=1.0):
    for p in model.parameters():
        p.grad = None
    loss = parallel.loss_backward(lambda a, b: model(a, b)[1], x, y, shards=shards, scale=scale)
    return loss, [p.grad.data.copy() for p in model.parameters()]


@settings(max_examples=12, deadline=None)
@given(B=st.integers(2, 7), shards=st.integers(2, 4), ignored=st.integers(0, 5))
def test_sharded_gradients_equal_one_backward(B, shards, ignored):
    # float64: the only difference is the order of additions, so 1e-12 is far above it and far
    # below any real mistake (a wrong shard weight moves gradients by a few percent)
    model = tiny_gpt()
    x, y = batch(B, ignored=ignored)
    loss1, g1 = run(model, x, y, shards=1)
    loss2, g2 = run(model, x, y, shards=shards)
    assert loss2 == pytest.approx(loss1, rel=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_sharded_steps_repeat_bit_for_bit_with_dropout():
    x, y = batch(6)
    runs = []
    for _ in range(2):
        model = tiny_gpt(np.float32, dropout=0.2, seed=3)
        tl.manual_seed(7)
        runs.append(run(model, x, y, shards=3))
    (l1, g1), (l2, g2) = runs
    assert l1 == l2
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2))
    model = tiny_gpt(np.float32, dropout=0.2, seed=3)
    tl.manual_seed(8)  # another seed: other dropout masks in every shard
    _, g3 = run(model, x, y, shards=3)
    assert not np.array_equal(g1[0], g3[0])


def test_scale_and_accumulation_into_optimizer_buffers():
    model = tiny_gpt()
    x, y = batch(4)
    _, g = run(model, x, y, shards=1)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad()  # .grad are views of the flat buffer: shard 0 adds into them in place
    parallel.loss_backward(lambda a, b: model(a, b)[1], x, y, shards=2, scale=0.5)
    parallel.loss_backward(lambda a, b: model(a, b)[1], x, y, shards=2, scale=0.5)
    for p, ref in zip(model.parameters(), g):
        np.testing.assert_allclose(p.grad.data, ref, rtol=1e-10, atol=1e-12)


def test_a_shard_with_no_counted_target_falls_back_to_one_backward():
    model = tiny_gpt()
    x, y = batch(4, ignored=16)  # rows 0 and 1 count nothing: shard 0 of 2 would divide by zero
    loss1, g1 = run(model, x, y, shards=1)
    loss2, g2 = run(model, x, y, shards=2)
    assert np.isfinite(loss2) and loss2 == pytest.approx(loss1)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def test_without_blas_control_it_runs_one_backward(monkeypatch):
    monkeypatch.setattr(blas, "available", lambda: False)
    model = tiny_gpt()
    x, y = batch(4)
    _, g1 = run(model, x, y, shards=1)
    calls = []
    monkeypatch.setattr(parallel, "_get_pool", lambda n: calls.append(n))
    _, g2 = run(model, x, y, shards=2)
    assert calls == []  # no thread was asked for
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2))


def test_an_error_in_a_worker_shard_reaches_the_caller_and_blas_is_restored():
    model = tiny_gpt()
    x, y = batch(4)
    x[3, 2] = V + 5  # in the last shard, which runs on a worker thread
    before = blas.get_threads()
    with pytest.raises(ValueError, match=str(V + 5)):
        run(model, x, y, shards=2)
    assert blas.get_threads() == before


def test_loss_fn_must_return_a_scalar_tensor():
    model = tiny_gpt()
    x, y = batch(2)
    with pytest.raises(ValueError, match="one-element Tensor"):
        parallel.loss_backward(lambda a, b: model(a, b)[0], x, y, shards=1)


def test_default_shards(monkeypatch):
    monkeypatch.setenv("TINYGRAD_LLM_SHARDS", "3")
    assert parallel.default_shards(12) == 3
    assert parallel.default_shards(2) == 2
    monkeypatch.delenv("TINYGRAD_LLM_SHARDS")
    assert 1 <= parallel.default_shards(12) <= parallel.MAX_SHARDS
    assert parallel.default_shards(1) == 1


@pytest.mark.parametrize("rows, at_most, want", [(12, 8, 6), (12, 2, 2), (12, 5, 4), (13, 4, 4),
                                                 (5, 2, 2), (1, 8, 1), (7, 7, 7), (0, 4, 1)])
def test_balanced_shards_take_the_fewest_for_the_same_largest_shard(rows, at_most, want):
    n = parallel.balanced_shards(rows, at_most)
    assert n == want
    if rows:  # no fewer shards would keep the largest shard as small
        assert -(-rows // n) == -(-rows // min(at_most, rows)) < -(-rows // max(n - 1, 1)) or n == 1


@pytest.mark.skipif(not blas.available(), reason="NumPy's BLAS is not an OpenBLAS we can set")
def test_blas_threads_set_and_restored():
    before = blas.get_threads()
    with blas.threads(1):
        assert blas.get_threads() == 1
        a = np.ones((64, 64), dtype=np.float32)
        assert (a @ a == 64).all()
    assert blas.get_threads() == before
    with pytest.raises(ValueError, match="at least one thread"):
        blas.set_threads(0)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_sharded_steps_on_threads_of_its_own():
    import os
    model = tiny_gpt()
    x, y = batch(4)
    want, _ = run(model, x, y, shards=2)  # the parent's pool now exists
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads do not exist here
        try:
            got, _ = run(model, x, y, shards=2)
            os.write(w, repr(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    import time
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):  # a child waiting on dead threads never ends
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's sharded step hung")
        time.sleep(0.05)
    got = float(os.read(r, 100).decode())
    assert got == want


def test_on_cores_runs_every_item_once_and_reports_errors():
    seen = []
    parallel.on_cores(lambda item, t: seen.append((item, t)), range(7), costs=[1, 5, 2, 2, 9, 1, 3])
    assert sorted(i for i, _ in seen) == list(range(7))
    assert {t for _, t in seen} <= set(range(parallel.usable_cores()))

    def fail(item, t):
        if item == 3:
            raise RuntimeError("item 3")

    with pytest.raises(RuntimeError, match="item 3"):
        parallel.on_cores(fail, range(6))


def test_muon_step_on_cores_equals_one_matrix_at_a_time(monkeypatch):
    # the threaded step must give what the one-thread loop gives, step after step
    monkeypatch.setattr(parallel, "usable_cores", lambda: 4)  # threads even on a 1-core runner
    used = []

    def on_cores(fn, items, costs):
        used.append(len(items))
        parallel.on_cores(fn, items, costs)

    def trained(threaded):
        tl.manual_seed(0)
        ws = [tl.nn.Parameter(tl.Tensor(np.random.default_rng(i).standard_normal(s).astype(np.float32)).data)
              for i, s in enumerate([(24, 8), (8, 8), (32, 8), (8, 32)])]
        opt = optim.Muon(ws, lr=0.02, weight_decay=0.1, map_fn=on_cores if threaded else None)
        for step in range(3):
            for i, w in enumerate(ws):
                w.grad = tl.Tensor(np.random.default_rng(100 * step + i).standard_normal(w.shape)
                                   .astype(np.float32))
            opt.step()
        return [w.data.copy() for w in ws]

    for a, b in zip(trained(True), trained(False)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert used == [4, 4, 4]  # the map function ran every step, over every matrix
