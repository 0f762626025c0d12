"""Movement ops: reshape, transpose, swapaxes, expand, squeeze/unsqueeze/flatten, indexing (basic
and fancy, with repeated indices), cat, stack, split, chunk: forward against NumPy, float64
gradcheck on hypothesis shapes, errors that name the shapes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, check, seeds, shapes, values

import tinygrad_llm as tl
from tinygrad_llm import Tensor


@SETTINGS
@given(shape=shapes(min_dims=0, max_dims=4), seed=seeds, data=st.data())
def test_reshape_transpose_flatten(device, shape, seed, data):
    x = values(shape, seed)
    new = data.draw(st.permutations(shape)) if shape else ()
    check(lambda t: t.reshape(*new) if new else t.reshape(()), lambda a: a.reshape(new), [x], device)
    check(lambda t: t.reshape(-1), lambda a: a.reshape(-1), [x], device)
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    check(lambda t: t.transpose(axes), lambda a: a.transpose(axes), [x], device)
    check(lambda t: t.T, lambda a: a.T, [x], device)
    if shape:
        a1, a2 = data.draw(st.integers(-len(shape), len(shape) - 1)), data.draw(st.integers(0, len(shape) - 1))
        check(lambda t: t.swapaxes(a1, a2), lambda a: np.swapaxes(a, a1, a2), [x], device)
        s, e = sorted(data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=2, max_size=2)))
        check(lambda t: t.flatten(s, e), lambda a: a.reshape(shape[:s] + (-1,) + shape[e + 1:]), [x], device)


@SETTINGS
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds, data=st.data())
def test_expand_squeeze_unsqueeze(device, shape, seed, data):
    x = values(shape, seed)
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    target = tuple(lead) + tuple(data.draw(st.integers(1, 3)) if n == 1 else n for n in shape)
    check(lambda t: t.expand(*target), lambda a: np.broadcast_to(a, target), [x], device)
    keep = tuple(lead) + tuple(-1 for _ in shape)  # -1 keeps the tensor's own size
    check(lambda t: t.expand(keep), lambda a: np.broadcast_to(a, tuple(lead) + shape), [x], device)
    ax = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check(lambda t: t.unsqueeze(ax), lambda a: np.expand_dims(a, ax), [x], device)
    check(lambda t: t.unsqueeze(ax).squeeze(ax), lambda a: a, [x], device)
    check(lambda t: t.squeeze(), lambda a: np.squeeze(a), [x], device)


@st.composite
def shape_and_index(draw):
    shape = draw(shapes(min_dims=1, max_dims=3))
    items, axis = [], 0
    ellipsis_used = False
    while axis < len(shape) and draw(st.booleans()):
        n = shape[axis]
        kind = draw(st.sampled_from(["int", "slice", "none", "ellipsis", "array"]))
        if kind == "int":
            items.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            start, stop = draw(st.integers(-n, n)), draw(st.integers(-n, n))
            items.append(slice(start, stop, draw(st.sampled_from([None, 1, 2, -1]))))
        elif kind == "none":
            items.append(None)
            continue
        elif kind == "ellipsis" and not ellipsis_used:
            ellipsis_used = True
            items.append(Ellipsis)
            break
        else:  # integer array, repeats allowed: its backward must add them up
            items.append(np.array(draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=5))))
        axis += 1
    index = tuple(items) if draw(st.booleans()) or len(items) != 1 else items[0]
    return shape, index


@SETTINGS
@given(si=shape_and_index(), seed=seeds)
def test_getitem(device, si, seed):
    shape, index = si
    x = values(shape, seed)
    check(lambda t: t[index], lambda a: a[index], [x], device)


def test_getitem_repeated_indices_accumulate(device):
    x = Tensor(np.arange(5.0), requires_grad=True, device=device)
    idx = np.array([0, 2, 2, 2, 4, 0])
    x[idx].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2, 0, 3, 0, 1])
    x.grad = None
    x[Tensor(np.array([1, 1]), device=device)].sum().backward()  # an integer Tensor as index
    np.testing.assert_array_equal(x.grad.numpy(), [0, 2, 0, 0, 0])
    x.grad = None
    x[[3, 3, -1]].sum().backward()  # a list
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 0, 2, 1])


def test_getitem_rows_and_columns_and_masks(device):
    x = values((4, 3), 0)
    rows, cols = np.array([3, 0, 3]), np.array([2, 2, 1])
    check(lambda t: t[rows, cols], lambda a: a[rows, cols], [x], device)
    check(lambda t: t[:, [0, 0, 2]], lambda a: a[:, [0, 0, 2]], [x], device)
    check(lambda t: t[rows[:, None], cols[None, :]], lambda a: a[rows[:, None], cols[None, :]], [x], device)
    mask = x > 0
    check(lambda t: t[mask], lambda a: a[mask], [x], device)
    check(lambda t: t[None, ..., 1], lambda a: a[None, ..., 1], [x], device)


def test_index_out_of_range_names_axis_and_size(device):
    x = Tensor.zeros(2, 3, device=device)
    with pytest.raises(IndexError, match=r"index 3 is out of range for axis 1 with size 3 \(tensor shape \(2, 3\)\)"):
        x[0, 3]
    with pytest.raises(IndexError, match=r"index -3 is out of range for axis 0 with size 2"):
        x[-3]
    with pytest.raises(IndexError, match="index 5 is out of range for axis 1"):
        x[:, np.array([0, 5])]
    with pytest.raises(IndexError, match="too many indices"):
        x[0, 0, 0]
    with pytest.raises(TypeError, match="unsupported index"):
        x["a"]


@SETTINGS
@given(shape=shapes(min_dims=1, max_dims=3), n=st.integers(1, 3), seed=seeds, data=st.data())
def test_cat_and_stack(device, shape, n, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)
    sizes = [data.draw(st.integers(0, 3)) for _ in range(n)]  # a zero-size piece is allowed
    pieces = [values(shape[:ax] + (k,) + shape[ax + 1:], seed + i) for i, k in enumerate(sizes)]
    check(lambda *ts: tl.cat(ts, axis=axis), lambda *a: np.concatenate(a, axis=axis), pieces, device)
    same = [values(shape, seed + i) for i in range(n)]
    sax = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check(lambda *ts: tl.stack(ts, axis=sax), lambda *a: np.stack(a, axis=sax), same, device)


@SETTINGS
@given(shape=shapes(min_dims=1, max_dims=3, max_side=7), seed=seeds, data=st.data())
def test_split_and_chunk(device, shape, seed, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    n = shape[axis]
    x = values(shape, seed)
    size = data.draw(st.integers(1, n + 1))
    bounds = list(range(size, n, size))
    check(lambda t: tl.cat([p * (i + 1) for i, p in enumerate(t.split(size, axis=axis))], axis=axis),
          lambda a: np.concatenate([p * (i + 1) for i, p in enumerate(np.split(a, bounds, axis=axis))], axis=axis),
          [x], device)
    chunks = data.draw(st.integers(1, 4))
    pieces = Tensor(x, device=device).chunk(chunks, axis=axis)
    assert len(pieces) <= chunks and sum(p.shape[axis] for p in pieces) == n
    sizes = [data.draw(st.integers(0, n))]
    sizes.append(n - sizes[0])
    parts = Tensor(x, device=device).split(sizes, axis=axis)
    assert [p.shape[axis] for p in parts] == sizes


def test_movement_errors(device):
    x = Tensor.zeros(2, 3, device=device)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\) \(6 elements\) into shape \(4, 2\)"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match=r"transpose: axes \(0, 0\) are not a permutation"):
        x.transpose(0, 0)
    with pytest.raises(ValueError, match=r"expand: a tensor of shape \(2, 3\) cannot be broadcast to shape \(2, 4\)"):
        x.expand(2, 4)
    with pytest.raises(ValueError, match="-1 only keeps"):
        x.expand(-1, 2, 3)
    with pytest.raises(ValueError, match=r"squeeze: axis 0 of shape \(2, 3\) has size 2"):
        x.squeeze(0)
    with pytest.raises(ValueError, match=r"cat: shapes \(2, 3\), \(2, 4\) differ outside axis 0"):
        tl.cat([x, Tensor.zeros(2, 4, device=device)])
    with pytest.raises(ValueError, match=r"stack: all shapes must match"):
        tl.stack([x, Tensor.zeros(3, 2, device=device)])
    with pytest.raises(ValueError, match=r"split: sizes \[1, 3\] add up to 4, but axis 0 has size 2"):
        x.split([1, 3])
    with pytest.raises(ValueError, match="cat: needs at least one tensor"):
        tl.cat([])
