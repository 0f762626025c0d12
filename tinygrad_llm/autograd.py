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
import functools
import threading
import time

from . import backend


class _PerThread(threading.local):
    """What the engine keeps per thread, as PyTorch does: a no_grad evaluation on one thread must
    not stop another thread's training step from recording, nor a tracer on one thread record
    another's backward. A new thread starts from these defaults; a worker that runs part of a
    caller's step is handed the caller's grad mode explicitly (parallel.py)."""

    def __init__(self):  # runs once in each thread that reads it (instance attributes read fastest)
        self.grad_enabled = True  # whether Function.apply records the graph
        self.observers = ()  # callables(ctx, dy, dxs, seconds) called per node by this thread's backward


_thread = _PerThread()
Tensor = None  # the class Function.apply builds its outputs with: register_tensor_class sets it


def register_tensor_class(cls):
    """Called once by tensor.py, which imports this module first: the walk and Function.apply
    need the Tensor class, and importing tensor.py from here would be a cycle."""
    global Tensor
    Tensor = cls
# Hooks for the study tools, set only through the functions below (read on the hot paths).
# The scope hook is one for all threads: study/scope.py keeps each thread's open scopes itself.
_scope_hook = None  # callable(ctx, out) called per op while a study.scope is open (graph clusters)


def add_backward_observer(observe):
    """Call observe(ctx, dy, dxs, seconds) for every node the calling thread's backward passes
    visit, before it is freed. With no observer the walk pays one truthiness test per node.
    """
    _thread.observers = _thread.observers + (observe,)  # a new tuple: a walk in progress keeps its own


def remove_backward_observer(observe):
    observers = list(_thread.observers)
    observers.remove(observe)
    _thread.observers = tuple(observers)


def set_scope_hook(hook):
    """Call hook(ctx, out) from every Function.apply (None: stop); returns the previous hook."""
    global _scope_hook
    previous, _scope_hook = _scope_hook, hook
    return previous


def graph_is_observed():
    """True while this thread has a backward observer, or any thread a study.scope open: the
    graph is being studied."""
    return bool(_thread.observers) or _scope_hook is not None


class set_grad_enabled:
    """Turn graph recording on (True) or off (False) for the calling thread, like
    torch.set_grad_enabled: at once when called, and as a context manager until the block ends,
    when the thread's previous mode comes back."""

    def __init__(self, mode):
        self._prev = _thread.grad_enabled
        _thread.grad_enabled = bool(mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _thread.grad_enabled = self._prev


class _GradModeBlock:
    """A context manager and decorator that sets this thread's grad mode to `mode` inside."""
    mode = True

    def __init__(self):
        self._prev = []  # a stack, so one instance can be entered again while already inside

    def __enter__(self):
        self._prev.append(_thread.grad_enabled)
        _thread.grad_enabled = self.mode

    def __exit__(self, *exc):
        _thread.grad_enabled = self._prev.pop()

    def __call__(self, fn):
        block = type(self)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with block():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradModeBlock):
    """Context manager and decorator that turns graph recording off in the calling thread (like
    torch.no_grad); other threads keep recording."""
    mode = False


class enable_grad(_GradModeBlock):
    """Context manager and decorator that turns graph recording back on inside a no_grad block,
    in the calling thread (like torch.enable_grad)."""
    mode = True


def is_grad_enabled():
    """True when the calling thread records the graph (not inside no_grad)."""
    return _thread.grad_enabled


class GraphError(RuntimeError):
    """The graph cannot be walked: freed by an earlier backward, or a root without a gradient."""


class Context:
    """What one op keeps between its forward and its backward: a node of the graph.

    saved            what forward chose to keep (`save_for_backward`), released after backward:
                     arrays, lists or tuples of arrays (attention's per-block tables, a fancy
                     index), or None for a slot the backward will not read
    needs_input_grad one bool per input: backward may skip work for inputs that need no gradient
    parents          per input: its node (a Context), the leaf Tensor collecting .grad, or None
    fn               the Function class; None once the node has been freed

    Every array an op keeps goes through `save_for_backward`; plain parameters (an axis, a scale,
    a shape) may stay attributes of the context. So `saved` is all the memory a node holds, and
    `saved_nbytes()` counts it for the backward tracer.
    """

    __slots__ = ("fn", "parents", "saved", "needs_input_grad", "shape", "dtype", "__dict__")

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def saved_nbytes(self):
        """Bytes held by the saved arrays, lists of arrays item by item, an array kept twice once."""
        seen, total, todo = set(), 0, list(self.saved or ())
        while todo:
            a = todo.pop()
            if isinstance(a, (tuple, list)):
                todo.extend(a)
                continue
            nbytes = getattr(a, "nbytes", None)
            if isinstance(nbytes, int) and id(a) not in seen:
                seen.add(id(a))
                total += nbytes
        return total


