"""Reinforcement learning with verifiable rewards: GRPO (Shao et al. 2024, DeepSeekMath).

For each prompt the policy samples a group of G completions (generate, with the KV cache); a
Python function scores each one (exact answer match, a format check); each completion's advantage
is its reward normalised within its group. The objective, per completion token,

    o_t = min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) - beta k3_t,
    rho_t = exp(logp_t - logp_old_t),   k3_t = exp(logp_ref_t - logp_t) - (logp_ref_t - logp_t) - 1

is averaged over each completion's tokens and then over the completions, and maximised. It is one
op, GRPOLoss (the negated objective), whose backward is derived down to the per-token
log-probabilities (docs/backward.md#grpo); ops/logprob.py carries it on to the logits.

    def reward(record, completion):                     # -> float
        return float(completion.strip() == record["answer"])
    history = fit(model, tok, records, reward, group_size=8, steps=20)
"""
import copy
import time

import numpy as np

from .. import nn, optim
from ..autograd import no_grad
from ..backend import array_module
from ..ops.logprob import token_logprobs
from ..ops.policy_gradient import GRPOLoss
from .dpo import collate_rows


def group_advantages(rewards):
    """(P, G) rewards -> (P, G) advantages (r - mean) / std within each group; a group whose
    rewards are all equal (std 0) carries no signal and gets advantage 0, never a NaN."""
    r = np.asarray(rewards, dtype=np.float64)
    mean, std = r.mean(axis=-1, keepdims=True), r.std(axis=-1, keepdims=True)
    return np.where(std > 0, (r - mean) / np.where(std > 0, std, 1.0), 0.0)


def grpo_loss(logp, logp_old, logp_ref, advantages, mask, eps=0.2, beta=0.04):
    """The GRPOLoss op on a (N, T) Tensor of per-token log-probabilities; the rest are arrays.
    logp_ref may be None when beta is 0."""
    xp = array_module(logp.data)
    const = (lambda a: xp.asarray(getattr(a, "data", a), dtype=logp.dtype))
    ref = const(logp_old if logp_ref is None else logp_ref)
    if logp_ref is None and beta:
        raise ValueError("grpo loss: beta > 0 needs the reference log-probabilities")
    return GRPOLoss.apply(logp, logp_old=const(logp_old), logp_ref=ref, advantages=const(advantages),
                          mask=xp.asarray(getattr(mask, "data", mask), dtype=bool), eps=eps, beta=beta)


def _encode(tok, text):
    return tok.encode_ordinary(text) if hasattr(tok, "encode_ordinary") else tok.encode(text)


def sample_group(model, prompt_ids, group_size, max_new_tokens, temperature=1.0, eos_id=None, seed=None):
    """group_size completions of one prompt, each a list of ids ending at eos_id (kept) if drawn."""
    idx = np.tile(np.asarray(prompt_ids, dtype=np.int64)[None], (group_size, 1))
    out = model.generate(idx, max_new_tokens, temperature=temperature, eos_id=eos_id, seed=seed).numpy()
    completions = []
    for row in out[:, len(prompt_ids):]:
        ids = [int(t) for t in row]
        if eos_id is not None and eos_id in ids:
            ids = ids[:ids.index(eos_id) + 1]
        completions.append(ids)
    return completions


def score(reward_fn, record, completions, index=0):
    """Rewards (G,) of decoded completions; a reward function that raises or returns a non-finite
    value is reported with the prompt index and the completion at fault."""
    rewards = []
    for j, text in enumerate(completions):
        try:
            r = float(reward_fn(record, text))
        except Exception as e:
            raise ValueError(f"grpo: the reward function raised {type(e).__name__}: {e} on prompt {index}, "
                             f"completion {j} ({text!r:.80})") from e
        if not np.isfinite(r):
            raise ValueError(f"grpo: the reward function returned {r} on prompt {index}, completion {j} "
                             f"({text!r:.80})")
        rewards.append(r)
    return rewards


def check_prompts(records, tok, block_size, max_new_tokens):
    """Each record's prompt ids; a prompt that leaves no room for max_new_tokens is refused by index."""
    encoded = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise ValueError(f"grpo: record {i} needs a string 'prompt' field, got {rec!r:.80}")  # noqa: TRY004
        ids = _encode(tok, rec["prompt"])
        if not ids:
            raise ValueError(f"grpo: the prompt of record {i} encodes to no tokens")
        if len(ids) + max_new_tokens > block_size:
            raise ValueError(f"grpo: the prompt of record {i} is {len(ids)} tokens; with max_new_tokens="
                             f"{max_new_tokens} it exceeds the context of {block_size} tokens")
        encoded.append(ids)
    return encoded


@no_grad()
def _token_logprobs(model, inputs, targets, mask):
    with model.evaluating():
        logits, _ = model(inputs)
        return np.asarray(token_logprobs(logits, targets, mask).numpy(), dtype=np.float64)


def fit(model, tok, records, reward_fn, group_size=8, prompts_per_step=4, steps=20, max_new_tokens=16,
        temperature=1.0, lr=1e-5, eps=0.2, beta=0.04, iterations=1, seed=0, reference=None, log=print):
    """GRPO on records ({"prompt": str, ...}, also handed to reward_fn(record, completion_text)).

    Each step samples prompts_per_step prompts, group_size completions each, and takes `iterations`
    AdamW steps on the clipped objective (the sampling policy's log-probabilities are logp_old).
    reference: the model of the KL term (default: a frozen copy of the policy at its start).
    Returns one record per step: mean reward, the fraction of groups with any signal, loss, seconds.
    """
    cfg = model.config
    prompt_ids = check_prompts(records, tok, cfg.block_size, max_new_tokens)
    eos = getattr(tok, "eot_id", None)
    if beta and reference is None:
        reference = copy.deepcopy(model)
    params = nn.trainable_parameters(model)
    opt = optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    history, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        pick = rng.choice(len(records), size=min(prompts_per_step, len(records)), replace=False)
        rows, rewards = [], []
        for k, i in enumerate(pick):
            comps = sample_group(model, prompt_ids[i], group_size, max_new_tokens, temperature, eos,
                                 seed=seed * 100003 + step * 1009 + k)
            texts = [tok.decode([t for t in c if t != eos]) for c in comps]
            rewards.append(score(reward_fn, records[i], texts, index=int(i)))
            rows += [(prompt_ids[i] + c, len(prompt_ids[i])) for c in comps]
        adv = group_advantages(rewards).reshape(-1)
        inputs, targets, mask = collate_rows(rows, pad_id=eos or 0)
        logp_old = _token_logprobs(model, inputs, targets, mask)
        logp_ref = _token_logprobs(reference, inputs, targets, mask) if beta else None
        loss_value = 0.0
        if (adv != 0).any():  # all-equal groups give a zero gradient: skip the work
            model.train()
            for _ in range(iterations):
                logits, _ = model(inputs)
                loss = grpo_loss(token_logprobs(logits, targets, mask), logp_old, logp_ref, adv, mask, eps, beta)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_value = loss.item()
            model.eval()
        record = {"step": step, "reward": float(np.mean(rewards)),
                  "groups_with_signal": float(np.mean(np.std(rewards, axis=1) > 0)),
                  "loss": loss_value, "seconds": time.perf_counter() - t0}
        history.append(record)
        if log:
            log(f"step {step}: mean reward {record['reward']:.3f}, groups with signal "
                f"{record['groups_with_signal']:.2f}, loss {loss_value:.4f}, {record['seconds']:.1f}s")
    return history
