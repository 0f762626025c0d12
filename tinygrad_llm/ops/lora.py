"""A LoRA layer as one op: a frozen affine map plus a trainable low-rank update."""
from ..autograd import Function
from ..backend import array_module


class LoRALinear(Function):
    """y = x W^T + b + s (x A^T) B^T for x (..., in), W (out, in), A (r, in), B (out, r), b (out,).

    With u = x A^T (N, r) and g = dy B (N, r), the rows of x and dy folded into N:
        dx = dy W + s g A,   dA = s g^T x,   dB = s dy^T u,   dW = dy^T x,   db = ones^T dy.
    The update never forms the (out, in) matrix B A: every product goes through the rank r, so a
    step costs 2 r (in + out) N extra flops over the frozen layer's, and dW is skipped when W is
    frozen (the usual case). Keeps x (for dA or dW), u (for dB), W, A, B (for dx, dA) only where
    a gradient needs them.  Derivation: docs/backward.md#loralinear
    """

    @staticmethod
    def forward(ctx, x, weight, lora_A, lora_B, bias=None, scale=1.0):
        out_f, in_f = weight.shape
        r = lora_A.shape[0]
        if x.ndim == 0 or x.shape[-1] != in_f or lora_A.shape != (r, in_f) or lora_B.shape != (out_f, r):
            raise ValueError(f"lora_linear: input {x.shape}, weight {weight.shape}, A {lora_A.shape}, "
                             f"B {lora_B.shape} do not fit; expected x (..., in), W (out, in), A (r, in), "
                             "B (out, r)")
        if bias is not None and bias.shape != (out_f,):
            raise ValueError(f"lora_linear: bias of shape {bias.shape} does not fit a weight of shape "
                             f"{weight.shape}; expected ({out_f},)")
        x2 = x.reshape(-1, in_f)  # (N, in)
        u = x2 @ lora_A.T  # (N, r)
        y = x2 @ weight.T  # (N, out)
        y += (u * scale) @ lora_B.T  # s u B^T; scaling the (N, r) factor is the cheap place
        if bias is not None:
            y += bias
        need_x, need_w, need_a, need_b = ctx.needs_input_grad[:4]
        ctx.save_for_backward(x2 if (need_w or need_a) else None, u if need_b else None,
                              weight if need_x else None, lora_A if need_x else None,
                              lora_B if (need_x or need_a) else None)
        ctx.x_shape, ctx.scale = x.shape, scale
        return y.reshape(x.shape[:-1] + (out_f,))

    @staticmethod
    def backward(ctx, dy):
        x2, u, weight, lora_A, lora_B = ctx.saved
        need = ctx.needs_input_grad
        s = ctx.scale
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
        g = dy2 @ lora_B if (need[0] or need[2]) else None  # (N, r)
        dx = None
        if need[0]:
            dx = dy2 @ weight  # (N, in)
            dx += (g * s) @ lora_A
            dx = dx.reshape(ctx.x_shape)
        dw = dy2.T @ x2 if need[1] else None
        dA = (g.T * s) @ x2 if need[2] else None  # (r, in)
        dB = dy2.T @ (u * s) if need[3] else None  # (out, r); s on the (N, r) factor, not (out, N)
        if len(need) == 4:
            return dx, dw, dA, dB
        db = array_module(dy2).ones(dy2.shape[0], dtype=dy2.dtype) @ dy2 if need[4] else None
        return dx, dw, dA, dB, db
