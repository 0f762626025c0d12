"""Ops that move data without arithmetic: reshape, transpose, expand, indexing, cat, stack.

Their backward moves the gradient back the same way: reshape back, transpose by the inverse
permutation, sum over what was broadcast, scatter-add into what was indexed, slice what was joined.
squeeze, unsqueeze and flatten are reshapes; swapaxes is a transpose; split and chunk are slices.
"""
import numpy as np

from ..autograd import Function
from ..backend import array_module, device_of, to_device
from .broadcast import unbroadcast


def normalize_axis(axis, ndim, op_name="axis"):
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op_name}: axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def squeezed_shape(shape, axis):
    if axis is None:
        return tuple(n for n in shape if n != 1)
    axes = {normalize_axis(a, len(shape), "squeeze") for a in ((axis,) if isinstance(axis, int) else axis)}
    for a in axes:
        if shape[a] != 1:
            raise ValueError(f"squeeze: axis {a} of shape {shape} has size {shape[a]}, not 1")
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def unsqueezed_shape(shape, axis):
    axis = normalize_axis(axis, len(shape) + 1, "unsqueeze")
    return shape[:axis] + (1,) + shape[axis:]


def flattened_shape(shape, start, end):
    if not shape:
        return (1,)
    start, end = normalize_axis(start, len(shape), "flatten"), normalize_axis(end, len(shape), "flatten")
    return shape[:start] + (int(np.prod(shape[start:end + 1], dtype=np.int64)),) + shape[end + 1:]


class Reshape(Function):
    """y = x with a new shape (same elements, C order).   dx = dy reshaped to x's shape.

    Keeps only the input shape.  Derivation: docs/backward.md#reshape
    """

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} "
                             f"elements) into shape {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, dy):
        return dy.reshape(ctx.in_shape)


class Transpose(Function):
    """y = x with axes permuted (reversed when axes is None).   dx = dy permuted by the inverse.

    Keeps only the permutation.  Derivation: docs/backward.md#transpose
    """

    @staticmethod
    def forward(ctx, x, axes=None):
        if axes is not None and sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {tuple(axes)} are not a permutation of the "
                             f"{x.ndim} axes of shape {x.shape}")
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, dy):
        if ctx.axes is None:
            return dy.transpose()
        return dy.transpose(np.argsort([a % dy.ndim for a in ctx.axes]))


class Expand(Function):
    """y = x broadcast to shape (np.broadcast_to; -1 keeps a size).   dx = dy summed back.

    Keeps only the input shape.  Derivation: docs/backward.md#expand
    """

    @staticmethod
    def forward(ctx, x, shape):
        lead = len(shape) - x.ndim
        if lead < 0 or any(n == -1 for n in shape[:lead]):
            raise ValueError(f"expand: a tensor of shape {x.shape} cannot be broadcast to shape "
                             f"{tuple(shape)} (-1 only keeps one of the tensor's own axes)")
        shape = tuple(x.shape[i - lead] if n == -1 else n for i, n in enumerate(shape))
        ctx.in_shape = x.shape
        try:
            return array_module(x).broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"expand: a tensor of shape {x.shape} cannot be broadcast to "
                             f"shape {shape}") from None

    @staticmethod
    def backward(ctx, dy):
        return unbroadcast(dy, ctx.in_shape)


def _axes_consumed(item):
    if item is None or item is Ellipsis:
        return 0
    if hasattr(item, "dtype") and item.dtype == np.bool_:
        return item.ndim
    return 1


def normalize_index(index, shape):
    """The index (of arrays, not Tensors) with lists turned into arrays, every integer checked
    against shape.

    NumPy would raise for an out-of-range integer too, but CuPy wraps it silently, so the check
    is ours, with the axis and its size in the message.
    """
    items = index if isinstance(index, tuple) else (index,)
    items = tuple(np.asarray(i) if isinstance(i, list) else i for i in items)
    axis = 0
    for pos, item in enumerate(items):
        if item is Ellipsis:
            axis = len(shape) - sum(_axes_consumed(i) for i in items[pos + 1:])
            continue
        if item is None:
            continue
        if isinstance(item, (int, np.integer)) or (hasattr(item, "dtype") and item.dtype.kind in "iu"):
            if axis >= len(shape):
                raise IndexError(f"too many indices for a tensor of shape {shape}: {index!r}")
            n = shape[axis]
            if isinstance(item, (int, np.integer)):
                lo = hi = int(item)
            elif item.size:
                lo, hi = int(item.min()), int(item.max())
            else:
                lo, hi = 0, -1
            if lo < -n or hi >= n:
                raise IndexError(f"index {lo if lo < -n else hi} is out of range for axis {axis} "
                                 f"with size {n} (tensor shape {shape})")
        elif not isinstance(item, slice) and not (hasattr(item, "dtype") and item.dtype == np.bool_):
            raise TypeError(f"unsupported index {item!r} of type {type(item).__name__}")
        axis += _axes_consumed(item)
    if axis > len(shape):
        raise IndexError(f"too many indices for a tensor of shape {shape}: {index!r}")
    return items if isinstance(index, tuple) else items[0]


