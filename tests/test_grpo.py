"""GRPO: the clipped-ratio objective with the k3 KL term gradchecked in float64 on hypothesis
shapes (ratios kept off the clip's kinks) and against its formula; group advantages (std 0 gives
0, not NaN); a reward function that raises, or a prompt longer than the context, named in the
error; and a few GRPO steps on a tiny GPT raising the reward of a trivially checkable task."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.finetune import grpo
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.ops.logprob import token_logprobs


def np_grpo(lp, old, ref, A, m, eps, beta):
    rho = np.exp(lp - old)
    o = np.minimum(rho * A[:, None], np.clip(rho, 1 - eps, 1 + eps) * A[:, None])
    o = o - beta * (np.exp(ref - lp) - (ref - lp) - 1)
    return -np.mean((o * m).sum(-1) / m.sum(-1))


def off_kinks(diff, eps):
    """Move log-ratios at least 0.03 away from log(1 - eps) and log(1 + eps), where the clip bends."""
    for kink in (np.log(1 - eps), np.log(1 + eps)):
        near = np.abs(diff - kink) < 0.03
        diff = np.where(near, kink + 0.06 * np.sign(diff - kink + 1e-12), diff)
    return diff


@SETTINGS
@given(N=st.integers(1, 4), T=st.integers(1, 5), seed=seeds, eps=st.sampled_from([0.1, 0.2]),
       beta=st.sampled_from([0.0, 0.04, 0.5]))
def test_grpo_loss_gradcheck(device, N, T, seed, eps, beta):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, (N, T))
    lp = old + off_kinks(rng.uniform(-0.5, 0.5, (N, T)), eps)  # some ratios clipped, some not
    ref = old + rng.uniform(-0.5, 0.5, (N, T))
    A = rng.standard_normal(N)
    m = rng.random((N, T)) < 0.7
    m[:, 0] = True
    got = grpo.grpo_loss(Tensor(lp, device=device), old, ref, A, m, eps, beta)
    np.testing.assert_allclose(got.item(), np_grpo(lp, old, ref, A, m, eps, beta), rtol=1e-10, atol=1e-12)
    x = Tensor(lp, device=device, requires_grad=True)
    assert tl.gradcheck(lambda a: grpo.grpo_loss(a, old, ref, A, m, eps, beta), [x])
    grpo.grpo_loss(x, old, ref, A, m, eps, beta).backward()
    assert not x.grad.numpy()[~m].any()


def test_grpo_chain_to_logits_gradcheck():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    y = rng.integers(0, 5, (3, 4))
    m = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 0]], dtype=bool)
    lp0 = token_logprobs(Tensor(x), y, m).numpy()
    old = lp0 + rng.uniform(-0.1, 0.1, lp0.shape) * m
    ref = lp0 + rng.uniform(-0.3, 0.3, lp0.shape) * m
    A = np.array([1.0, -0.5, -0.5])
    assert tl.gradcheck(lambda a: grpo.grpo_loss(token_logprobs(a, y, m), old, ref, A, m, 0.2, 0.1),
                        [Tensor(x, requires_grad=True)])


def test_group_advantages():
    adv = grpo.group_advantages([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert np.isfinite(adv).all()
    np.testing.assert_allclose(adv[0], [1, -1, 1, -1])
    assert not adv[1].any()  # no signal in a group of equal rewards


def test_empty_mask_row_refused():
    with pytest.raises(ValueError, match="completion 1 has no tokens"):
        grpo.grpo_loss(Tensor(np.zeros((2, 2))), np.zeros((2, 2)), None, np.zeros(2),
                       np.array([[1, 1], [0, 0]], dtype=bool), beta=0.0)


class ByteTok:
    eot_id = 10  # "\n" ends a completion

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_reward_function_that_raises_is_named():
    def reward(record, completion):
        raise KeyError("answer")
    with pytest.raises(ValueError, match=r"reward function raised KeyError.*prompt 3, completion 0"):
        grpo.score(reward, {"prompt": "x"}, ["abc"], index=3)
    with pytest.raises(ValueError, match="returned nan on prompt 0, completion 1"):
        grpo.score(lambda r, c: float("nan") if c == "b" else 1.0, {}, ["a", "b"])


def test_prompt_longer_than_context_refused():
    with pytest.raises(ValueError, match="record 1 is 9 tokens; with max_new_tokens=4 it exceeds the context of 12"):
        grpo.check_prompts([{"prompt": "ab"}, {"prompt": "abcdefghi"}], ByteTok(), 12, 4)


def test_grpo_steps_raise_reward():
    """Reward: the completion starts with 'a'. A few steps push the sampled share of 'a' up."""
    tl.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, block_size=16, n_layer=1, n_head=2, n_embd=16))
    records = [{"prompt": p} for p in ("x:", "y:", "z:")]
    history = grpo.fit(model, ByteTok(), records, lambda r, c: float(c.startswith("a")), group_size=16,
                       prompts_per_step=3, steps=12, max_new_tokens=2, temperature=1.0, lr=3e-2, beta=0.04,
                       iterations=2, log=None)
    rewards = [h["reward"] for h in history]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
