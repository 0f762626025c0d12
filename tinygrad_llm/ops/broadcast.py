"""The adjoint of broadcasting: sum the gradient back to the input's shape.

If y = broadcast(x) copies x along new leading axes and along axes where x has size 1, then each
x element feeds several y elements, so dL/dx is the sum of dL/dy over those copies:

    unbroadcast(dy, shape) = dy summed over the leading axes broadcasting added,
                             and over (keepdims) every axis where `shape` has size 1.

Every binary op's backward calls this once per input.
"""


def unbroadcast(dy, shape):
    """Sum dy down to `shape`, the shape of the input that was broadcast to dy.shape."""
    if dy.shape == shape:
        return dy
    lead = dy.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and dy.shape[lead + i] != 1)
    out = dy.sum(axis=axes, keepdims=True) if axes else dy
    return out.reshape(shape)


def broadcast_shapes(op_name, *shapes):
    """NumPy's broadcast shape, or an error naming the op and the shapes that do not fit."""
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(-ndim, 0):
        dims = {s[i] for s in shapes if len(s) >= -i and s[i] != 1}
        if len(dims) > 1:
            shown = " and ".join(str(tuple(s)) for s in shapes)
            raise ValueError(f"{op_name}: shapes {shown} cannot be broadcast together "
                             f"(axis {i} has sizes {sorted(dims)})")
        out.append(dims.pop() if dims else 1)
    return tuple(out)