def _is_basic(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice)) for i in items)


class GetItem(Function):
    """y = x[index]: ints, slices, None, Ellipsis, integer and boolean arrays (NumPy's rules).

    dx = zeros like x, with dy scatter-ADDED at the indexed places: an element picked k times
    (repeated integer indices) receives the sum of its k gradients.
    Keeps the index and the input shape.  Derivation: docs/backward.md#getitem
    """

    @staticmethod
    def forward(ctx, x, index):
        xp = array_module(x)
        if xp is not np:  # index arrays must live where x lives
            index = tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in index) \
                if isinstance(index, tuple) else (xp.asarray(index) if isinstance(index, np.ndarray) else index)
        ctx.save_for_backward(index)  # may hold index arrays: saved state, not a parameter
        ctx.in_shape = x.shape
        return x[index]

    @staticmethod
    def backward(ctx, dy):
        (index,) = ctx.saved
        xp = array_module(dy)
        dx = xp.zeros(ctx.in_shape, dtype=dy.dtype)
        if _is_basic(index):
            dx[index] = dy  # basic indexing never picks an element twice
        elif xp is np:
            np.add.at(dx, index, dy)  # unbuffered: a repeated index adds every time
        else:
            import cupyx
            cupyx.scatter_add(dx, index, dy)
        return dx


class Cat(Function):
    """y = the inputs joined along axis.   dx_i = the slice of dy that input i filled.

    Keeps the split points.  Derivation: docs/backward.md#cat
    """

    @staticmethod
    def forward(ctx, *xs, axis=0):
        xp = array_module(xs[0])
        axis = normalize_axis(axis, xs[0].ndim, "cat")
        for x in xs[1:]:
            if x.ndim != xs[0].ndim or any(a != b for i, (a, b) in enumerate(zip(x.shape, xs[0].shape))
                                           if i != axis):
                shapes = ", ".join(str(t.shape) for t in xs)
                raise ValueError(f"cat: shapes {shapes} differ outside axis {axis}")
        ctx.axis, ctx.bounds = axis, np.cumsum([x.shape[axis] for x in xs])[:-1].tolist()  # ints
        return xp.concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, dy):
        return tuple(array_module(dy).split(dy, ctx.bounds, axis=ctx.axis))


class Stack(Function):
    """y = the inputs stacked along a new axis.   dx_i = dy taken at position i of that axis.

    Keeps the axis.  Derivation: docs/backward.md#stack
    """

    @staticmethod
    def forward(ctx, *xs, axis=0):
        if len({x.shape for x in xs}) > 1:
            raise ValueError(f"stack: all shapes must match, got {', '.join(str(x.shape) for x in xs)}")
        ctx.axis = normalize_axis(axis, xs[0].ndim + 1, "stack")
        return array_module(xs[0]).stack(xs, axis=ctx.axis)

    @staticmethod
    def backward(ctx, dy):
        lead = (slice(None),) * ctx.axis
        return tuple(dy[lead + (i,)] for i in range(dy.shape[ctx.axis]))  # views, no copies


class ToDevice(Function):
    """y = x copied to another device.   dx = dy copied back.

    Keeps the source device.  Derivation: docs/backward.md#todevice
    """

    @staticmethod
    def forward(ctx, x, device):
        ctx.src = device_of(x)
        return to_device(x, device)

    @staticmethod
    def backward(ctx, dy):
        return to_device(dy, ctx.src)


def split(t, split_size_or_sections, axis=0):
    """torch.split: pieces of size n (the last may be smaller), or of the listed sizes."""
    axis = normalize_axis(axis, t.ndim, "split")
    n = t.shape[axis]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0:
            raise ValueError(f"split: split size must be positive, got {split_size_or_sections}")
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, but axis {axis} has size {n}")
    out, start = [], 0
    for size in sizes:
        index = (slice(None),) * axis + (slice(start, start + size),)
        out.append(GetItem.apply(t, index=index))
        start += size
    return out


def chunk(t, chunks, axis=0):
    """torch.chunk: `chunks` pieces of ceil(n / chunks) elements (fewer if n is small)."""
    n = t.shape[normalize_axis(axis, t.ndim, "chunk")]
    return split(t, max(1, -(-n // chunks)), axis)
