"""The backward tracer: node order, shapes, saved bytes and gradient norms of a known graph."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl
from tinygrad_llm import Tensor, autograd
from tinygrad_llm.study import backward_formula


def _known_graph(n, m, k, dtype=np.float64):
    rng = np.random.default_rng(n * 100 + m * 10 + k)
    x = Tensor(rng.standard_normal((n, m)).astype(dtype), requires_grad=True)
    w = Tensor(rng.standard_normal((m, k)).astype(dtype), requires_grad=True)
    b = Tensor(rng.standard_normal((k,)).astype(dtype), requires_grad=True)
    h = x @ w            # MatMul  (n, k)
    a = h + b            # Add     (n, k), b broadcast
    t = a.tanh()         # Tanh
    s = t * 3.0          # Mul with a constant
    loss = s.sum()       # Sum     ()
    return x, w, b, loss


def test_op_sequence_is_reverse_order_of_the_forward():
    x, w, b, loss = _known_graph(3, 4, 2)
    with tl.trace_backward() as t:
        loss.backward()
    assert t.ops == ["Sum", "Mul", "Tanh", "Add", "MatMul"]
    assert [r["out_shape"] for r in t.records] == [(), (3, 2), (3, 2), (3, 2), (3, 2)]
    assert t.records[3]["in_shapes"] == [(3, 2), (2,)]
    assert t.records[4]["in_shapes"] == [(3, 4), (4, 2)]
    assert t.records[1]["in_shapes"][1] is None and t.records[1]["inputs"] == ["op", "const"]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 5), m=st.integers(1, 5), k=st.integers(1, 4))
def test_recorded_gradient_norms_equal_the_actual_gradients(n, m, k):
    x, w, b, loss = _known_graph(n, m, k)
    # the gradient at each intermediate, by hand: dL/ds = 1, dL/dt = 3, dL/da = 3 (1 - t^2)
    tval = np.tanh(x.numpy() @ w.numpy() + b.numpy())
    da = 3.0 * (1 - tval ** 2)
    with tl.trace_backward() as t:
        loss.backward()
    dy = [r["grad_norm"] for r in t.records]
    np.testing.assert_allclose(dy, [1.0, np.sqrt(n * k), 3 * np.sqrt(n * k), np.linalg.norm(da),
                                    np.linalg.norm(da)], rtol=1e-12)
    # what MatMul and Add returned are exactly the leaves' gradients (each leaf has one consumer)
    matmul, add = t.records[4], t.records[3]
    np.testing.assert_allclose(matmul["dx_norms"], [np.linalg.norm(x.grad.numpy()),
                                                    np.linalg.norm(w.grad.numpy())], rtol=1e-12)
    np.testing.assert_allclose(add["dx_norms"][1], np.linalg.norm(b.grad.numpy()), rtol=1e-12)


@pytest.mark.reference
def test_gradient_norms_match_torch_on_a_shared_subexpression():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((4, 6))
    x = Tensor(xv, requires_grad=True)
    e = x.exp()
    y = (e * e.sum(axis=-1, keepdims=True)).log()  # e used twice: its gradient is a sum of two
    loss = (y * y).mean()
    with tl.trace_backward() as t:
        loss.backward()
    tx = torch.tensor(xv, requires_grad=True)
    te = tx.exp()
    te.retain_grad()
    tsum = te.sum(dim=-1, keepdim=True)
    tsum.retain_grad()
    tp = te * tsum
    tp.retain_grad()
    ty = tp.log()
    ty.retain_grad()
    tyy = ty * ty
    tyy.retain_grad()
    tyy.mean().backward()
    by_op = {r["op"]: r for r in t.records}
    assert t.ops == ["Mean", "Mul", "Log", "Mul", "Sum", "Exp"]
    expected = [1.0, tyy.grad.norm().item(), ty.grad.norm().item(), tp.grad.norm().item(),
                tsum.grad.norm().item(), te.grad.norm().item()]
    np.testing.assert_allclose([r["grad_norm"] for r in t.records], expected, rtol=1e-10)
    assert by_op["Exp"]["dx_norms"][0] == pytest.approx(np.linalg.norm(x.grad.numpy()), rel=1e-12)


def test_saved_bytes_count_what_forward_kept():
    x = Tensor(np.ones((8, 16), np.float32), requires_grad=True)
    y = x.exp().sum()
    with tl.trace_backward() as t:
        y.backward()
    exp = t.records[1]
    assert exp["op"] == "Exp" and exp["saved_bytes"] >= 8 * 16 * 4  # Exp keeps y (8, 16) float32
    summary = t.summary()
    assert summary["Exp"]["count"] == 1 and summary["Exp"]["saved_bytes"] == exp["saved_bytes"]
    assert sum(s["count"] for s in summary.values()) == len(t)
    assert abs(sum(s["time_share"] for s in summary.values()) - 1.0) < 1e-9


def test_table_json_and_summary_are_readable():
    x, w, b, loss = _known_graph(3, 4, 2)
    with tl.trace_backward() as t:
        loss.backward()
    text = str(t)
    for op in ("Sum", "Mul", "Tanh", "Add", "MatMul", "by op type"):
        assert op in text
    data = json.loads(t.to_json())
    assert [r["op"] for r in data["records"]] == t.ops
    assert data["records"][4]["in_shapes"] == [[3, 4], [4, 2]]
    assert set(data["summary"]) == set(t.ops)
    assert all(r["seconds"] >= 0 for r in data["records"])


def test_tracer_stops_recording_on_exit_and_nests():
    x, w, b, loss = _known_graph(2, 2, 2)
    with tl.trace_backward() as outer:
        with tl.trace_backward() as inner:
            loss.backward()
    assert outer.ops == inner.ops and len(outer) == 5
    x2, w2, b2, loss2 = _known_graph(2, 2, 2)
    loss2.backward()
    assert len(outer) == 5


def test_scope_names_reach_the_trace():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with tl.study.scope("h.0"):
        y = x.tanh()
        with tl.study.scope("attn"):
            y = y.exp()
    with tl.trace_backward() as t:
        y.sum().backward()
    assert [r["scope"] for r in t.records] == [None, "h.0.attn", "h.0"]


def test_backward_formula_comes_from_the_docstring():
    from tinygrad_llm.ops import elementwise as E
    assert backward_formula(E.Tanh).startswith("dx = (1 - y^2) * dy")
    assert backward_formula(E.Mul).startswith("da = dy * b")
    assert backward_formula(type("NoDoc", (), {})) == ""


def test_saved_bytes_count_a_list_of_arrays_and_an_index_array():
    x = Tensor(np.ones((8, 16), np.float32), requires_grad=True)
    idx = np.array([0, 3, 3, 7], dtype=np.int64)
    y = x[idx].sum()  # GetItem keeps the index array (32 bytes) and nothing else
    with tl.trace_backward() as t:
        y.backward()
    assert t.records[1]["op"] == "GetItem" and t.records[1]["saved_bytes"] == idx.nbytes
    ctx = autograd.Context()
    a, b = np.zeros(10, np.float32), np.zeros(3, np.float64)
    ctx.save_for_backward(a, [b, b, a], None)  # each array once, however often it is kept
    assert ctx.saved_nbytes() == a.nbytes + b.nbytes
