"""Check hand-derived gradients against central finite differences, in float64.

For y = fn(*inputs), the numeric estimate of one column of the Jacobian is

    dy/dx_j ~= (fn(x + eps e_j) - fn(x - eps e_j)) / (2 eps)        (error O(eps^2))

Small inputs are checked on the full Jacobian: every column by differences, every row by one
backward pass with a one-hot output gradient (when the output is small too: one backward per
output element), and one more backward with a random dense gradient dy, compared element by
element with J^T dy (backward must be linear in dy). Large inputs are checked along a few random unit directions v:
(L(x + eps v) - L(x - eps v)) / (2 eps) against dL/dx . v, for L = sum(fn(x) * dy), dy random.
"""
import numpy as np

from . import autograd
from .backend import array_module, to_numpy


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences; the message names where."""


def _output(fn, inputs):
    return np.array(to_numpy(fn(*inputs).data), dtype=np.float64)


def _analytic(fn, inputs, checked, dy, xp):
    """dL/dx for each checked input, L = sum(fn(inputs) * dy), as float64 NumPy arrays."""
    for i in checked:
        inputs[i].grad = None
    out = fn(*inputs)
    if out.requires_grad:
        out.backward(xp.asarray(dy, dtype=out.dtype))
    grads = []
    for i in checked:
        g = inputs[i].grad
        grads.append(np.zeros(inputs[i].shape) if g is None else np.array(to_numpy(g.data), dtype=np.float64))
        inputs[i].grad = None
    return grads


def _fail(i, shape, where, got, num, atol, rtol):
    raise GradcheckError(
        f"gradcheck: input {i} (shape {tuple(shape)}) {where}: analytic {got:.8g} vs numeric "
        f"{num:.8g} (|diff| {abs(got - num):.3g} > atol {atol} + rtol {rtol} * |numeric|)")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, max_full=2048, directions=8, seed=0,
              max_rows=256):
    """True when every input's gradient matches central differences, else GradcheckError.

    fn: Tensors -> Tensor. inputs: the Tensors to pass (those with requires_grad are checked;
    they must be float64, since float32 differences are too coarse to mean anything).
    Inputs with at most `max_full` elements are checked element by element: against the full
    Jacobian when the output has at most `max_rows` elements, always against J^T dy for a random
    dy. Larger inputs are checked along `directions` random directions. The error names the
    input, the element (input and output element, or the direction) and both values; of all
    mismatches it reports the worst.
    """
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if getattr(t, "requires_grad", False)]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; gradients are checked in "
                            "float64 (pass .double() inputs)")
    rng = np.random.default_rng(seed)
    y0 = fn(*inputs)
    xp = array_module(y0.data)
    out_shape, n_out = y0.shape, y0.size
    del y0
    dy = rng.standard_normal(out_shape)
    analytic = _analytic(fn, inputs, checked, dy, xp)

    rows = None
    if n_out <= max_rows and any(inputs[i].size <= max_full for i in checked):
        # rows of the Jacobian, one backward each: J[o, :] = dL/dx for dy = e_o
        rows = []
        for o in range(n_out):
            e = np.zeros(n_out)
            e[o] = 1.0
            rows.append(_analytic(fn, inputs, checked, e.reshape(out_shape), xp))

    with autograd.no_grad():
        for slot, i in enumerate(checked):
            x = inputs[i].data
            if x.size <= max_full:
                jac_num = np.empty((n_out, x.size))
                for j in range(x.size):
                    at = np.unravel_index(j, x.shape)  # no flat view: x may be non-contiguous
                    orig = x[at].item()
                    x[at] = orig + eps
                    up = _output(fn, inputs)
                    x[at] = orig - eps
                    down = _output(fn, inputs)
                    x[at] = orig
                    jac_num[:, j] = ((up - down) / (2 * eps)).reshape(-1)
                if rows is not None:
                    jac_ana = np.stack([r[slot].reshape(-1) for r in rows]) if n_out else jac_num
                    _compare(i, x.shape, jac_ana, jac_num, atol, rtol, out_shape)
                # backward with a dense dy must be J^T dy (it is linear in dy)
                vjp_num = dy.reshape(-1) @ jac_num
                _compare_vjp(i, x.shape, analytic[slot].reshape(-1), vjp_num, atol, rtol)
            else:
                orig = x.copy()
                worst = None
                for d in range(directions):
                    v = rng.standard_normal(x.shape)
                    v /= np.linalg.norm(v)
                    v_x = xp.asarray(v, dtype=x.dtype)
                    x[...] = orig + eps * v_x
                    up = float((_output(fn, inputs) * dy).sum())
                    x[...] = orig - eps * v_x
                    down = float((_output(fn, inputs) * dy).sum())
                    x[...] = orig
                    num = (up - down) / (2 * eps)
                    got = float((analytic[slot] * v).sum())
                    excess = abs(got - num) - (atol + rtol * abs(num))
                    if excess > 0 and (worst is None or excess > worst[0]):
                        worst = (excess, d, got, num)
                if worst is not None:
                    _fail(i, x.shape, f"along random direction {worst[1]}", worst[2], worst[3], atol, rtol)
    return True


def _compare(i, shape, ana, num, atol, rtol, out_shape):
    excess = np.abs(ana - num) - (atol + rtol * np.abs(num))
    bad = ~(excess <= 0)  # nan counts as a mismatch
    if bad.any():
        o, j = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf))),
                                excess.shape)
        at_in = tuple(int(k) for k in np.unravel_index(j, shape)) if len(shape) else ()
        at_out = tuple(int(k) for k in np.unravel_index(o, out_shape)) if len(out_shape) else ()
        _fail(i, shape, f"element {at_in}, output element {at_out}", float(ana[o, j]),
              float(num[o, j]), atol, rtol)


def _compare_vjp(i, shape, ana, num, atol, rtol):
    excess = np.abs(ana - num) - (atol + rtol * np.abs(num))
    bad = ~(excess <= 0)
    if bad.any():
        j = int(np.argmax(np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf)))
        at_in = tuple(int(k) for k in np.unravel_index(j, shape)) if len(shape) else ()
        _fail(i, shape, f"element {at_in} (backward with a random dense dy)", float(ana[j]),
              float(num[j]), atol, rtol)
