"""LoRA (Hu et al. 2021): fine-tune a frozen Linear through a trainable low-rank update.

    y = x W^T + b + (alpha / r) x A^T B^T        A (r, in), B (out, r), r << min(in, out)

W and b stay frozen; only A and B train, so the optimizer keeps state for r (in + out) numbers
per layer instead of in * out. B starts at zero, so at step 0 the model computes exactly what it
computed before. The forward and its hand-derived backward are one op (ops/lora.py).

    nn.apply_lora(model, rank=8, alpha=16, targets=("c_attn", "c_proj"))  # freezes the rest
    opt = optim.AdamW(nn.trainable_parameters(model))                      # A and B only
    nn.merge_lora(model)    # W += (alpha/r) B A: plain Linears again, for export or speed
    nn.unmerge_lora(model)  # W -= (alpha/r) B A: back to training the adapters
    nn.lora_state_dict(model)  # just the adapters, to save on their own (finetune/adapters.py)
"""
import math

from .. import functional as F
from ..autograd import no_grad
from . import init
from .layers import Linear, _param
from .module import Module


class LoRALinear(Module):
    """A Linear (whose weight and bias it shares, frozen) plus the adapters lora_A and lora_B.

    Init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's Linear default, as PEFT does), B = 0.
    merged: W already holds W + s B A, and forward is the plain Linear.
    """

    def __init__(self, base, rank=8, alpha=16):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRALinear: rank must be a positive integer, got {rank!r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.weight = base.weight
        self.bias = base.bias
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad_(False)
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = _param((rank, self.in_features), dtype, device)
        self.lora_B = init.zeros_(_param((self.out_features, rank), dtype, device))
        bound = 1.0 / math.sqrt(self.in_features)
        init.uniform_(self.lora_A, -bound, bound)
        self.merged = False

    def forward(self, x):
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        return F.lora_linear(x, self.weight, self.lora_A, self.lora_B, self.scale, self.bias)

    def delta(self):
        """s B A, the (out, in) update the adapters add to W."""
        return (self.lora_B.data @ self.lora_A.data) * self.scale

    @no_grad()
    def merge(self):
        if not self.merged:
            self.weight.data += self.delta().astype(self.weight.dtype, copy=False)
            self.merged = True

    @no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.data -= self.delta().astype(self.weight.dtype, copy=False)
            self.merged = False

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}, merged={self.merged}")


def _matches(name, targets):
    return name.rsplit(".", 1)[-1] in targets or any(name.endswith("." + t) or name == t for t in targets)


def apply_lora(model, rank=8, alpha=16, targets=("c_attn", "c_proj"), freeze=True):
    """Replace every nn.Linear whose name ends in one of targets ("c_attn", or "attn.c_proj")
    by a LoRALinear around it; with freeze, every other parameter stops training too.

    Returns the dotted names of the layers replaced. A layer whose weight is tied to another
    parameter (GPT-2's lm_head and wte) is refused: an update to one would silently move both.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    counts = {}
    for p in _all_parameters(model):
        counts[id(p)] = counts.get(id(p), 0) + 1
    replaced, linears = [], []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, Linear):
            continue
        linears.append(name)
        if not _matches(name, targets):
            continue
        if counts.get(id(mod.weight), 0) > 1:
            raise ValueError(f"apply_lora: {name}.weight is tied to another parameter; "
                             "LoRA on a tied matrix would change both (leave it out of targets)")
        parent, child = _parent(model, name)
        setattr(parent, child, LoRALinear(mod, rank, alpha))
        replaced.append(name)
    if not replaced:
        raise ValueError(f"apply_lora: no nn.Linear matches targets {targets}; the model's Linear "
                         f"layers are {linears[:8]}{'...' if len(linears) > 8 else ''}")
    return replaced


def _all_parameters(model):
    return (p for _, p in model.named_parameters(remove_duplicate=False))


def _parent(model, name):
    *path, child = name.split(".")
    parent = model
    for part in path:
        parent = parent._modules[part]
    return parent, child


def lora_layers(model):
    """(dotted name, LoRALinear) for every adapter in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model):
    """Fold every adapter into its weight (W += s B A): the model computes the same, as plain Linears."""
    for _, m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model):
    """Undo merge_lora (W -= s B A), within float rounding."""
    for _, m in lora_layers(model):
        m.unmerge()
    return model


def lora_state_dict(model):
    """{dotted name: array} of the adapters alone (lora_A and lora_B of every LoRALinear)."""
    return {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in ("lora_A", "lora_B")}


def trainable_parameters(model):
    """The parameters that require a gradient: what an optimizer should hold state for."""
    return [p for p in model.parameters() if p.requires_grad]


__all__ = ["LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_layers", "lora_state_dict",
           "trainable_parameters"]
