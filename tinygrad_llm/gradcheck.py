"""Check hand-derived gradients against central finite differences, in float64.

For L = sum(fn(*inputs) * dy) with a random dy, backward gives dL/dx for every input x. The
numeric estimate of one component is

    dL/dx_i ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)        (error O(eps^2))

Small inputs are checked element by element (the full vector-Jacobian product); large ones along
a few random unit directions v, comparing (L(x + eps v) - L(x - eps v)) / (2 eps) with dL/dx . v.
"""
import numpy as np

from . import autograd
from .backend import array_module


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences; the message names where."""


def _loss(fn, inputs, dy):
    out = fn(*inputs)
    return float((out.data * dy).sum())


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, max_full=2048, directions=8, seed=0):
    """True when every input's gradient matches central differences, else GradcheckError.

    fn: Tensors -> Tensor. inputs: the Tensors to pass (those with requires_grad are checked;
    they must be float64, since float32 differences are too coarse to mean anything).
    Inputs with at most `max_full` elements are checked element by element; larger ones along
    `directions` random directions. The error names the input, the element (or direction) and
    both values.
    """
    checked = [i for i, t in enumerate(inputs) if getattr(t, "requires_grad", False)]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; gradients are checked in "
                            "float64 (pass .double() inputs)")
    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    xp = array_module(out.data)
    dy = xp.asarray(rng.standard_normal(out.shape))
    for i in checked:
        inputs[i].grad = None
    out.backward(dy)
    analytic = {i: (inputs[i].grad.data if inputs[i].grad is not None else xp.zeros(inputs[i].shape))
                for i in checked}

    with autograd.no_grad():
        for i in checked:
            x = inputs[i].data
            ana = np.asarray(analytic[i].get() if xp is not np else analytic[i], dtype=np.float64)
            if x.size <= max_full:
                flat = x.reshape(-1)  # a view: perturbing it perturbs the input
                for j in range(x.size):
                    orig = flat[j].item()
                    flat[j] = orig + eps
                    up = _loss(fn, inputs, dy)
                    flat[j] = orig - eps
                    down = _loss(fn, inputs, dy)
                    flat[j] = orig
                    num = (up - down) / (2 * eps)
                    got = float(ana.reshape(-1)[j])
                    if not abs(got - num) <= atol + rtol * abs(num):
                        where = np.unravel_index(j, x.shape) if x.ndim else ()
                        raise GradcheckError(
                            f"gradcheck: input {i} (shape {x.shape}) element {tuple(int(k) for k in where)}: "
                            f"analytic {got:.8g} vs numeric {num:.8g} (|diff| {abs(got - num):.3g} > "
                            f"atol {atol} + rtol {rtol} * |numeric|)")
            else:
                orig = x.copy()
                for d in range(directions):
                    v = rng.standard_normal(x.shape)
                    v /= np.linalg.norm(v)
                    v = xp.asarray(v)
                    x[...] = orig + eps * v
                    up = _loss(fn, inputs, dy)
                    x[...] = orig - eps * v
                    down = _loss(fn, inputs, dy)
                    x[...] = orig
                    num = (up - down) / (2 * eps)
                    got = float((xp.asarray(ana) * v).sum())
                    if not abs(got - num) <= atol + rtol * abs(num):
                        raise GradcheckError(
                            f"gradcheck: input {i} (shape {x.shape}) along random direction {d}: "
                            f"analytic {got:.8g} vs numeric {num:.8g} (|diff| {abs(got - num):.3g})")
    return True
