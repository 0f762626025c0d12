"""Which parameters get weight decay, and the Muon + AdamW hybrid.

The rule (by parameter ndim and owning module type, as nanoGPT's configure_optimizers does):
  * decay:    weight matrices of Linear layers (and any other parameter with ndim >= 2)
  * no decay: every parameter with ndim < 2 (biases, LayerNorm / RMSNorm gains and biases),
              every parameter of a LayerNorm or RMSNorm, and embedding tables unless
              decay_embeddings=True.
A parameter shared by two modules (a tied embedding / output head) counts as an embedding if
any module holding it is an Embedding.
"""
from ..nn.layers import Embedding, LayerNorm, RMSNorm
from .adam import AdamW
from .muon import Muon


def _owner_types(model):
    """id(param) -> set of the types of every module that holds it (tied weights: several)."""
    owners = {}
    for _, mod in model.named_modules():
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(type(mod))
    return owners


def _is_embedding(p, owners):
    return any(issubclass(t, Embedding) for t in owners[id(p)])


def _decays(p, owners, decay_embeddings):
    if p.ndim < 2 or any(issubclass(t, (LayerNorm, RMSNorm)) for t in owners[id(p)]):
        return False
    return decay_embeddings or not _is_embedding(p, owners)


def param_groups_for_weight_decay(model, weight_decay, decay_embeddings=False, params=None):
    """[{"params": decayed, "weight_decay": weight_decay}, {"params": the rest, "weight_decay": 0.0}]
    for any optimizer that takes param groups (empty groups left out). `params` restricts the
    split to a subset of model's (named) parameters."""
    owners = _owner_types(model)
    chosen = list(model.parameters()) if params is None else list(params)
    decay = [p for p in chosen if _decays(p, owners, decay_embeddings)]
    no_decay = [p for p in chosen if not _decays(p, owners, decay_embeddings)]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class CombinedOptimizer:
    """Several optimizers stepped as one: step, zero_grad, state_dict and param_groups (all
    groups of all parts, the same dicts, so setting a group's lr reaches the right part)."""

    def __init__(self, *optimizers):
        self.optimizers = [o for o in optimizers if o is not None]

    @property
    def param_groups(self):
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none=False):
        for o in self.optimizers:
            o.zero_grad(set_to_none)

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state):
        parts = state["optimizers"]
        if len(parts) != len(self.optimizers):
            raise ValueError(f"CombinedOptimizer.load_state_dict: {len(parts)} optimizers saved, "
                             f"this one combines {len(self.optimizers)}")
        for o, s in zip(self.optimizers, parts):
            o.load_state_dict(s)

    def __repr__(self):
        return "CombinedOptimizer(\n" + "\n".join(repr(o) for o in self.optimizers) + "\n)"


def muon_hybrid(model, muon_lr=0.02, adamw_lr=3e-4, momentum=0.95, nesterov=True,
                muon_weight_decay=0.0, adamw_betas=(0.9, 0.95), adamw_eps=1e-8,
                adamw_weight_decay=0.0, decay_embeddings=False, head_names=("lm_head",),
                ns_steps=5, ns_schedule="jordan", map_fn=None):
    """The usual Muon setup: Muon for the hidden weight matrices, AdamW for the rest.

    Muon gets every parameter with ndim >= 2 that is not an embedding table and whose dotted
    name has no component in head_names (the output layer; tied to the token embedding it is an
    embedding anyway). AdamW gets embeddings, the head, norms and biases, split into decay /
    no-decay groups by param_groups_for_weight_decay. Returns a CombinedOptimizer; its
    param_groups are [Muon's group, AdamW's groups...]. map_fn: Muon's (see Muon).
    """
    owners = _owner_types(model)
    hidden, rest = [], []
    for name, p in model.named_parameters():
        is_head = any(part in head_names for part in name.split("."))
        (hidden if p.ndim >= 2 and not is_head and not _is_embedding(p, owners) else rest).append(p)
    muon = Muon(hidden, lr=muon_lr, momentum=momentum, nesterov=nesterov,
                weight_decay=muon_weight_decay, ns_steps=ns_steps, ns_schedule=ns_schedule,
                map_fn=map_fn) if hidden else None
    adamw = None
    if rest:
        groups = param_groups_for_weight_decay(model, adamw_weight_decay, decay_embeddings, params=rest)
        adamw = AdamW(groups, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, weight_decay=0.0)
    return CombinedOptimizer(muon, adamw)
