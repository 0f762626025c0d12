"""Adam (L2 weight decay folded into the gradient) and AdamW (decoupled weight decay)."""
import math

from .. import cuda
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba), bias-corrected, as PyTorch computes it (amsgrad off), at step t:

        g = g + weight_decay * p                      (Adam: L2 penalty in the gradient)
        p = p * (1 - lr * weight_decay)               (AdamW: decoupled, instead of the line above)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Each line is one or two in-place ufuncs on a chunk of the flat bucket; nothing is allocated
    per step (the scratch rows are reused).
    """
    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        super()._check_group(group)
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {group['betas']}")
        if group["eps"] < 0 or group["weight_decay"] < 0:
            raise ValueError(f"{type(self).__name__}: eps and weight_decay must be >= 0, got "
                             f"{group['eps']} and {group['weight_decay']}")

    def _update(self, group, bucket):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t = bucket.step
        step_size = lr / (1 - b1 ** t)
        bc2_sqrt = math.sqrt(1 - b2 ** t)
        decay = 1 - lr * wd if (wd and self.decoupled) else None
        l2 = wd if (wd and not self.decoupled) else None
        xp = bucket.xp
        m, v = bucket.state["exp_avg"], bucket.state["exp_avg_sq"]
        if cuda.serves(bucket.data, bucket.grad, m, v):  # the whole bucket in one fused launch
            cuda.adamw_step([bucket.data], [bucket.grad], [m], [v], lr, b1, b2, eps, wd, t,
                            decoupled=self.decoupled)
            return

        def chunk(p, g, m, v, s):
            if decay is not None:
                p *= decay
            if l2 is not None:
                xp.multiply(p, l2, out=s[1])
                s[1] += g
                g = s[1]
            xp.subtract(g, m, out=s[0])  # m += (1 - b1) (g - m): PyTorch's lerp
            s[0] *= 1 - b1
            m += s[0]
            v *= b2
            xp.multiply(g, g, out=s[0])
            s[0] *= 1 - b2
            v += s[0]
            xp.sqrt(v, out=s[0])
            s[0] /= bc2_sqrt
            s[0] += eps
            xp.divide(m, s[0], out=s[0])
            s[0] *= step_size
            p -= s[0]

        bucket.map_chunks(chunk, (bucket.data, bucket.grad, bucket.state["exp_avg"],
                                  bucket.state["exp_avg_sq"]), 2)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay before
    the Adam update, instead of adding weight_decay * p to the gradient. Default weight_decay
    0.01 as in PyTorch."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
