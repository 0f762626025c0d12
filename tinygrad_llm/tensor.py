"""Tensor: an array (numpy or cupy) plus the node of the graph that produced it.

Operators and methods here are thin sugar: each one calls an op's `Function.apply` from ops/,
where its forward and its hand-derived backward sit side by side. The backward walk itself is in
autograd.py.
"""
import numpy as np

from . import autograd, backend
from .autograd import Context
from .ops.elementwise import (Abs, Add, Clip, Div, Exp, Log, MaskedFill, Maximum, Minimum, Mul, Neg, Pow,
                              PowScalar, ReLU, Sigmoid, Sqrt, Sub, Tanh, Where)
from .ops.matmul import MatMul
from .ops.movement import (Cat, Expand, GetItem, Reshape, Stack, Transpose, flattened_shape,
                           normalize_axis, normalize_index, squeezed_shape, unsqueezed_shape)
from .ops.movement import chunk as _chunk
from .ops.movement import split as _split
from .ops.reduce import LogSumExp, Max, Mean, Min, Sum, Var


class Tensor:
    """An n-dimensional array that records the ops applied to it, so gradients can flow back.

    Tensor(np.ndarray) keeps the array's dtype (float32 stays float32, float64 stays float64,
    integers stay integers); Python lists and scalars become float32; dtype= overrides both.
    """

    __slots__ = ("data", "requires_grad", "grad", "_ctx", "__weakref__")
    __array_priority__ = 1000  # numpy_array * tensor calls Tensor.__rmul__, not numpy's loop

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if backend.device_of(data) == "cuda":
            arr = data if dtype is None else data.astype(dtype, copy=False)
        elif isinstance(data, np.ndarray):
            arr = data if dtype is None else data.astype(dtype, copy=False)
        elif isinstance(data, np.generic):
            arr = np.asarray(data, dtype=dtype)
        elif data is None or isinstance(data, (str, bytes)):
            raise TypeError(f"Tensor: cannot make a tensor from {data!r}; pass numbers, a list or an array")
        else:  # Python lists, tuples and scalars: float32 unless told otherwise
            try:
                arr = np.asarray(data, dtype=backend.resolve_dtype(dtype))
            except (TypeError, ValueError) as e:
                raise TypeError(f"Tensor: cannot make a numeric tensor from {data!r:.80} ({e})") from None
        if arr.dtype.kind in "USOMm":  # strings, Python objects, dates: no op is defined on them
            raise TypeError(f"Tensor: dtype {arr.dtype} is not numeric; expected float, int or bool data")
        if device is not None:
            arr = backend.to_device(arr, backend.check_device(device))
        self.data = arr
        self.grad = None
        self._ctx = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # --- factories ----------------------------------------------------------------------------
    @staticmethod
    def _factory(fill, shape, dtype, device, requires_grad):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        device = backend.check_device(device or backend.default_device())
        xp = backend.xp_of(device)
        return Tensor(fill(xp, tuple(shape), backend.resolve_dtype(dtype), device),
                      requires_grad=requires_grad)

    @staticmethod
    def zeros(*shape, dtype=None, device=None, requires_grad=False):
        return Tensor._factory(lambda xp, s, dt, d: xp.zeros(s, dt), shape, dtype, device, requires_grad)

    @staticmethod
    def ones(*shape, dtype=None, device=None, requires_grad=False):
        return Tensor._factory(lambda xp, s, dt, d: xp.ones(s, dt), shape, dtype, device, requires_grad)

    @staticmethod
    def empty(*shape, dtype=None, device=None, requires_grad=False):
        return Tensor._factory(lambda xp, s, dt, d: xp.empty(s, dt), shape, dtype, device, requires_grad)

    @staticmethod
    def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return Tensor._factory(lambda xp, s, dt, d: xp.full(s, fill_value, dt), shape, dtype,
                               device, requires_grad)

    @staticmethod
    def randn(*shape, dtype=None, device=None, requires_grad=False):
        """Standard normal samples from the seeded generator (see tl.manual_seed)."""
        return Tensor._factory(lambda xp, s, dt, d: backend.rng(d).standard_normal(s, dtype=dt),
                               shape, dtype, device, requires_grad)

    @staticmethod
    def rand(*shape, dtype=None, device=None, requires_grad=False):
        """Uniform samples in [0, 1) from the seeded generator."""
        return Tensor._factory(lambda xp, s, dt, d: backend.rng(d).random(s, dtype=dt),
                               shape, dtype, device, requires_grad)

    @staticmethod
    def arange(start, stop=None, step=1, dtype=None, device=None):
        """Like np.arange; integer arguments give int64 unless dtype says otherwise."""
        if stop is None:
            start, stop = 0, start
        if dtype is None and all(isinstance(v, (int, np.integer)) for v in (start, stop, step)):
            dtype = np.int64
        device = backend.check_device(device or backend.default_device())
        return Tensor(backend.xp_of(device).arange(start, stop, step, dtype=backend.resolve_dtype(dtype)))

    @staticmethod
    def eye(n, dtype=None, device=None):
        device = backend.check_device(device or backend.default_device())
        return Tensor(backend.xp_of(device).eye(n, dtype=backend.resolve_dtype(dtype)))

    @staticmethod
    def zeros_like(t, dtype=None, requires_grad=False):
        return Tensor.zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)

    @staticmethod
    def ones_like(t, dtype=None, requires_grad=False):
        return Tensor.ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)

    @staticmethod
    def full_like(t, fill_value, dtype=None, requires_grad=False):
        return Tensor.full(t.shape, fill_value, dtype=dtype or t.dtype, device=t.device,
                           requires_grad=requires_grad)

    @staticmethod
    def randn_like(t, dtype=None, requires_grad=False):
        return Tensor.randn(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)

    @staticmethod
    def rand_like(t, dtype=None, requires_grad=False):
        return Tensor.rand(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)

    # --- properties and conversion -------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def grad_fn(self):
        """The op that produced this tensor (None for leaves and tensors outside the graph)."""
        ctx = self._ctx
        return None if ctx is None or ctx.fn is None else ctx.fn

    def numpy(self):
        """The data as an np.ndarray (shares memory on the CPU; copies from the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with exactly one element, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        """This tensor on `device` ("cpu" or "cuda"); gradients flow back across the copy."""
        backend.check_device(device)
        if device == self.device:
            return self
        from .ops.movement import ToDevice
        return ToDevice.apply(self, device=device)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def detach(self):
        """The same data, cut from the graph (no gradient flows through it)."""
        return Tensor(self.data)

    def astype(self, dtype):
        """A cast that gradients flow through (cast back to the input's dtype)."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        from .ops.elementwise import Cast
        return Cast.apply(self, dtype=dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def requires_grad_(self, requires_grad=True):
        if requires_grad and not backend.is_float(self.dtype):
            raise TypeError(f"requires_grad needs a floating-point tensor; this one is {self.dtype} "
                            f"with shape {self.shape} (indices and masks carry no gradient)")
        if not self.is_leaf:
            raise RuntimeError("requires_grad_ can only be set on leaf tensors (not on op outputs)")
        self.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self):
        self.grad = None

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __hash__(self):
        return id(self)

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", precision=4, threshold=64,
                               prefix="Tensor(")
        extra = f", dtype={self.dtype}, device='{self.device}'"
        if self.grad_fn is not None:
            extra += f", grad_fn={self.grad_fn.__name__}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"Tensor({body}{extra})"

    # --- the backward pass ----------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) . grad into every leaf's .grad that requires it.

        grad defaults to 1 for a single-element tensor; other tensors need it given explicitly.
        The graph's saved arrays are freed as it is walked, unless retain_graph=True.
        """
        if not self.requires_grad:
            raise autograd.GraphError("backward() on a tensor that does not require grad "
                                      "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise autograd.GraphError(
                    f"backward() on a tensor of shape {self.shape} needs a gradient argument of that "
                    "shape (only single-element tensors default to a gradient of 1)")
            g = backend.array_module(self.data).ones_like(self.data)
        else:
            g = grad.data if isinstance(grad, Tensor) else grad
            g = backend.array_module(self.data).asarray(g, dtype=self.dtype)
            if g.shape != self.shape:
                raise autograd.GraphError(f"backward(): gradient of shape {g.shape} does not match "
                                          f"the tensor's shape {self.shape}")
        root = self._ctx if self._ctx is not None else self
        autograd.backward(root, g, retain_graph=retain_graph)

    # --- helpers for the operators --------------------------------------------------------------
    def _const(self, value):
        """A Python scalar or array as a constant tensor of this tensor's dtype and device."""
        if isinstance(value, Tensor):
            return value
        xp = backend.array_module(self.data)
        dtype = self.dtype if backend.is_float(self.dtype) else None
        if dtype is None and isinstance(value, float):
            dtype = backend.default_dtype
        return Tensor(xp.asarray(value, dtype=dtype))

    # arithmetic (broadcasting like NumPy; see ops/elementwise.py)
    def __add__(self, other): return Add.apply(self, self._const(other))
    def __radd__(self, other): return Add.apply(self._const(other), self)
    def __sub__(self, other): return Sub.apply(self, self._const(other))
    def __rsub__(self, other): return Sub.apply(self._const(other), self)
    def __mul__(self, other): return Mul.apply(self, self._const(other))
    def __rmul__(self, other): return Mul.apply(self._const(other), self)
    def __truediv__(self, other): return Div.apply(self, self._const(other))
    def __rtruediv__(self, other): return Div.apply(self._const(other), self)
    def __neg__(self): return Neg.apply(self)
    def __pos__(self): return self
    def __matmul__(self, other): return MatMul.apply(self, self._const(other))
    def __rmatmul__(self, other): return MatMul.apply(self._const(other), self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return Pow.apply(self, exponent)
        return PowScalar.apply(self, exponent=exponent)

    def __rpow__(self, base):
        return Pow.apply(self._const(base), self)

    # comparisons: boolean tensors, outside the graph
    def _compare(self, other, op):
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, o))

    def __lt__(self, other): return self._compare(other, lambda a, b: a < b)
    def __le__(self, other): return self._compare(other, lambda a, b: a <= b)
    def __gt__(self, other): return self._compare(other, lambda a, b: a > b)
    def __ge__(self, other): return self._compare(other, lambda a, b: a >= b)
    def __eq__(self, other): return self._compare(other, lambda a, b: a == b)
    def __ne__(self, other): return self._compare(other, lambda a, b: a != b)

    # elementwise functions
    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def sqrt(self): return Sqrt.apply(self)
    def abs(self): return Abs.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sigmoid(self): return Sigmoid.apply(self)
    def relu(self): return ReLU.apply(self)
    def pow(self, exponent): return self ** exponent
    def maximum(self, other): return Maximum.apply(self, self._const(other))
    def minimum(self, other): return Minimum.apply(self, self._const(other))

    def clip(self, min=None, max=None):  # noqa: A002 - NumPy's names
        return Clip.apply(self, lo=min, hi=max)

    clamp = clip

    def masked_fill(self, mask, value):
        """Where mask is true, value; elsewhere self. The mask broadcasts to self's shape."""
        mask = mask.data if isinstance(mask, Tensor) else mask
        return MaskedFill.apply(self, mask=mask, value=value)

    # reductions (axis=None, an int or a tuple of ints; NumPy's keepdims)
    def sum(self, axis=None, keepdims=False): return Sum.apply(self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return Mean.apply(self, axis=axis, keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return Max.apply(self, axis=axis, keepdims=keepdims)
    def min(self, axis=None, keepdims=False): return Min.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, correction=0):
        """Variance with NumPy's default (correction=0, i.e. ddof=0)."""
        return Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def logsumexp(self, axis=None, keepdims=False):
        return LogSumExp.apply(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, keepdims=False):
        return Tensor(self.data.argmax(axis=axis, keepdims=keepdims))

    def argmin(self, axis=None, keepdims=False):
        return Tensor(self.data.argmin(axis=axis, keepdims=keepdims))

    # movement (see ops/movement.py)
    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=shape)

    view = reshape

    def transpose(self, *axes):
        """Permute axes like np.transpose; transpose(0, 1) on a 2-D tensor swaps them."""
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return Transpose.apply(self, axes=axes or None)

    permute = transpose

    @property
    def T(self):
        return Transpose.apply(self, axes=None)

    def swapaxes(self, axis1, axis2):
        axes = list(range(self.ndim))
        a1, a2 = normalize_axis(axis1, self.ndim), normalize_axis(axis2, self.ndim)
        axes[a1], axes[a2] = axes[a2], axes[a1]
        return Transpose.apply(self, axes=tuple(axes))

    def expand(self, *shape):
        """Broadcast to `shape` (np.broadcast_to); -1 keeps a dimension as it is."""
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Expand.apply(self, shape=shape)

    broadcast_to = expand

    def squeeze(self, axis=None):
        """Drop size-1 axes (all of them, or those named); a reshape, so its backward is one too."""
        return Reshape.apply(self, shape=squeezed_shape(self.shape, axis))

    def unsqueeze(self, axis):
        return Reshape.apply(self, shape=unsqueezed_shape(self.shape, axis))

    def flatten(self, start_axis=0, end_axis=-1):
        return Reshape.apply(self, shape=flattened_shape(self.shape, start_axis, end_axis))

    def __getitem__(self, index):
        if isinstance(index, tuple):  # the ops index with arrays: a Tensor in the index gives its own
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, Tensor):
            index = index.data
        return GetItem.apply(self, index=normalize_index(index, self.shape))

    def split(self, split_size_or_sections, axis=0):
        """Pieces of size split_size (the last may be smaller), or of the sizes listed (torch.split)."""
        return _split(self, split_size_or_sections, axis)

    def chunk(self, chunks, axis=0):
        """`chunks` pieces of near-equal size along axis (torch.chunk)."""
        return _chunk(self, chunks, axis)


autograd.register_tensor_class(Tensor)  # Function.apply builds its outputs with it


__all__ = ["Tensor", "Context", "cat", "stack", "where"]


def cat(tensors, axis=0):
    """Join tensors along an existing axis (np.concatenate)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: needs at least one tensor")
    return Cat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join same-shaped tensors along a new axis (np.stack)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    return Stack.apply(*tensors, axis=axis)


def where(cond, a, b):
    """a where cond is true, else b; all three broadcast together. cond carries no gradient."""
    cond = cond.data if isinstance(cond, Tensor) else cond
    ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else Tensor(a)
    xp = backend.array_module(ref.data)
    return Where.apply(ref._const(a), ref._const(b), cond=xp.asarray(cond, dtype=bool))
