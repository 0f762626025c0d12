"""The backward pass: Function (one op = forward + backward), its Context, and the graph walk.

An op is a subclass of Function with two static methods on raw arrays (numpy or cupy):

    forward(ctx, *arrays, **params) -> array      # may save what backward needs on ctx
    backward(ctx, dy) -> dx or (dx0, dx1, ...)     # one gradient per array input, None for "no grad"

`Function.apply(*tensors, **params)` runs forward and, when a gradient is wanted, records the
Context as a node of the graph. The node does not hold its output or its inputs' data: only what
forward saved, and links to its parents' nodes (or to the leaf tensors that collect `.grad`). So an
intermediate activation is freed as soon as Python drops it, unless an op saved it.

`backward(root, dy)` walks the nodes in reverse topological order (iteratively: a chain of
100,000 ops needs no recursion), hands each node its summed gradient once, and frees each
gradient and each node's saved arrays as soon as they are used.
"""
import time

from . import backend

_grad_enabled = True
_observers = []  # callables(ctx, dy, dxs, seconds) called per node during backward (the tracer)
_scope_hook = None  # callable(ctx, out) called per op while a study.scope is open (graph clusters)


class no_grad:
    """Context manager and decorator that turns graph recording off (like torch.no_grad)."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_grad_enabled():
    return _grad_enabled


class GraphError(RuntimeError):
    """The graph cannot be walked: freed by an earlier backward, or a root without a gradient."""


class Context:
    """What one op keeps between its forward and its backward: a node of the graph.

    saved            arrays forward chose to keep (`save_for_backward`), released after backward
    needs_input_grad one bool per input: backward may skip work for inputs that need no gradient
    parents          per input: its node (a Context), the leaf Tensor collecting .grad, or None
    fn               the Function class; None once the node has been freed
    """

    __slots__ = ("fn", "parents", "saved", "needs_input_grad", "shape", "dtype", "__dict__")

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def saved_nbytes(self):
        """Bytes held by the saved arrays (for the backward tracer)."""
        return sum(getattr(a, "nbytes", 0) for a in (self.saved or ()))


class Function:
    """Base class of every op: subclasses define forward(ctx, ...) and backward(ctx, dy)."""

    @staticmethod
    def forward(ctx, *arrays, **params):
        raise NotImplementedError  # pragma: no cover - every op overrides it

    @staticmethod
    def backward(ctx, dy):
        raise NotImplementedError  # pragma: no cover - every op overrides it

    @classmethod
    def apply(cls, *tensors, **params):
        from .tensor import Tensor  # tensor.py imports this module; bind late

        if backend._cupy is not None:  # devices can only differ once CuPy is in play
            _check_same_device(cls, tensors)
        ctx = Context()
        ctx.saved = None
        needs = tuple(t.requires_grad for t in tensors)
        ctx.needs_input_grad = needs
        data = cls.forward(ctx, *[t.data for t in tensors], **params)
        out = Tensor.__new__(Tensor)
        out.data, out.grad, out._ctx = data, None, None
        out.requires_grad = _grad_enabled and any(needs)
        if out.requires_grad:
            ctx.fn = cls
            ctx.parents = tuple((t._ctx if t._ctx is not None else t) if t.requires_grad else None
                                for t in tensors)
            ctx.shape, ctx.dtype = data.shape, data.dtype
            out._ctx = ctx
        if _scope_hook is not None:
            _scope_hook(ctx, out)
        return out


def _check_same_device(cls, tensors):
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        shown = ", ".join(f"{t.device} {tuple(t.shape)}" for t in tensors)
        raise backend.DeviceError(f"{cls.__name__}: inputs are on different devices ({shown}); "
                                  "move them with .to(device) first")


def _topological_order(root):
    """Nodes reachable from root, every node after all nodes that consume its output."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if isinstance(node, Context):
            if node.fn is None:
                raise GraphError(
                    "backward through a graph whose saved arrays were already freed by an earlier "
                    "backward(); call the first backward with retain_graph=True to walk it twice")
            stack.extend((p, False) for p in node.parents if p is not None and id(p) not in visited)
    order.reverse()
    return order


def backward(root, dy, retain_graph=False):
    """Backpropagate dy from root (a node or a leaf Tensor) into the leaves' .grad."""
    from .tensor import Tensor

    grads = {id(root): dy}  # id(node) -> the gradient summed so far
    for node in _topological_order(root):
        g = grads.pop(id(node), None)
        if g is None:
            continue  # no path carried a gradient here (all its consumers returned None)
        if isinstance(node, Tensor):
            _accumulate_leaf(node, g)
            continue
        start = time.perf_counter() if _observers else 0.0
        dxs = node.fn.backward(node, g)
        if not isinstance(dxs, tuple):
            dxs = (dxs,)
        if len(dxs) != len(node.parents):
            raise GraphError(f"{node.fn.__name__}.backward returned {len(dxs)} gradients for "
                             f"{len(node.parents)} inputs")
        if _observers:
            seconds = time.perf_counter() - start
            for observe in _observers:
                observe(node, g, dxs, seconds)
        for parent, dx in zip(node.parents, dxs):
            if parent is None or dx is None:
                continue
            pshape = parent.shape if isinstance(parent, Context) else parent.data.shape
            if dx.shape != pshape:
                raise GraphError(f"{node.fn.__name__}.backward gave a gradient of shape "
                                 f"{tuple(dx.shape)} for an input of shape {tuple(pshape)}")
            key = id(parent)
            # out of place: an op may hand the same array to two inputs (add passes dy through)
            grads[key] = grads[key] + dx if key in grads else dx
        if not retain_graph:
            node.saved, node.parents, node.fn = None, (), None
            node.__dict__.clear()


def _accumulate_leaf(leaf, g):
    from .tensor import Tensor

    if g.dtype != leaf.data.dtype:
        g = g.astype(leaf.data.dtype)
    if leaf.grad is None:
        # a copy: g may be shared with another input's gradient (add passes dy through to both)
        leaf.grad = Tensor(g.copy())
    else:
        leaf.grad.data += g
