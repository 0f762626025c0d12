"""The ops: one module per family, one class per op, forward and hand-derived backward side by side.

elementwise  add, sub, mul, div, neg, pow, exp, log, sqrt, abs, tanh, sigmoid, relu, maximum,
             minimum, clip, where, masked fill, cast
reduce       sum, mean, max, min, var, logsumexp
movement     reshape, transpose, expand, indexing, cat, stack, device copies
matmul       matrix products with NumPy's batch broadcasting
The fused neural-network ops (softmax, cross-entropy, norms, attention, ...) have a module each,
and so does RoPE, the rotary position embedding (rope).
"""
