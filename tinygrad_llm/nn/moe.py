"""A mixture-of-experts feed-forward layer: a router, routed experts, and optional shared experts.

    moe = nn.MoE(n_embd=64, n_experts=8, top_k=2, hidden=128, n_shared=1)
    losses = []
    y = moe(x, losses)               # x (..., C) -> y (..., C); the balancing losses go in `losses`

Each token goes to the k experts its router scores best; its output is their outputs weighted
by the gate weights, plus the shared experts' output (every token passes through those). The
three routers of the families we follow:

    Mixtral      router="softmax", norm_topk_prob=True
    Qwen3-MoE    router="softmax", norm_topk_prob from its config
    DeepSeek-V3  router="sigmoid", norm_topk_prob=True, n_group / topk_group (group-limited
                 choice), routed_scaling_factor, e_score_correction_bias (for the choice only),
                 n_shared shared experts

Names follow those families' Hugging Face layouts, so a checkpoint loads as a straight copy:
gate.weight (E, C), gate.e_score_correction_bias (E,), experts.gate_up_proj (E, 2I, C) (gate
rows, then up rows), experts.down_proj (E, C, I), shared_experts.{gate,up,down}_proj.weight.
Experts have no biases (none of the three families has them).

Balancing, each optional: aux_loss_coef (Switch's auxiliary loss), z_loss_coef (the router
z-loss), and bias_update_rate (DeepSeek's auxiliary-loss-free balancing: after each optimizer
step, `update_router_biases(model)` moves every expert's choice bias by the rate towards an even
load; it is not a gradient step).
"""
import math
import threading

import numpy as np

from .. import backend
from .. import functional as F
from ..autograd import is_grad_enabled
from ..ops.moe import SCORES, DispatchPlan, check_router_logits, router_scores, routing_entropy, select_experts
from . import init
from .layers import Linear, _param
from .module import Module

ACTIVATIONS = ("swiglu", "gelu")


