"""Activations as single ops: GELU (tanh and exact forms), SiLU, the fused SwiGLU and GeGLU
products, and tanh soft-capping.

Each forward keeps what makes its backward cheap: the tanh (or erf) term for GELU and the sigmoid
for SiLU/SwiGLU, so backward is a few multiplies and no transcendental function. Every pass after
the first writes in place: a fresh array per step costs page faults, not just arithmetic.
"""
import math

import numpy as np

from .. import cuda
from ..autograd import Function
from ..backend import array_module
from .row_chunks import by_row_chunks
from .elementwise import one_over_one_plus_exp, sigmoid_cpu

# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969):
# erf on |x| <= 0.46875, erfc on (0.46875, 4] and on (4, inf); near double precision on each.
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_RSQRTPI = 1.0 / math.sqrt(math.pi)


def erf(x):
    """erf(x) elementwise in x's dtype (NumPy has none), by Cody's three rational approximations."""
    with np.errstate(invalid="ignore", over="ignore"):  # +-inf: the unused branches give nan
        return _erf(x)


def _rational(z, num, den):
    """Cody's rational function of z, both polynomials by Horner's rule:
    (((num[-1] z + num[0]) z + num[1]) z ... + num[n]) / (((z + den[0]) z + den[1]) z ... + den[n])
    with n = len(den) - 1 (the denominator's leading coefficient is 1)."""
    n = len(den) - 1
    p, q = num[-1] * z, z.copy()
    for a, b in zip(num[:n], den[:n]):
        p += a
        p *= z
        q += b
        q *= z
    return (p + num[n]) / (q + den[n])


def _erf(x):
    xp = array_module(x)
    y = xp.abs(x)
    z = y * y
    small = x * _rational(z, _A, _B)
    ym = xp.minimum(y, 4.0)  # clamped so the unused branch cannot overflow
    erfc = _rational(ym, _C, _D)
    yb = xp.maximum(y, 4.0)
    w = 1.0 / (yb * yb)
    erfc_big = (_RSQRTPI - w * _rational(w, _P, _Q)) / yb
    erfc = xp.where(y <= 4.0, erfc, erfc_big)
    erfc *= xp.exp(-z)  # erfc(y) = exp(-y^2) R(y) on both outer intervals
    big = xp.copysign(1.0 - erfc, x)
    return xp.where(y <= 0.46875, small, big).astype(x.dtype, copy=False)


