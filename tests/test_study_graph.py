"""Graph pictures: the DOT text parses, declares every node it links, names every op, collapses blocks."""
import re
import shutil
import subprocess

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.autograd import GraphError
from tinygrad_llm.study import graph_to_dot

_NODE = re.compile(r"^\s*(\w+) \[(.*)\];$")
_EDGE = re.compile(r"^\s*(\w+) -> (\w+)(?: \[.*\])?;$")


def parse_dot(text):
    """A strict reader for the DOT we write: -> (node id -> label, edges). Fails on anything else."""
    assert text.startswith("digraph backward {") and text.rstrip().endswith("}")
    depth, in_quote, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif not in_quote and ch in "{}":
            depth += 1 if ch == "{" else -1
            assert depth >= 0, "a } closes nothing"
    assert depth == 0 and not in_quote, "unbalanced braces or quotes"
    nodes, edges = {}, []
    for line in text.splitlines()[1:-1]:
        s = line.strip()
        if not s or s == "}" or s.startswith(("graph [", "node [", "edge [", "subgraph ", "label=")):
            continue
        e = _EDGE.match(line)
        if e:
            edges.append((e.group(1), e.group(2)))
            continue
        n = _NODE.match(line)
        assert n, f"unexpected DOT line: {line!r}"
        label = re.search(r'label="((?:[^"\\]|\\.)*)"', n.group(2))
        nodes[n.group(1)] = label.group(1) if label else ""
    for a, b in edges:
        assert a in nodes and b in nodes, f"edge {a} -> {b} links an undeclared node"
    return nodes, edges


def _mlp(n_layer, scoped=True, seed=0):
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    params = {}
    h = x
    for i in range(n_layer):
        w = Tensor(rng.standard_normal((4, 4)) * 0.5, requires_grad=True)
        params[f"h.{i}.fc.weight"] = w
        if scoped:
            with tl.study.scope(f"h.{i}"):
                h = h + (h @ w).tanh()
        else:
            h = h + (h @ w).tanh()
    head = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    params["head.weight"] = head
    loss = (h @ head).exp().mean()
    return x, params, loss


def test_dot_parses_and_names_every_op():
    x = Tensor(np.random.randn(2, 3), requires_grad=True)
    w = Tensor(np.random.randn(3, 3), requires_grad=True)
    y = ((x @ w).relu() - x.sigmoid() * 2.0).reshape(6).max() / 3.0
    text = graph_to_dot(y, params={"x": x, "w": w})
    nodes, edges = parse_dot(text)
    labels = " ".join(nodes.values())
    for op in ("MatMul", "ReLU", "Sigmoid", "Mul", "Sub", "Reshape", "Max", "Div"):
        assert op in labels, op
    assert "x\\n(2, 3)" in labels and "w\\n(3, 3)" in labels
    assert len(edges) == 10  # 2 into MatMul, 1 into ReLU, Sigmoid, Mul, Reshape, Max, Div; 2 into Sub


def test_edges_carry_gradient_norms_and_leave_grads_untouched():
    x = Tensor(np.random.randn(2, 3), requires_grad=True)
    loss = (x * x).sum()
    text = graph_to_dot(loss)
    label = f"{2 * np.linalg.norm(x.numpy()):.3g}"
    assert f'label="{label}"' in text  # the edge x -> Mul carries |dx| = |2x|
    assert x.grad is None
    loss.backward()  # the graph is still there for the caller's own backward
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())


def test_repeated_scoped_blocks_collapse_into_one_box():
    x, params, loss = _mlp(5)
    nodes, edges = parse_dot(graph_to_dot(loss, params=params))
    text = graph_to_dot(loss, params=params)
    assert 'subgraph "cluster_h.0"' in text and "cluster_h.1" not in text
    boxes = [lbl for lbl in nodes.values() if "same as h.0" in lbl]
    assert boxes == ["h.1 ... h.4\\n4 blocks, same as h.0\\n(3 ops each)"]  # MatMul, Tanh, Add
    full = parse_dot(graph_to_dot(loss, params=params, collapse=False))[0]
    assert len(full) > len(nodes) + 10
    assert sum("MatMul" in lbl for lbl in full.values()) == 6


def test_blocks_are_inferred_from_parameter_names_without_scopes():
    x, params, loss = _mlp(4, scoped=False)
    text = graph_to_dot(loss, params=params)
    parse_dot(text)
    assert 'subgraph "cluster_h.0"' in text and "same as h.0" in text
    assert "blocks inferred from parameter names" in text


def test_blocks_that_differ_are_not_collapsed():
    rng = np.random.default_rng(0)
    h = Tensor(rng.standard_normal((2, 4)), requires_grad=True)
    for i in range(3):
        with tl.study.scope(f"h.{i}"):
            h = h.tanh() if i != 1 else h.exp()
    text = graph_to_dot(h.sum())
    assert all(f'cluster_h.{i}"' in text for i in range(3)) and "same as" not in text


def test_draw_after_backward_or_without_graph_is_a_clear_error():
    x = Tensor(np.random.randn(2), requires_grad=True)
    y = x.exp().sum()
    y.backward()
    with pytest.raises(GraphError, match="before calling backward|already freed"):
        graph_to_dot(y)
    with pytest.raises(GraphError, match="no graph"):
        graph_to_dot(Tensor(np.ones(2)))


def test_draw_graph_writes_dot_and_svg(tmp_path):
    x, params, loss = _mlp(3)
    out = tl.draw_graph(loss, tmp_path / "mlp.svg", params=params)
    assert out["dot"].endswith("mlp.dot")
    parse_dot((tmp_path / "mlp.dot").read_text())
    if shutil.which("dot") is None:
        assert out["svg"] is None
    else:
        svg = (tmp_path / "mlp.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "MatMul" in svg


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")
def test_graphviz_accepts_the_dot():
    x, params, loss = _mlp(3)
    done = subprocess.run(["dot", "-Tcanon"], input=graph_to_dot(loss, params=params),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
