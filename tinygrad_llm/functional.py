"""The functional API: `import tinygrad_llm.functional as F`.

Each function here is a thin wrapper that calls one op's `Function.apply`; the op's module in
ops/ holds its forward and hand-derived backward side by side.
"""
from .ops.linear import Linear


def linear(x, weight, bias=None):
    """y = x @ weight^T + bias, weight stored (out_features, in_features) as in PyTorch."""
    return Linear.apply(x, weight) if bias is None else Linear.apply(x, weight, bias)