def check_moe_sizes(n_experts, top_k, n_group=1, topk_group=1, router="softmax", label="MoE", names=None):
    """One clear error naming the value at fault, for sizes a router cannot honour. names: what to
    call each argument in the message (a config's own field names)."""
    n = {"n_experts": "n_experts", "top_k": "top_k", "n_group": "n_group", "topk_group": "topk_group",
         "router": "router", **(names or {})}
    for name, v in (("n_experts", n_experts), ("top_k", top_k), ("n_group", n_group),
                    ("topk_group", topk_group)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{label}: {n[name]} must be a positive integer, got {v!r}")
    if top_k > n_experts:
        raise ValueError(f"{label}: {n['top_k']}={top_k} is larger than the number of experts "
                         f"{n['n_experts']}={n_experts}")
    if router not in SCORES:
        raise ValueError(f"{label}: {n['router']}={router!r}; expected one of {SCORES}")
    if n_experts % n_group:
        raise ValueError(f"{label}: {n['n_experts']}={n_experts} is not divisible by "
                         f"{n['n_group']}={n_group} (the experts form {n['n_group']} equal groups)")
    if topk_group > n_group:
        raise ValueError(f"{label}: {n['topk_group']}={topk_group} is larger than {n['n_group']}={n_group}")
    per = n_experts // n_group
    if n_group > 1 and per < 2:
        raise ValueError(f"{label}: {n['n_group']}={n_group} leaves {per} expert per group; a group's "
                         "score is the sum of its two best experts, so each group needs at least 2")
    if top_k > topk_group * per:
        raise ValueError(f"{label}: {n['top_k']}={top_k} is larger than the {topk_group * per} experts "
                         f"in the {n['topk_group']}={topk_group} groups of {per} a token may choose from")


class Router(Module):
    """The gate: logits = x W^T (W (E, C)), the choice of k experts, and their gate weights.

    A sigmoid router also holds e_score_correction_bias (E,), a buffer added to the scores for
    the choice only (the weights never see it), moved by update_bias, not by gradients.
    """

    def __init__(self, n_embd, n_experts, top_k, router="softmax", norm_topk_prob=True, n_group=1,
                 topk_group=1, routed_scaling_factor=1.0, dtype=None, device=None):
        super().__init__()
        check_moe_sizes(n_experts, top_k, n_group, topk_group, router)
        self.n_experts, self.top_k, self.score = n_experts, top_k, router
        self.norm_topk_prob, self.n_group, self.topk_group = bool(norm_topk_prob), n_group, topk_group
        self.routed_scaling_factor = float(routed_scaling_factor)
        self.weight = _param((n_experts, n_embd), dtype, device)
        init.uniform_(self.weight, -1 / math.sqrt(n_embd), 1 / math.sqrt(n_embd))
        if router == "sigmoid":
            xp = backend.xp_of(self.weight.device)
            self.register_buffer("e_score_correction_bias", xp.zeros(n_experts, dtype=self.weight.dtype))

    def forward(self, x2):
        """(logits (N, E), idx (N, k) expert ids as an array, w (N, k) gate weights) for x2 (N, C)."""
        logits = F.linear(x2, self.weight)  # (N, E)
        idx = self.choose(logits.data)
        w = F.topk_gate(logits, idx, self.score, self.norm_topk_prob, self.routed_scaling_factor)
        return logits, idx, w

    def choose(self, logits):
        """(N, k) expert ids (integers: the choice takes no gradient); ties go to the lower id."""
        check_router_logits(logits)
        scores = router_scores(logits.astype(np.float32, copy=False) if logits.dtype != np.float64 else logits,
                               self.score)
        bias = getattr(self, "e_score_correction_bias", None)
        return select_experts(scores, self.top_k, None if bias is None else bias.data,
                              self.n_group, self.topk_group)

    def extra_repr(self):
        return (f"n_experts={self.n_experts}, top_k={self.top_k}, router={self.score!r}, "
                f"norm_topk_prob={self.norm_topk_prob}")


class Experts(Module):
    """E expert MLPs with stacked weights; one GEMM per expert over the tokens routed to it.

    swiglu: gate_up_proj (E, 2I, C), the gate rows then the up rows, as transformers stores them;
    gelu: up_proj (E, I, C). down_proj (E, C, I) in both.
    """

    def __init__(self, n_embd, n_experts, hidden, act="swiglu", dtype=None, device=None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"Experts: act={act!r}; expected one of {ACTIVATIONS}")
        self.n_experts, self.hidden, self.act = n_experts, hidden, act
        up = 2 * hidden if act == "swiglu" else hidden
        w_up = _param((n_experts, up, n_embd), dtype, device)
        self.down_proj = _param((n_experts, n_embd, hidden), dtype, device)
        init.uniform_(w_up, -1 / math.sqrt(n_embd), 1 / math.sqrt(n_embd))  # nn.Linear's bound, per expert
        init.uniform_(self.down_proj, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))
        if act == "swiglu":
            self.gate_up_proj = w_up
        else:
            self.up_proj = w_up

    def forward(self, x2, w, plan):
        """x2 (N, C), gate weights w (N, k) and the plan of idx -> the weighted sum (N, C)."""
        xs = F.dispatch(x2, plan)  # (N k, C), sorted by expert
        if self.act == "swiglu":
            h = F.expert_linear(xs, self.gate_up_proj, plan.offsets)  # (N k, 2I)
            a = F.swiglu(h[:, :self.hidden], h[:, self.hidden:])  # (N k, I)
        else:
            a = F.gelu(F.expert_linear(xs, self.up_proj, plan.offsets), approximate="tanh")
        ys = F.expert_linear(a, self.down_proj, plan.offsets)  # (N k, C)
        return F.combine(ys, w, plan)  # (N, C)

    def extra_repr(self):
        return f"n_experts={self.n_experts}, hidden={self.hidden}, act={self.act!r}"


