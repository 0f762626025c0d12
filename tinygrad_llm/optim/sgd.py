"""Stochastic gradient descent with momentum, Nesterov momentum and (L2) weight decay."""
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD, on a flat bucket:

        d = g + weight_decay * p
        buf = d                                  (first step)
        buf = momentum * buf + (1 - dampening) * d   (later steps)
        d = d + momentum * buf   if nesterov, else   d = buf
        p -= lr * d
    """
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        super()._check_group(group)
        if group["momentum"] < 0 or group["weight_decay"] < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got "
                             f"{group['momentum']} and {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")

    def _update(self, group, bucket):
        lr, mu, damp = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov, first = group["weight_decay"], group["nesterov"], bucket.step == 1

        xp_multiply = bucket.xp.multiply

        def chunk(p, g, buf, s):
            d = s[0]
            if wd:
                xp_multiply(p, wd, out=d)
                d += g
            else:
                d[...] = g
            if mu:
                if first:
                    buf[...] = d
                else:
                    buf *= mu
                    if damp:
                        xp_multiply(d, 1 - damp, out=s[1])
                        buf += s[1]
                    else:
                        buf += d
                if nesterov:
                    xp_multiply(buf, mu, out=s[1])
                    d += s[1]
                else:
                    d[...] = buf
            d *= lr
            p -= d

        bucket.map_chunks(chunk, (bucket.data, bucket.grad, bucket.state["momentum_buffer"]), 2)
