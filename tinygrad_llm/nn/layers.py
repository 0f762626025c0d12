"""The layers a GPT is built from: Linear, Embedding, LayerNorm, RMSNorm, Dropout, GELU.

Each holds its parameters and calls one function of tinygrad_llm.functional, where the op (and
its hand-derived backward) lives. Initialisations follow PyTorch's defaults.
"""

from .. import backend
from .. import functional as F
from . import init
from .module import Module, Parameter


def _param(shape, dtype, device):
    device = backend.check_device(device or backend.default_device())
    xp = backend.xp_of(device)
    return Parameter(xp.empty(shape, dtype=backend.resolve_dtype(dtype)))


class Linear(Module):
    """y = x W^T + b.

    weight is stored (out_features, in_features), as in PyTorch. Hugging Face GPT-2 checkpoints
    keep these layers as Conv1D with the weight stored (in, out): loading one is a single
    transpose, `linear.weight.data[...] = conv1d_weight.T`.
    Init: W, b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) (PyTorch's default).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None, device=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear({in_features}, {out_features}): sizes must be positive")
        self.in_features, self.out_features = in_features, out_features
        self.weight = _param((out_features, in_features), dtype, device)
        self.bias = _param((out_features,), dtype, device) if bias else None
        init.linear_default_(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Embedding(Module):
    """y = weight[ids]: a lookup table of num_embeddings rows of size embedding_dim.
    Init: N(0, 1) (PyTorch's default; GPT-2 uses std 0.02, which the model sets itself).
    padding_idx: a row the lookup never trains (as in PyTorch; Hugging Face models pass their
    pad_token_id)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=None, device=None, padding_idx=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = _param((num_embeddings, embedding_dim), dtype, device)
        init.normal_(self.weight)

    def forward(self, ids):
        return F.embedding(ids, self.weight, padding_idx=self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis.
    Init: weight ones, bias zeros. bias=False drops the bias (as nanoGPT's LayerNorm does)."""

    def __init__(self, normalized_shape, eps=1e-5, bias=True, dtype=None, device=None):
        super().__init__()
        self.normalized_shape, self.eps = int(normalized_shape), eps
        self.weight = init.ones_(_param((self.normalized_shape,), dtype, device))
        self.bias = init.zeros_(_param((self.normalized_shape,), dtype, device)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self):
        return f"({self.normalized_shape},), eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * (offset + weight) over the last axis. Init: a unit gain
    (weight ones, or zeros with offset 1).

    offset=1 is Gemma's form, whose checkpoints store the gain minus one: the gain is formed as
    (1 + weight) each call, an Add before the norm op, so dweight is the norm's dw unchanged."""

    def __init__(self, normalized_shape, eps=1e-6, dtype=None, device=None, offset=0.0):
        super().__init__()
        if offset not in (0, 1):
            raise ValueError(f"RMSNorm: offset must be 0 (gain = weight) or 1 (gain = 1 + weight), got {offset!r}")
        self.normalized_shape, self.eps, self.offset = int(normalized_shape), eps, float(offset)
        self.weight = _param((self.normalized_shape,), dtype, device)
        if self.offset:
            init.zeros_(self.weight)
        else:
            init.ones_(self.weight)

    def forward(self, x):
        gain = self.weight if self.offset == 0 else self.weight + self.offset
        return F.rms_norm(x, gain, eps=self.eps)

    def extra_repr(self):
        return f"({self.normalized_shape},), eps={self.eps}" + (f", offset={self.offset:g}" if self.offset else "")


class Dropout(Module):
    """Zero each element with probability p while training (scaling the rest by 1/(1-p));
    the identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)  # the identity when not training or p == 0

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """GELU(x) = x * Phi(x); approximate="tanh" is GPT-2's form, "none" the exact erf one."""

    def __init__(self, approximate="tanh"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


__all__ = ["Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU"]
