"""Rotary position embedding (RoPE, Su et al. 2021) as one op, in the "rotate half" layout, and the
frequency tables of its scaled variants.

Each head vector x of size hs is cut into halves (x1, x2); pair i (x1[i], x2[i]) at position t is
rotated by the angle t * inv_freq[i], inv_freq[i] = theta^(-2i/hs). Attention scores q.k then depend
only on the distance between the two positions, which is why no position table is learned.

The scaled variants (Hugging Face's `rope_scaling` / `rope_parameters`: linear, dynamic NTK, YaRN,
Llama 3) change only inv_freq, and YaRN also an attention factor that multiplies cos and sin. Both
are constants: no gradient reaches them, so the op and its backward are the same for every variant.
"""
import math

import numpy as np

from ..autograd import Function
from ..backend import array_module

# rope_type -> the keys of its scaling dict (besides rope_type/type and rope_theta) that it reads
ROPE_SCALING_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
ROPE_SCALING_REQUIRED = {"linear": {"factor"}, "dynamic": {"factor"}, "yarn": {"factor"},
                         "llama3": {"factor", "low_freq_factor", "high_freq_factor"}}


def rope_type(scaling):
    """The variant a scaling dict names ("default" for None), spelled rope_type or (older) type."""
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def check_rope_scaling(scaling, where="rope_scaling"):
    """Raise a ValueError naming the rope_type or key that rope_inv_freq does not implement."""
    kind = rope_type(scaling)
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"{where}: rope_type {kind!r} is not implemented; implemented: "
                         f"{sorted(ROPE_SCALING_KEYS)}")
    if not scaling:
        return kind
    unknown = sorted(set(scaling) - ROPE_SCALING_KEYS[kind] - {"rope_type", "type", "rope_theta"})
    if unknown:
        raise ValueError(f"{where}: rope_type {kind!r} with {unknown}, which it does not implement "
                         f"(it reads {sorted(ROPE_SCALING_KEYS[kind])})")
    missing = sorted(k for k in ROPE_SCALING_REQUIRED.get(kind, ()) if k not in scaling)
    if missing:
        raise ValueError(f"{where}: rope_type {kind!r} needs {missing}")
    factor = scaling.get("factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not math.isfinite(factor) or factor <= 0):
        raise ValueError(f"{where}: factor must be a positive number, got {factor!r}")
    return kind


def rope_inv_freq(head_dim, theta=10000.0, scaling=None, max_position_embeddings=None, seq_len=None):
    """(inv_freq (head_dim // 2,) float64, attention_factor) of a RoPE variant, as transformers'
    ROPE_INIT_FUNCTIONS compute them (in float64 here, float32 there).

    scaling: None or a dict in Hugging Face's spelling, e.g. {"rope_type": "yarn", "factor": 4.0,
    "original_max_position_embeddings": 1024}:
      linear   every frequency divided by factor (positions interpolated)
      dynamic  NTK: theta raised to theta * (factor L / L_max - (factor - 1))^(d / (d - 2)) for a
               sequence of L = max(seq_len, L_max) positions, so it changes only past L_max
      yarn     low frequencies interpolated, high ones kept, a linear ramp between (beta_fast,
               beta_slow rotations); attention_factor = 0.1 ln(factor) + 1 unless given
      llama3   wavelengths above L_orig / low_freq_factor divided by factor, below
               L_orig / high_freq_factor kept, smoothly blended between
    max_position_embeddings: L_max (dynamic; the default L_orig of yarn and llama3).
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE needs an even head size, got {head_dim}")
    kind = check_rope_scaling(scaling)
    scaling = dict(scaling or {})
    if "rope_theta" in scaling and float(scaling["rope_theta"]) != float(theta):
        raise ValueError(f"rope_inv_freq: scaling's rope_theta {scaling['rope_theta']} differs from theta {theta}")
    d = head_dim
    exponents = np.arange(0, d, 2, dtype=np.float64) / d  # (d/2,)
    inv_freq = 1.0 / theta ** exponents
    attention_factor = 1.0
    original = scaling.get("original_max_position_embeddings") or max_position_embeddings
    if kind in ("dynamic", "yarn", "llama3") and not original:
        raise ValueError(f"rope_inv_freq: rope_type {kind!r} needs max_position_embeddings")
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "dynamic":
        factor, L_max = scaling["factor"], max_position_embeddings
        L = max(seq_len or L_max, L_max)
        base = theta * ((factor * L / L_max) - (factor - 1)) ** (d / (d - 2))
        inv_freq = 1.0 / base ** exponents
    elif kind == "yarn":
        inv_freq, attention_factor = _yarn(inv_freq, d, theta, scaling, original, max_position_embeddings)
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, scaling, original)
    return inv_freq, float(attention_factor)


def _yarn_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(inv_freq, d, theta, scaling, original, max_position_embeddings):
    """YaRN (Peng et al. 2023): per frequency, a blend of the interpolated inv_freq / factor and the
    extrapolated inv_freq, by a ramp over the dimensions between the correction range's ends."""
    factor = scaling.get("factor")
    if factor is None:  # DeepSeek-V3 style: the ratio of the extended to the original length
        factor = max_position_embeddings / original
    attention_factor = scaling.get("attention_factor")
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32  # transformers: a 0 or None means the default
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations):  # the dimension whose wavelength fits `rotations` times in L_orig
        return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolate = 1.0 - ramp  # 1: keep the frequency, 0: interpolate it
    inv_freq = inv_freq / factor * (1.0 - extrapolate) + inv_freq * extrapolate
    return inv_freq, attention_factor


