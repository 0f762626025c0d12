"""Token log-probabilities and the preference losses (DPO, IPO, SimPO): float64 gradchecks on
hypothesis shapes, forward against the textbook formulas, the mask's zero gradient, bad records
named by index and field, and a few DPO steps on a tiny GPT raising the preference accuracy."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.finetune import dpo
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.ops.logprob import token_logprob_textbook, token_logprobs


@SETTINGS
@given(B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(1, 6), seed=seeds)
def test_token_logprobs_gradcheck(device, B, T, V, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, V)) * 2
    y = rng.integers(0, V, (B, T))
    mask = rng.random((B, T)) < 0.7
    y = np.where(mask, y, -100)  # masked targets may hold anything
    want = token_logprob_textbook(x, y, mask)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        got = token_logprobs(Tensor(x.astype(dtype), device=device), y, mask)
        assert got.dtype == dtype
        np.testing.assert_allclose(got.numpy(), want, atol=tol, rtol=tol)
    xt = Tensor(x, device=device, requires_grad=True)
    assert tl.gradcheck(lambda a: token_logprobs(a, y, mask), [xt])
    token_logprobs(xt, y, mask).sum().backward()
    assert not xt.grad.numpy()[~mask].any()  # masked positions: gradient exactly zero


def test_token_logprobs_bad_target():
    with pytest.raises(ValueError, match="outside"):
        token_logprobs(Tensor(np.zeros((1, 2, 3))), np.array([[0, 3]]), np.array([[True, True]]))


def np_preference(c, r, rc, rr, nc, nr, beta, loss_type, gamma):
    if loss_type == "simpo":
        h = beta * (c / nc - r / nr) - gamma
        return np.mean(np.log1p(np.exp(-h)))
    z = (c - rc) - (r - rr)
    if loss_type == "ipo":
        return np.mean((z - 1 / (2 * beta)) ** 2)
    return np.mean(-np.log(1 / (1 + np.exp(-beta * z))))


@pytest.mark.parametrize("loss_type", dpo.LOSS_TYPES)
@SETTINGS
@given(B=st.integers(1, 5), seed=seeds, beta=st.sampled_from([0.1, 0.5, 2.0]))
def test_preference_loss_gradcheck(device, loss_type, B, seed, beta):
    rng = np.random.default_rng(seed)
    c, r, rc, rr = (rng.standard_normal(B) * 3 for _ in range(4))
    nc, nr = rng.integers(1, 9, B).astype(float), rng.integers(1, 9, B).astype(float)
    kw = {"beta": beta, "loss_type": loss_type, "gamma": 0.3}
    got = dpo.preference_loss(Tensor(c, device=device), Tensor(r, device=device), rc, rr, nc, nr, **kw)
    np.testing.assert_allclose(got.item(), np_preference(c, r, rc, rr, nc, nr, beta, loss_type, 0.3), rtol=1e-10)
    ts = [Tensor(c, device=device, requires_grad=True), Tensor(r, device=device, requires_grad=True)]
    assert tl.gradcheck(lambda a, b: dpo.preference_loss(a, b, rc, rr, nc, nr, **kw), ts)


def test_dpo_chain_to_logits_gradcheck():
    """The whole objective, logits -> token log-probs -> sequence sums -> DPO loss, in float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5))
    y = rng.integers(0, 5, (4, 3))
    mask = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]], dtype=bool)
    ref = rng.standard_normal(4)

    def loss(a):
        lp = token_logprobs(a, y, mask).sum(axis=-1)
        return dpo.preference_loss(lp[:2], lp[2:], ref[:2], ref[2:], beta=0.5)
    assert tl.gradcheck(loss, [Tensor(x, requires_grad=True)])


@pytest.mark.parametrize("record, field", [({"prompt": "a", "chosen": "b"}, "'rejected'"),
                                           ({"chosen": "b", "rejected": "c"}, "'prompt'"),
                                           ({"prompt": "a", "chosen": " ", "rejected": "c"}, "empty 'chosen'"),
                                           ({"prompt": "a", "chosen": "b", "rejected": 3}, "'rejected' must")])
def test_bad_records_named(record, field):
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    with pytest.raises(ValueError, match=f"record 1 .*{field}"):
        dpo.check_records([good, record])


def test_loss_type_and_beta_checked():
    a = Tensor(np.zeros(2))
    with pytest.raises(ValueError, match="loss_type"):
        dpo.preference_loss(a, a, np.zeros(2), np.zeros(2), loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        dpo.preference_loss(a, a, np.zeros(2), np.zeros(2), beta=0)


class ByteTok:
    def encode(self, text):
        return list(text.encode("utf-8"))


def test_dpo_steps_raise_preference_accuracy():
    tl.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=16))
    records = [{"prompt": f"{i} ", "chosen": "good", "rejected": "bad!"} for i in range(6)]
    pairs = [dpo.encode_pair(r, ByteTok(), max_len=16, index=i) for i, r in enumerate(dpo.check_records(records))]
    ref = dpo.reference_logprobs(model, pairs)
    before = dpo.evaluate(model, pairs, ref, beta=0.5)
    assert before["margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    history = dpo.fit(model, pairs, beta=0.5, steps=15, batch_size=4, lr=3e-3, log=None)
    after = dpo.evaluate(model, pairs, ref, beta=0.5)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert after["accuracy"] == 1.0 and after["margin"] > 0.5
