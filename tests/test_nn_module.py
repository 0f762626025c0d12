"""nn.Module: registration, dotted names, buffers, state dicts, modes, devices, printing."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("table", np.arange(6, dtype=np.float32).reshape(2, 3))
        self.register_buffer("cache", np.zeros(2, np.float32), persistent=False)
        self.scale = 2.0  # plain attributes are not state

    def forward(self, x):
        return self.drop(self.ln(self.fc(x)))


class Net(nn.Module):
    def __init__(self, tie=False):
        super().__init__()
        self.wte = nn.Embedding(5, 3)
        self.h = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(3, 5, bias=False)
        if tie:
            self.head.weight = self.wte.weight
        self.gain = nn.Parameter(np.ones(3, np.float32))


def test_named_parameters_are_dotted_and_ordered():
    names = [n for n, _ in Net().named_parameters()]
    assert names == ["gain", "wte.weight", "h.0.fc.weight", "h.0.fc.bias", "h.0.ln.weight",
                     "h.0.ln.bias", "h.1.fc.weight", "h.1.fc.bias", "h.1.ln.weight", "h.1.ln.bias",
                     "head.weight"]
    assert all(p.requires_grad for p in Net().parameters())


def test_modules_children_and_counts():
    net = Net()
    assert [type(m).__name__ for m in net.children()] == ["Embedding", "ModuleList", "Linear"]
    assert [n for n, _ in net.named_modules()][:4] == ["", "wte", "h", "h.0"]
    assert sum(1 for _ in net.modules()) == 1 + 1 + 1 + 2 * 4 + 1
    per_block = 3 * 4 + 4 + 4 + 4
    assert net.num_parameters() == 3 + 15 + 2 * per_block + 15
    tied = Net(tie=True)
    assert tied.num_parameters() == 3 + 15 + 2 * per_block  # a tied matrix counts once
    assert len(list(tied.parameters())) == 10
    assert len(list(tied.named_parameters(remove_duplicate=False))) == 11


def test_state_dict_keys_values_and_copies():
    net = Net()
    sd = net.state_dict()
    assert "h.0.table" in sd and "h.0.cache" not in sd  # non-persistent buffers stay out
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    np.testing.assert_array_equal(sd["h.1.table"], np.arange(6).reshape(2, 3))
    sd["gain"][...] = 7  # a copy: editing it leaves the model alone
    np.testing.assert_array_equal(net.gain.numpy(), 1.0)


def test_load_state_dict_round_trip_in_place():
    a, b = Net(), Net()
    arrays_before = [p.data for p in b.parameters()]
    b.load_state_dict(a.state_dict())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb)
    assert all(p.data is d for p, d in zip(b.parameters(), arrays_before))  # copied in, not rebound


def test_load_state_dict_reports_every_problem_at_once():
    net = Net()
    sd = net.state_dict()
    del sd["gain"], sd["h.1.ln.bias"]
    sd["extra.weight"] = np.zeros(2)
    sd["h.0.fc.weight"] = np.zeros((3, 4), np.float32)  # transposed: the classic Conv1D mistake
    with pytest.raises(nn.StateDictError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "h.0.fc.weight: checkpoint shape (3, 4) vs model shape (4, 3)" in msg
    assert "missing keys: gain, h.1.ln.bias" in msg and "unexpected keys: extra.weight" in msg
    # non-strict tolerates missing/unexpected keys but never a wrong shape
    with pytest.raises(nn.StateDictError, match=r"wrong shape: h\.0\.fc\.weight"):
        net.load_state_dict(sd, strict=False)
    sd["h.0.fc.weight"] = np.zeros((4, 3), np.float32)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["gain", "h.1.ln.bias"] and unexpected == ["extra.weight"]
    np.testing.assert_array_equal(net.h[0].fc.weight.numpy(), 0.0)


def test_tied_weights_stay_tied_through_load():
    net = Net(tie=True)
    sd = net.state_dict()
    assert "head.weight" in sd and "wte.weight" in sd
    sd["wte.weight"] = sd["head.weight"] = np.full((5, 3), 0.5, np.float32)
    net.load_state_dict(sd)
    assert net.head.weight is net.wte.weight
    np.testing.assert_array_equal(net.head.weight.numpy(), 0.5)


def test_train_eval_flag_reaches_every_module_and_dropout_honours_it():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    x = Tensor(np.ones((4, 3), np.float32))
    blk = net.h[0]
    np.testing.assert_array_equal(blk.drop(x).numpy(), x.numpy())  # identity in eval
    net.train()
    y = blk.drop(Tensor(np.ones((64, 64), np.float32))).numpy()
    assert set(np.unique(y).tolist()) <= {0.0, 2.0} and 0.3 < (y == 0).mean() < 0.7


def test_evaluating_turns_eval_on_inside_and_restores_the_mode_even_on_error():
    net = Net()
    with net.evaluating():
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())
    net.eval()
    with pytest.raises(RuntimeError, match="inside"):
        with net.evaluating():
            net.train()  # a body that flips the mode itself does not leak it either
            raise RuntimeError("inside")
    assert not any(m.training for m in net.modules())


def test_zero_grad_and_to():
    net = Net()
    out = net.h[0](Tensor(np.ones((2, 3), np.float32))).sum()
    out.backward()
    assert net.h[0].fc.weight.grad is not None
    net.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(net.h[0].fc.weight.grad.numpy(), 0.0)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    ids = [id(p) for p in net.parameters()]
    assert net.to("cpu") is net and [id(p) for p in net.parameters()] == ids
    with pytest.raises(tl.backend.DeviceError, match="unknown device"):
        net.to("tpu")


@pytest.mark.gpu
def test_to_cuda_and_back_keeps_values():
    net = Net()
    before = net.state_dict()
    net.to("cuda")
    assert all(p.device == "cuda" for p in net.parameters())
    assert all(b.device == "cuda" for b in net.buffers())
    after = net.to("cpu").state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_registration_rules():
    m = nn.Module()
    m.w = nn.Parameter(np.ones(2, np.float32))
    with pytest.raises(TypeError, match="is a parameter"):
        m.w = np.zeros(2)
    m.w = None  # a declared-but-absent parameter, like bias=False
    assert list(m.named_parameters()) == []
    m.register_buffer("buf", np.ones(2, np.float32))
    m.buf = np.zeros(2, np.float32)  # reassigning a buffer keeps it one (as a Tensor)
    assert isinstance(m.buf, Tensor) and list(m.state_dict()) == ["buf"]
    del m.buf
    assert list(m.state_dict()) == []

    class Forgot(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)
    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Forgot()
    with pytest.raises(TypeError, match="ModuleList holds Modules"):
        nn.ModuleList([3])


def test_sequential_and_modulelist():
    seq = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    x = Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    want = seq[2](seq[1](seq[0](x)))
    np.testing.assert_array_equal(seq(x).numpy(), want.numpy())
    assert len(seq) == 3 and seq[-1] is seq[2] and isinstance(seq[:2], nn.ModuleList)
    with pytest.raises(IndexError, match="out of range"):
        seq[3]


def test_repr_is_a_tree():
    text = repr(Net())
    assert text.splitlines()[0] == "Net("
    assert "  (wte): Embedding(5, 3)" in text
    assert "    (0): Block(" in text
    assert "      (fc): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "  (head): Linear(in_features=3, out_features=5, bias=False)" in text