class SharedExperts(Module):
    """The experts every token passes through, as one MLP (DeepSeek's n_shared experts of hidden
    I side by side are one MLP of hidden n_shared I): gate_proj, up_proj, down_proj."""

    def __init__(self, n_embd, hidden, act="swiglu", dtype=None, device=None):
        super().__init__()
        self.act = act
        if act == "swiglu":
            self.gate_proj = Linear(n_embd, hidden, bias=False, dtype=dtype, device=device)
        self.up_proj = Linear(n_embd, hidden, bias=False, dtype=dtype, device=device)
        self.down_proj = Linear(hidden, n_embd, bias=False, dtype=dtype, device=device)

    def forward(self, x):
        if self.act == "swiglu":
            return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class MoE(Module):
    """A mixture-of-experts feed-forward layer (see the module docstring).

    n_embd C, n_experts E, top_k k, hidden I (each routed expert's hidden size), n_shared shared
    experts of hidden shared_hidden (default n_shared * I). forward(x, losses=None): x (..., C);
    in training mode, when a list is given, the weighted balancing losses are appended to it.
    Training forwards that record a graph also count the load (routing statistics, bias update).
    """
    scope_children = True  # study.scope_blocks names the router, experts and projections inside

    def __init__(self, n_embd, n_experts, top_k, hidden, n_shared=0, shared_hidden=None, act="swiglu",
                 router="softmax", norm_topk_prob=True, n_group=1, topk_group=1,
                 routed_scaling_factor=1.0, aux_loss_coef=0.0, z_loss_coef=0.0, bias_update_rate=0.0,
                 dtype=None, device=None):
        super().__init__()
        check_moe_sizes(n_experts, top_k, n_group, topk_group, router)
        for name, v in (("aux_loss_coef", aux_loss_coef), ("z_loss_coef", z_loss_coef),
                        ("bias_update_rate", bias_update_rate), ("routed_scaling_factor", routed_scaling_factor)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"MoE: {name} must be a finite number >= 0, got {v!r}")
        if bias_update_rate > 0 and router != "sigmoid":
            raise ValueError(f"MoE: bias_update_rate={bias_update_rate} moves DeepSeek's "
                             "e_score_correction_bias, which only router='sigmoid' has")
        if not isinstance(n_shared, (int, np.integer)) or n_shared < 0:
            raise ValueError(f"MoE: n_shared must be an integer >= 0, got {n_shared!r}")
        self.n_experts, self.top_k, self.n_shared = n_experts, top_k, n_shared
        self.aux_loss_coef, self.z_loss_coef = float(aux_loss_coef), float(z_loss_coef)
        self.bias_update_rate = float(bias_update_rate)
        self.gate = Router(n_embd, n_experts, top_k, router, norm_topk_prob, n_group, topk_group,
                           routed_scaling_factor, dtype, device)
        self.experts = Experts(n_embd, n_experts, hidden, act, dtype, device)
        if n_shared:
            self.shared_experts = SharedExperts(n_embd, shared_hidden or n_shared * hidden, act, dtype, device)
        # what the router did since it was last read (threads of a sharded step add together)
        self._lock = threading.Lock()
        self._load = np.zeros(n_experts, np.int64)  # for the health records (take_routing_stats)
        self._entropy_sum, self._tokens = 0.0, 0  # entropy times tokens (a device scalar on a GPU)
        self._bias_load = np.zeros(n_experts, np.int64)  # for the bias update (take_bias_load)

    def forward(self, x, losses=None):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, C)
        logits, idx, w = self.gate(x2)
        plan = DispatchPlan(idx, self.n_experts)
        y = self.experts(x2, w, plan)  # (N, C)
        if self.n_shared:
            y = y + self.shared_experts(x2)
        if self.training and losses is not None:  # also under no_grad: the same objective either way
            loss = self.balancing_loss(logits, plan.counts)
            if loss is not None:
                losses.append(loss)
        if self.training and is_grad_enabled():  # the steps that train: what the router did
            self._record(logits, plan)
        return y.reshape(shape)

    def balancing_loss(self, logits, counts):
        """aux_loss_coef * the Switch loss + z_loss_coef * the z-loss, or None when both are 0."""
        terms = []
        if self.aux_loss_coef:
            terms.append(F.load_balance_loss(logits, counts, self.gate.score) * self.aux_loss_coef)
        if self.z_loss_coef:
            terms.append(F.router_z_loss(logits) * self.z_loss_coef)
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    def _record(self, logits, plan):
        # raw arrays only, and no no_grad(): grad mode is process-wide, and the sharded step runs
        # other shards' forwards on other threads meanwhile
        entropy = routing_entropy(logits.data, self.gate.score) * plan.n_tokens
        with self._lock:
            self._load += plan.counts
            self._bias_load += plan.counts
            self._entropy_sum = self._entropy_sum + entropy  # no host read: summed on the device
            self._tokens += plan.n_tokens

    # --- what the router did, for the health records ----------------------------------------------
    def take_routing_stats(self):
        """Since the last call: {"tokens": N, "load": tokens per expert (each token counted once
        per chosen expert), "load_share": load / (N k), "entropy": mean router entropy (nats),
        "max_entropy": log E}; None when no training forward ran since."""
        with self._lock:
            load, entropy_sum, tokens = self._load.copy(), self._entropy_sum, self._tokens
            self._load[:] = 0
            self._entropy_sum, self._tokens = 0.0, 0
        if not tokens:
            return None
        mean_h = float(entropy_sum) / tokens  # a device read on a GPU: health steps only
        total = int(load.sum())
        return {"tokens": int(tokens), "load": load.tolist(),
                "load_share": (load / max(total, 1)).tolist(), "entropy": mean_h,
                "max_entropy": math.log(self.n_experts)}

    # --- DeepSeek's auxiliary-loss-free balancing --------------------------------------------------
    def take_bias_load(self):
        """Tokens per expert since the last bias update (float64, ready for an all-reduce)."""
        with self._lock:
            load = self._bias_load.astype(np.float64)
            self._bias_load[:] = 0
        return load

    def update_bias(self, load=None):
        """b_e += rate * sign(mean load - load_e): an overloaded expert's choice bias goes down,
        an underloaded one's up (DeepSeek-V3, Wang et al. 2024). load: tokens per expert (summed
        over ranks by the caller), default take_bias_load(). Returns the step applied (E,)."""
        load = self.take_bias_load() if load is None else np.asarray(backend.to_numpy(load), np.float64)
        if load.shape != (self.n_experts,):
            raise ValueError(f"MoE.update_bias: load must have {self.n_experts} entries, got shape {load.shape}")
        step = self.bias_update_rate * np.sign(load.mean() - load) if load.sum() > 0 else np.zeros_like(load)
        bias = self.gate.e_score_correction_bias
        xp = backend.array_module(bias.data)
        bias.data += xp.asarray(step, dtype=bias.data.dtype)
        return step

    def extra_repr(self):
        return f"n_experts={self.n_experts}, top_k={self.top_k}, n_shared={self.n_shared}"


def moe_layers(model):
    """(name, MoE) for every MoE layer of model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]


def update_router_biases(model, all_reduce=None):
    """Apply DeepSeek's bias update to every MoE layer of model with bias_update_rate > 0, from the
    load since the last update. Call it after each optimizer step. With several processes pass
    all_reduce (a float64 array summed over ranks in place, e.g. the world's allreduce_), so
    every rank moves its biases alike. Returns how many layers were updated."""
    n = 0
    for _, m in moe_layers(model):
        if m.bias_update_rate > 0:
            load = m.take_bias_load()
            if all_reduce is not None:
                all_reduce(load)
            m.update_bias(load)
            n += 1
    return n