class Function:
    """Base class of every op. A subclass defines two static methods on raw arrays:

        forward(ctx, *arrays, **params) -> array
        backward(ctx, dy) -> one gradient per array input (None where no gradient is needed)

    and is used through `apply(*tensors, **params)`.
    """

    @classmethod
    def apply(cls, *tensors, **params):
        # the hot path of every op (a GPT step runs a few hundred): keep it to plain attribute work
        if backend._cupy is not None:  # devices can only differ once CuPy is in play
            _check_same_device(cls, tensors)
        ctx = Context()
        ctx.saved = None
        if _thread.grad_enabled:
            needs = tuple([t.requires_grad for t in tensors])
            record = True in needs
        else:  # forward must not keep arrays for a backward that will never run
            needs, record = (False,) * len(tensors), False
        ctx.needs_input_grad = needs
        data = cls.forward(ctx, *[t.data for t in tensors], **params)
        out = Tensor.__new__(Tensor)
        out.data, out.grad, out.requires_grad = data, None, record
        if record:
            ctx.fn = cls
            ctx.parents = tuple([(t._ctx or t) if t.requires_grad else None for t in tensors])
            ctx.shape, ctx.dtype = data.shape, data.dtype
            out._ctx = ctx
        else:
            out._ctx = None
        if _scope_hook is not None:  # a study.scope is open: tag the node with the block's name
            _scope_hook(ctx, out)
        return out


def _check_same_device(cls, tensors):
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        shown = ", ".join(f"{t.device} {tuple(t.shape)}" for t in tensors)
        raise backend.DeviceError(f"{cls.__name__}: inputs are on different devices ({shown}); "
                                  "move them with .to(device) first")


def _topological_order(root):
    """Nodes reachable from root, every node after all nodes that consume its output.

    An iterative depth-first search: a node is pushed once to open it and once more to emit it
    after its inputs (post-order); the reversed post-order is a topological order.
    """
    order, visited, stack = [], set(), [(root, False)]
    push, pop, emit, mark = stack.append, stack.pop, order.append, visited.add
    while stack:
        node, expanded = pop()
        if expanded:
            emit(node)
            continue
        key = id(node)
        if key in visited:
            continue
        mark(key)
        push((node, True))
        if type(node) is Context:
            if node.fn is None:
                raise GraphError(
                    "backward through a graph whose saved arrays were already freed by an earlier "
                    "backward(); call the first backward with retain_graph=True to walk it twice")
            for p in node.parents:
                if p is not None and id(p) not in visited:
                    push((p, False))
    order.reverse()
    return order


def backward(root, dy, retain_graph=False, leaf_sink=None):
    """Backpropagate dy from root (a node or a leaf Tensor) into the leaves' .grad.

    leaf_sink: a list that collects (leaf, gradient, owned) instead of touching .grad, for a
    walk that runs beside others on the same leaves (parallel.py): the caller hands them to
    accumulate_leaf later, in an order of its choosing, so the sums come out the same every run.
    """
    if backend._memory_choice is None:  # once per process: freed temporaries stay mapped (backend)
        backend.tune_memory_on_first_backward()
    grads = {id(root): dy}  # id(node) -> the gradient summed so far
    owned = set()  # ids whose gradient buffer the walk allocated itself: safe to add into in place
    observers = _thread.observers
    for node in _topological_order(root):
        key = id(node)
        g = grads.pop(key, None)
        if g is None:
            continue  # no path carried a gradient here (all its consumers returned None)
        if type(node) is not Context:
            if leaf_sink is None:
                accumulate_leaf(node, g, key in owned)
            else:
                leaf_sink.append((node, g, key in owned))
            owned.discard(key)
            continue
        owned.discard(key)
        start = time.perf_counter() if observers else 0.0
        dxs = node.fn.backward(node, g)
        if type(dxs) is not tuple:
            dxs = (dxs,)
        if len(dxs) != len(node.parents):
            raise GraphError(f"{node.fn.__name__}.backward returned {len(dxs)} gradients for "
                             f"{len(node.parents)} inputs")
        if observers:
            seconds = time.perf_counter() - start
            for observe in observers:
                observe(node, g, dxs, seconds)
        del g
        for parent, dx in zip(node.parents, dxs):
            if parent is None or dx is None:
                continue
            if type(parent) is Context:
                pshape, pdtype = parent.shape, parent.dtype
            else:
                pshape, pdtype = parent.data.shape, parent.data.dtype
            if dx.shape != pshape:
                raise GraphError(f"{node.fn.__name__}.backward gave a gradient of shape "
                                 f"{tuple(dx.shape)} for an input of shape {tuple(pshape)}")
            if dx.dtype != pdtype:  # gradients live in their input's dtype
                dx = dx.astype(pdtype)
            pkey = id(parent)
            if pkey not in grads:
                grads[pkey] = dx  # maybe shared (add hands dy to both inputs): never written into
            elif pkey in owned:
                grads[pkey] += dx
            else:
                grads[pkey] = grads[pkey] + dx
                owned.add(pkey)
        if not retain_graph:
            node.saved, node.parents, node.fn = None, (), None
            node.__dict__.clear()


def accumulate_leaf(leaf, g, owned):
    """Add g into leaf.grad (owned: g is the walk's own buffer, free to keep without a copy)."""
    if g.dtype != leaf.data.dtype:
        g, owned = g.astype(leaf.data.dtype), True
    if leaf.grad is None:
        # copy unless the walk made g itself: g may be shared with another input's gradient
        # (add passes dy through to both), or be a read-only broadcast view (sum's backward)
        leaf.grad = Tensor(g if owned else g.copy())
    else:
        leaf.grad.data += g
