"""Python overhead of the engine per op: Function.apply and the backward walk on tiny tensors.

On 1-element tensors the arithmetic is free, so the time is the engine's bookkeeping. Each case
runs against PyTorch (CPU, one thread) in the same process, interleaved, and the table gives
medians and the ratio ours / PyTorch (below 1: less overhead than PyTorch).

    python benchmarks/engine_overhead.py [--repeats 15]
"""
import argparse
import statistics
import time

import numpy as np

from tinygrad_llm import Tensor
from tinygrad_llm import backend as _backend

_backend.keep_freed_memory()  # as the trainer does: freed temporaries stay mapped


def timed(fn, n):
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n * 1e6  # microseconds per iteration


def ours(shape):
    a = Tensor(np.ones(shape, np.float32), requires_grad=True)
    b = Tensor(np.ones(shape, np.float32), requires_grad=True)
    g = np.ones(shape, np.float32)

    def add_forward(n):
        for _ in range(n):
            a + b

    def add_forward_backward(n):
        for _ in range(n):
            (a + b).backward(g)

    def chain_of_10(n):  # ten ops and one backward: a feel for a GPT step's per-op cost
        for _ in range(n):
            y = a * b
            for _ in range(4):
                y = (y + a).tanh()
            y.sum().backward()
    return {"add forward": add_forward, "add forward+backward": add_forward_backward,
            "10-op chain forward+backward": chain_of_10}


def reference(shape):
    import torch
    torch.set_num_threads(1)
    a = torch.ones(shape, requires_grad=True)
    b = torch.ones(shape, requires_grad=True)
    g = torch.ones(shape)

    def add_forward(n):
        for _ in range(n):
            a + b

    def add_forward_backward(n):
        for _ in range(n):
            (a + b).backward(g)

    def chain_of_10(n):
        for _ in range(n):
            y = a * b
            for _ in range(4):
                y = (y + a).tanh()
            y.sum().backward()
    return {"add forward": add_forward, "add forward+backward": add_forward_backward,
            "10-op chain forward+backward": chain_of_10}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--n", type=int, default=2000, help="iterations per timing")
    args = parser.parse_args()
    a_cases = ours((1,))
    try:
        b_cases = reference((1,))
    except ImportError:
        b_cases = None
    print(f"{'case':32s} {'ours us':>9s} {'torch us':>9s} {'ratio':>6s}")
    for name in a_cases:
        mine, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            mine.append(timed(a_cases[name], args.n))
            if b_cases:
                theirs.append(timed(b_cases[name], args.n))
        m = statistics.median(mine)
        if b_cases:
            t = statistics.median(theirs)
            print(f"{name:32s} {m:9.2f} {t:9.2f} {m / t:6.2f}")
        else:
            print(f"{name:32s} {m:9.2f} {'-':>9s} {'-':>6s}")


if __name__ == "__main__":
    main()
