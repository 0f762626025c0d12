"""In-place initialisers drawing from the seeded generator (tl.manual_seed fixes them).

Each fills a tensor's array in place, in its own dtype (float32 samples are drawn as float32,
no float64 detour), and returns the tensor.
"""
import math
from contextlib import contextmanager

from .. import backend
from ..autograd import no_grad

_skipping = False


@contextmanager
def skipped(skip=True):
    """Inside, every initialiser here leaves its tensor as allocated: for a loader that overwrites
    every parameter next (models/hf.py), so no random draw is paid for and no page is touched."""
    global _skipping
    before, _skipping = _skipping, bool(skip)
    try:
        yield
    finally:
        _skipping = before


@no_grad()
def uniform_(t, a=0.0, b=1.0):
    """t ~ U(a, b)."""
    if _skipping:
        return t
    gen = backend.rng(t.device)
    t.data[...] = gen.random(t.shape, dtype=t.dtype)
    t.data *= (b - a)
    t.data += a
    return t


@no_grad()
def normal_(t, mean=0.0, std=1.0):
    """t ~ N(mean, std^2)."""
    if _skipping:
        return t
    gen = backend.rng(t.device)
    t.data[...] = gen.standard_normal(t.shape, dtype=t.dtype)
    if std != 1.0:
        t.data *= std
    if mean != 0.0:
        t.data += mean
    return t


def zeros_(t):
    if _skipping:
        return t
    t.data[...] = 0
    return t


def ones_(t):
    if _skipping:
        return t
    t.data[...] = 1
    return t


def fan_in(t):
    """Inputs per output unit: shape[1] times the receptive field for a (out, in, ...) weight."""
    if t.ndim < 2:
        raise ValueError(f"fan_in needs a weight with at least 2 dimensions, got shape {t.shape}")
    return t.shape[1] * math.prod(t.shape[2:])


def linear_default_(weight, bias=None):
    """PyTorch's nn.Linear default: W, b ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with
    a = sqrt(5) works out to exactly this bound)."""
    bound = 1.0 / math.sqrt(fan_in(weight)) if fan_in(weight) > 0 else 0.0
    uniform_(weight, -bound, bound)
    if bias is not None:
        uniform_(bias, -bound, bound)
    return weight