def _llama3(inv_freq, scaling, original):
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    low_freq_wavelen, high_freq_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled)


def rope_tables(block_size, head_size, theta=10000.0, dtype=np.float32, xp=np, scaling=None,
                max_position_embeddings=None, start=0):
    """(cos, sin), each (block_size, head_size // 2): the rotation of pair i at positions
    start .. start + block_size - 1, times the variant's attention factor (see rope_inv_freq; a
    dynamic variant uses the frequencies of a sequence of start + block_size positions)."""
    inv_freq, attention_factor = rope_inv_freq(head_size, theta, scaling, max_position_embeddings,
                                               seq_len=start + block_size)
    positions = np.arange(start, start + block_size, dtype=np.float64)
    angles = np.outer(positions, inv_freq)  # (T, hs/2), in float64: large t keeps its phase
    cos, sin = np.cos(angles), np.sin(angles)
    if attention_factor != 1.0:
        cos *= attention_factor
        sin *= attention_factor
    return xp.asarray(cos, dtype=dtype), xp.asarray(sin, dtype=dtype)


class RoPE(Function):
    """y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin   for x = (x1, x2) split along the last axis.

    Backward applies the transposed rotation (the rotation by -angle):
    dx1 = dy1 cos + dy2 sin,  dx2 = dy2 cos - dy1 sin. Nothing is saved but the tables.
    Derivation: docs/backward.md#rope
    """

    @staticmethod
    def forward(ctx, x, cos, sin):
        # x (B, H, T, hs); cos, sin (T, hs/2) broadcast over B and H
        half = x.shape[-1] // 2
        if cos.shape != (x.shape[-2], half):
            raise ValueError(f"rope: tables of shape {cos.shape} do not fit x of shape {x.shape}; "
                             f"expected ({x.shape[-2]}, {half})")
        x1, x2 = x[..., :half], x[..., half:]
        y = array_module(x).empty_like(x)
        np_mul = array_module(x).multiply
        np_mul(x1, cos, out=y[..., :half])
        y[..., :half] -= x2 * sin
        np_mul(x2, cos, out=y[..., half:])
        y[..., half:] += x1 * sin
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved
        half = dy.shape[-1] // 2
        dy1, dy2 = dy[..., :half], dy[..., half:]
        dx = array_module(dy).empty_like(dy)
        dx[..., :half] = dy1 * cos + dy2 * sin
        dx[..., half:] = dy2 * cos - dy1 * sin
        return dx, None, None
