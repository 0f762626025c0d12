"""gradient_health: per-group gradient norms, update ratios and activation statistics, by hand."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.study import gradient_health, record_activations, scope, scope_blocks
from tinygrad_llm.study.health import group_name


class _Opt:
    """The two things gradient_health reads from an optimizer: lr and a step count."""

    def __init__(self, lr):
        self.param_groups = [{"lr": lr}]
        self.state = {0: {"step": 0}}

    def sgd(self, params):
        for p in params.values():
            p.data -= self.param_groups[0]["lr"] * p.grad.data
        self.state[0]["step"] += 1


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {name: Tensor(rng.standard_normal(shape), requires_grad=True) for name, shape in
            [("h.0.fc.weight", (3, 4)), ("h.0.fc.bias", (4,)), ("h.1.fc.weight", (4, 4)),
             ("h.1.fc.bias", (4,)), ("head.weight", (4, 2))]}


def _loss(params, x):
    h = x
    for i in range(2):
        h = (h @ params[f"h.{i}.fc.weight"] + params[f"h.{i}.fc.bias"]).tanh()
    return (h @ params["head.weight"]).sum()


def test_group_names_fold_the_block_index():
    assert group_name("transformer.h.11.attn.c_attn.weight") == "transformer.h.*.attn.c_attn"
    assert group_name("h.0.fc.bias") == "h.*.fc"
    assert group_name("lm_head.weight") == "lm_head"
    assert group_name("scale") == "scale"


def test_grad_norms_and_update_ratios_by_hand():
    params = _params()
    opt = _Opt(lr=0.1)
    x = Tensor(np.random.default_rng(1).standard_normal((5, 3)))
    _loss(params, x).backward()
    first = gradient_health(params, opt, record_next=False)
    g = {k: p.grad.numpy() for k, p in params.items()}
    fc = np.sqrt(sum((g[k] ** 2).sum() for k in g if k.startswith("h.")))
    assert first["groups"]["h.*.fc"]["grad_norm"] == pytest.approx(fc, rel=1e-12)
    assert first["grad_norm"] == pytest.approx(np.sqrt(sum((v ** 2).sum() for v in g.values())), rel=1e-12)
    w = np.sqrt((params["head.weight"].numpy() ** 2).sum())
    assert first["groups"]["head"]["weight_norm"] == pytest.approx(w, rel=1e-12)
    assert first["groups"]["head"]["params"] == 8 and first["lr"] == 0.1
    assert "update_ratio" not in first["groups"]["head"]  # nothing to compare with yet
    before = {k: p.numpy().copy() for k, p in params.items()}
    for _ in range(2):  # two SGD steps between the calls: the ratio is per step
        opt.sgd(params)
    second = gradient_health(params, opt, record_next=False)
    dw = params["head.weight"].numpy() - before["head.weight"]
    want = np.linalg.norm(dw) / np.linalg.norm(before["head.weight"]) / 2
    assert second["groups"]["head"]["update_ratio"] == pytest.approx(want, rel=1e-5)
    json.dumps(second)  # ready for metrics.jsonl


def test_parameters_without_gradients_count_zero():
    params = _params()
    health = gradient_health(params, record_next=False)
    assert health["grad_norm"] == 0.0 and health["groups"]["head"]["grad_norm"] == 0.0


def test_scope_outputs_are_recorded_with_their_statistics():
    x = Tensor(np.random.default_rng(2).standard_normal((6, 5)) * 3 + 1)
    with record_activations() as rec:
        with scope("h.0"):
            y = x * 2.0
        with scope("h.1"):
            z = (y + 1.0).tanh()
    assert set(rec.stats) == {"h.0", "h.1"}
    assert rec.stats["h.0"]["mean"] == pytest.approx(float((x.numpy() * 2).mean()))
    assert rec.stats["h.0"]["std"] == pytest.approx(float((x.numpy() * 2).std()))
    assert rec.stats["h.1"]["absmax"] == pytest.approx(float(np.abs(z.numpy()).max()))


def test_scopes_in_two_threads_tag_their_own_nodes_and_record_one_thread():
    # the sharded training step runs a forward per thread at once, each entering the block scopes
    import importlib
    import threading
    scope_module = importlib.import_module("tinygrad_llm.study.scope")  # the module, not the class
    both_inside = threading.Barrier(2)
    made = {}

    def forward(name):
        with scope(name):
            both_inside.wait()  # the other thread's scope is open too
            y = Tensor(np.full(4, 1.0 if name == "h.0" else 5.0), requires_grad=True) * 2.0
            both_inside.wait()
            made[name] = (y._ctx.scope, scope_module.current())

    with record_activations() as rec:  # turned on by this thread: it takes this thread's outputs
        other = threading.Thread(target=forward, args=("h.1",))
        other.start()
        forward("h.0")
        other.join()
    assert made == {"h.0": ("h.0", "h.0"), "h.1": ("h.1", "h.1")}
    assert set(rec.stats) == {"h.0"} and rec.stats["h.0"]["mean"] == 2.0
    assert not tl.autograd.graph_is_observed()  # every scope closed: the engine's hook is off again


def test_gradient_health_reports_the_forward_after_its_previous_call():
    nn = pytest.importorskip("tinygrad_llm.nn")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

        def forward(self, x):
            for block in self.h:
                x = block(x).tanh()
            return x.sum()

    net = Net()
    x = Tensor(np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32))
    net(x).backward()
    assert "activations" not in gradient_health(net)  # arms recording for the next forward
    out = net(x)  # recorded: each block's output (the Linear's, before the tanh outside it)
    out.backward()
    health = gradient_health(net)
    assert set(health["activations"]) == {"h.0", "h.1", "h.2"}
    h0 = net.h[0](x).numpy()
    assert health["activations"]["h.0"]["std"] == pytest.approx(float(h0.std()), rel=1e-5)
    assert scope_blocks(net) == ["h.0", "h.1", "h.2"]  # installed once, not twice


def test_scope_blocks_keeps_results_and_tags_the_graph():
    nn = pytest.importorskip("tinygrad_llm.nn")
    seq = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    x = Tensor(np.ones((2, 3), np.float32))
    before = seq(x).numpy()
    assert scope_blocks(seq) == []  # Sequential names children "0", "1": not <name>.<int>
    holder = nn.Module()
    holder.layers = seq
    assert scope_blocks(holder) == ["layers.0", "layers.1"]
    y = holder.layers(x)
    np.testing.assert_array_equal(y.numpy(), before)
    assert y._ctx.scope == "layers.1"
    with tl.trace_backward() as t:
        y.sum().backward()
    assert {r["scope"] for r in t.records} == {None, "layers.0", "layers.1"}
