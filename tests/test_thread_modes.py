"""Grad mode, autocast and the backward observers are per thread (as PyTorch's are): a no_grad
evaluation on one thread leaves another thread's training step recording its whole graph, and the
sharded step's worker threads compute in the mode of the thread that called it."""
import threading

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import parallel
from tinygrad_llm.autocast import active_dtype, autocast
from tinygrad_llm.models import GPT, GPTConfig

V = 13


def tiny_gpt(seed=0):
    tl.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


def batch(B=4, T=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def gradients(model, x, y):
    for p in model.parameters():
        p.grad = None
    _, loss = model(x, y)
    loss.backward()
    return [p.grad.numpy().copy() for p in model.parameters()]


def run_in_thread(fn):
    """fn() on a thread of its own; returns what it returned, re-raises what it raised."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    return t, out


def finish(t, out):
    t.join(timeout=60)
    assert not t.is_alive(), "the thread did not finish"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_a_no_grad_evaluation_on_one_thread_leaves_another_thread_training():
    model, x, y = tiny_gpt(), *batch()
    want = gradients(model, x, y)  # single-threaded reference
    inside, done = threading.Event(), threading.Event()

    def evaluate():  # holds its no_grad block open for the whole of the other thread's step
        with tl.no_grad():
            inside.set()
            _, loss = model(x, y)
            assert not loss.requires_grad
            assert done.wait(timeout=60)
            assert not tl.is_grad_enabled()
        return loss.item()

    t, out = run_in_thread(evaluate)
    assert inside.wait(timeout=60)
    try:
        assert tl.is_grad_enabled()
        got = gradients(model, x, y)  # the whole graph, recorded while the other thread is in no_grad
    finally:
        done.set()
    eval_loss = finish(t, out)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(eval_loss)


def test_a_new_thread_records_even_when_its_creator_is_in_no_grad():
    x = tl.Tensor(np.ones(3), requires_grad=True)
    with tl.no_grad():
        t, out = run_in_thread(lambda: ((x * 2).requires_grad, tl.is_grad_enabled()))
        assert finish(t, out) == (True, True)
        assert not (x * 2).requires_grad


def test_enable_grad_and_set_grad_enabled():
    x = tl.Tensor(np.ones(3), requires_grad=True)
    with tl.no_grad():
        with tl.enable_grad():
            assert tl.is_grad_enabled() and (x * 2).requires_grad
        assert not tl.is_grad_enabled()

        @tl.enable_grad()
        def f():
            return x * 2
        assert f().requires_grad and not tl.is_grad_enabled()
    with tl.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert tl.is_grad_enabled()
    tl.set_grad_enabled(False)  # called, not entered: acts at once, like torch.set_grad_enabled
    try:
        assert not tl.is_grad_enabled()
    finally:
        tl.set_grad_enabled(True)


def test_an_autocast_region_on_one_thread_leaves_another_in_float32():
    pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    inside, done = threading.Event(), threading.Event()

    def other():
        with autocast("bf16", cpu_emulation=True):
            inside.set()
            assert done.wait(timeout=60)
            return str(active_dtype())

    t, out = run_in_thread(other)
    assert inside.wait(timeout=60)
    try:
        assert active_dtype() is None
        w = tl.Tensor(np.ones((3, 2), np.float32), requires_grad=True)
        h = tl.Tensor(np.ones((4, 3), np.float32))
        assert F.linear(h, w.transpose(1, 0)).dtype == np.float32
    finally:
        done.set()
    assert finish(t, out) == "bfloat16"


def test_the_sharded_step_computes_in_the_callers_autocast_region(monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    monkeypatch.setattr(parallel.blas, "available", lambda: True)  # shard even without BLAS control
    model, (x, y) = tiny_gpt(), batch(B=4)
    for p in model.parameters():
        p.data = p.data.astype(np.float32)
    seen = []

    def loss_fn(a, b):
        logits, loss = model(a, b)
        seen.append(logits.dtype)
        return loss

    def step(shards):
        for p in model.parameters():
            p.grad = None
        seen.clear()
        with autocast("bf16", cpu_emulation=True):
            loss = parallel.loss_backward(loss_fn, x, y, shards=shards)
        return loss, [p.grad.numpy().copy() for p in model.parameters()]

    loss1, g1 = step(1)
    loss2, g2 = step(2)
    assert seen == [np.dtype(ml_dtypes.bfloat16)] * 2  # every shard, the worker's too, in bf16
    assert loss2 == pytest.approx(loss1, rel=1e-2)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=0.1, atol=2e-3)


def test_the_sharded_step_workers_see_the_callers_grad_mode(monkeypatch):
    monkeypatch.setattr(parallel.blas, "available", lambda: True)
    model, (x, y) = tiny_gpt(), batch(B=4)
    modes = []

    def loss_fn(a, b):
        modes.append(tl.is_grad_enabled())
        return model(a, b)[1]

    with tl.no_grad():  # nothing recorded, in any shard: the step refuses instead of half-training
        with pytest.raises(tl.autograd.GraphError, match="no_grad"):
            parallel.loss_backward(loss_fn, x, y, shards=2)
    assert modes == [False, False]


def test_a_tracer_records_only_its_own_threads_backward():
    model, (x, y) = tiny_gpt(), batch()
    inside, done = threading.Event(), threading.Event()

    def other():  # a backward on another thread while the tracer is open here
        assert inside.wait(timeout=60)
        try:
            return len(gradients(model, x, y))
        finally:
            done.set()

    t, out = run_in_thread(other)
    with tl.trace_backward() as trace:
        inside.set()
        assert done.wait(timeout=60)
        assert trace.records == []
        w = tl.Tensor(np.ones(3), requires_grad=True)
        (w * 2).sum().backward()
    finish(t, out)
    assert [r["op"] for r in trace.records] == ["Sum", "Mul"]