_K = math.sqrt(2.0 / math.pi)  # tanh-GELU: tanh(K (x + 0.044715 x^3))
_C3 = 0.044715
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --- the textbook versions: the docstrings' formulas in plain NumPy, for reading and for the
# tests, which check the tuned *_cpu functions below against them (host arrays only) ------------
def gelu_textbook(x, approximate="tanh"):
    """y = x Phi(x): Phi = 0.5 (1 + erf(x / sqrt 2)), or 0.5 (1 + tanh(K (x + 0.044715 x^3)))."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_K * (x + _C3 * x ** 3)))
    return 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[x.dtype])(x / math.sqrt(2.0)))


def gelu_backward_textbook(dy, x, approximate="tanh"):
    """dx = dy (Phi + x Phi'): Phi' = exp(-x^2 / 2) / sqrt(2 pi), or, with t = tanh u,
    0.5 (1 - t^2) K (1 + 3 * 0.044715 x^2)."""
    if approximate == "tanh":
        t = np.tanh(_K * (x + _C3 * x ** 3))
        return dy * (0.5 * (1.0 + t) + x * 0.5 * (1.0 - t * t) * _K * (1.0 + 3.0 * _C3 * x * x))
    phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (0.5 * (1.0 + np.vectorize(math.erf, otypes=[x.dtype])(x / math.sqrt(2.0))) + x * phi)


# --- the tuned versions -----------------------------------------------------------------------
def gelu_tanh_forward_cpu(x, out=None):
    """(y, h) with h = 0.5 (1 + tanh u), u = K (x + 0.044715 x^3), and y = x h (into out=(y, h)).

    h is computed as 1 / (1 + exp(-2u)), the same number: no cancellation where tanh u is near -1
    (x below about -4), which float32 would lose entirely (see one_over_one_plus_exp), and the
    same formula as kernels/gelu.cu. (It is also faster: NumPy's exp beats its tanh.)
    """
    xp = array_module(x)
    y, h = out if out is not None else (None, None)
    h = xp.multiply(x, x, out=h)
    h *= -2.0 * _K * _C3
    h -= 2.0 * _K
    h *= x  # -2u
    one_over_one_plus_exp(h)
    return xp.multiply(x, h, out=y), h


def gelu_tanh_backward_cpu(dy, x, h, out=None):
    """dx = dy * (h + 2 K x h (1 - h)(1 + 3 * 0.044715 x^2)), using 1 - tanh^2 = 4 h (1 - h)."""
    d = array_module(x).multiply(x, x, out=out)
    d *= 2.0 * _K * 3.0 * _C3
    d += 2.0 * _K
    d *= x
    d *= h
    d -= d * h  # 2 K x (1 + 3c x^2) h (1 - h)
    d += h
    d *= dy
    return d


def gelu_exact_forward_cpu(x, out=None):
    """(y, h) with h = Phi(x) = 0.5 (1 + erf(x / sqrt 2)) and y = x h (into out=(y, h) if given)."""
    xp = array_module(x)
    y, h_out = out if out is not None else (None, None)
    h = erf(x * _INV_SQRT2)
    h += 1.0
    h *= 0.5
    if h_out is not None:
        h_out[...] = h
        h = h_out
    return xp.multiply(x, h, out=y), h


def gelu_exact_backward_cpu(dy, x, h, out=None):
    """dx = dy * (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    xp = array_module(x)
    d = xp.multiply(x, x, out=out)
    d *= -0.5
    xp.exp(d, out=d)
    d *= _INV_SQRT2PI
    d *= x
    d += h
    d *= dy
    return d


def silu_forward_cpu(x):
    """(y, s) with s = sigmoid(x) and y = x s."""
    s = sigmoid_cpu(x)
    return x * s, s


def silu_backward_cpu(dy, y, s):
    """dx = dy * s (1 + x (1 - s)) = dy * (s + y (1 - s)) for y = x s, s = sigmoid(x)."""
    xp = array_module(dy)
    d = y * s
    xp.subtract(y, d, out=d)  # y (1 - s)
    d += s
    d *= dy
    return d


class GELU(Function):
    """y = x Phi(x): exact Phi(x) = 0.5 (1 + erf(x / sqrt 2)), or approximate="tanh":
    Phi ~ h = 0.5 (1 + tanh(K (x + 0.044715 x^3))), K = sqrt(2 / pi).

    Backward: exact dx = dy (Phi + x phi); tanh dx = dy (h + 2 K x h (1 - h)(1 + 0.134145 x^2)).
    Saved on the CPU: x and h, so backward needs no tanh/erf; on the GPU only x (the kernel's
    backward recomputes h). The CPU and the GPU compute h alike, as 1 / (1 + exp(-2u))
    (gelu_tanh_forward_cpu says why).  Derivation: docs/backward.md#gelu
    """

    @staticmethod
    def forward(ctx, x, approximate="tanh"):
        if approximate not in ("tanh", "none"):
            raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
        fwd = gelu_tanh_forward_cpu if approximate == "tanh" else gelu_exact_forward_cpu
        x1 = x.reshape(-1)  # flat (a view): a 0-d input would turn the in-place passes into scalars
        # the kernel's backward recomputes h from x: nothing else is saved. bf16 (under autocast)
        # is served too: the kernel computes in float and rounds once
        if cuda.serves(x1, bf16=True):
            y, h = cuda.gelu_forward(x1, approximate), None
        else:
            y, h = by_row_chunks(fwd, x1, inplace=True)
        ctx.save_for_backward(x1, h)
        ctx.approximate = approximate
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, h = ctx.saved
        if h is None:
            return cuda.gelu_backward(x, dy.reshape(-1), ctx.approximate).reshape(dy.shape)
        bwd = gelu_tanh_backward_cpu if ctx.approximate == "tanh" else gelu_exact_backward_cpu
        return by_row_chunks(bwd, dy.reshape(-1), x, h, inplace=True).reshape(dy.shape)


class SiLU(Function):
    """y = x sigmoid(x).   dx = dy s (1 + x (1 - s)) = dy (s + y (1 - s)).
    Saved: y and s (x is not needed: y carries it), so backward is four multiply-adds.
    Derivation: docs/backward.md#silu
    """

    @staticmethod
    def forward(ctx, x):
        x1 = x.reshape(-1)  # flat, as in GELU
        y, s = silu_forward_cpu(x1)  # no row chunks: measured no faster for this short chain
        ctx.save_for_backward(y, s)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        y, s = ctx.saved
        return silu_backward_cpu(dy.reshape(-1), y, s).reshape(dy.shape)


def swiglu_forward_cpu(gate, up):
    """(y, a, s) with s = sigmoid(gate), a = silu(gate) = gate s and y = a up."""
    s = sigmoid_cpu(gate)
    a = gate * s
    return a * up, a, s


def swiglu_backward_cpu(dy, a, up, s):
    """(dgate, dup) = (dy up (s + a (1 - s)), dy a) with a = silu(gate)."""
    return silu_backward_cpu(dy * up, a, s), dy * a


class SwiGLU(Function):
    """y = silu(gate) * up, the gated unit of a SwiGLU MLP, as one op.

    Backward: dgate = dy up s (1 + gate (1 - s)) = dy up (s + a (1 - s)),  dup = dy a, with
    a = silu(gate) = gate s.  Saved: a, up and s (gate itself is not needed again).
    Derivation: docs/backward.md#swiglu
    """

    @staticmethod
    def forward(ctx, gate, up):
        if gate.shape != up.shape:
            raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} must have the same shape")
        shape = gate.shape
        gate, up = gate.reshape(-1), up.reshape(-1)  # flat, as in GELU
        y, a, s = swiglu_forward_cpu(gate, up)
        ctx.save_for_backward(a, up, s)
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        a, up, s = ctx.saved
        need_g, need_u = ctx.needs_input_grad
        dgate, dup = swiglu_backward_cpu(dy.reshape(-1), a, up, s)
        return (dgate.reshape(dy.shape) if need_g else None), (dup.reshape(dy.shape) if need_u else None)


# --- GeGLU: gelu(gate) * up (Gemma's gated MLP) ------------------------------------------------
def geglu_textbook(gate, up, approximate="tanh"):
    """y = gelu(gate) * up."""
    return gelu_textbook(gate, approximate) * up


def geglu_backward_textbook(dy, gate, up, approximate="tanh"):
    """(dgate, dup) = (dy up gelu'(gate), dy gelu(gate))."""
    return gelu_backward_textbook(dy * up, gate, approximate), dy * gelu_textbook(gate, approximate)


class GeGLU(Function):
    """y = gelu(gate) * up, the gated unit of a GeGLU MLP (Gemma: gelu's tanh form), as one op.

    Backward: dgate = dy up gelu'(gate),  dup = dy gelu(gate) = dy gate h, with h GELU's Phi (or its
    tanh form) as in GELU, so gelu' = h + gate h' needs no tanh or erf either.
    Saved: gate, h and up; gelu(gate) = gate h is rebuilt in backward (one multiply, one array less).
    Derivation: docs/backward.md#geglu
    """

    @staticmethod
    def forward(ctx, gate, up, approximate="tanh"):
        if approximate not in ("tanh", "none"):
            raise ValueError(f"geglu: approximate must be 'tanh' or 'none', got {approximate!r}")
        if gate.shape != up.shape:
            raise ValueError(f"geglu: gate {gate.shape} and up {up.shape} must have the same shape")
        shape = gate.shape
        gate, up = gate.reshape(-1), up.reshape(-1)  # flat, as in GELU
        fwd = gelu_tanh_forward_cpu if approximate == "tanh" else gelu_exact_forward_cpu
        a, h = by_row_chunks(fwd, gate, inplace=True)  # a = gelu(gate)
        a *= up
        ctx.save_for_backward(gate, h, up)
        ctx.approximate = approximate
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        gate, h, up = ctx.saved
        need_g, need_u = ctx.needs_input_grad
        dy1 = dy.reshape(-1)
        dup = dy1 * gate * h if need_u else None  # dy gelu(gate)
        dgate = None
        if need_g:
            bwd = gelu_tanh_backward_cpu if ctx.approximate == "tanh" else gelu_exact_backward_cpu
            dgate = bwd(dy1 * up, gate, h)
        return (dgate.reshape(dy.shape) if need_g else None), (dup.reshape(dy.shape) if need_u else None)


# --- tanh soft-capping: cap tanh(x / cap) (Gemma's final logits) -------------------------------
def soft_cap_textbook(x, cap):
    """y = cap tanh(x / cap)."""
    return cap * np.tanh(x / cap)


def soft_cap_backward_textbook(dy, x, cap):
    """dx = dy (1 - tanh^2(x / cap))."""
    return dy * (1.0 - np.tanh(x / cap) ** 2)


def soft_cap_forward_cpu(x, cap):
    """y = cap tanh(x / cap), in two in-place passes after the first."""
    xp = array_module(x)
    y = xp.multiply(x, x.dtype.type(1.0 / cap))
    xp.tanh(y, out=y)
    y *= x.dtype.type(cap)
    return y


def soft_cap_backward_cpu(dy, y, cap):
    """dx = dy (1 - (y / cap)^2): the tanh is y / cap, so backward evaluates no tanh."""
    t = y * y.dtype.type(1.0 / cap)
    t *= t
    array_module(y).subtract(y.dtype.type(1.0), t, out=t)
    t *= dy
    return t


class SoftCap(Function):
    """y = cap tanh(x / cap): smooth, odd, ~x for |x| << cap, never past +-cap.

    Backward: dx = dy (1 - tanh^2(x / cap)) = dy (1 - (y / cap)^2). Saved: y only.
    Derivation: docs/backward.md#softcap
    """

    @staticmethod
    def forward(ctx, x, cap):
        cap = float(cap)
        if not np.isfinite(cap) or cap <= 0:
            raise ValueError(f"soft_cap: cap must be a finite number > 0, got {cap}")
        y = soft_cap_forward_cpu(x.reshape(-1), cap)  # flat, as in GELU
        ctx.save_for_backward(y)
        ctx.cap = cap
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return soft_cap_backward_cpu(dy.reshape(-1), y, ctx.cap).reshape(dy.shape)
