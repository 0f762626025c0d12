"""tinygrad_llm: a reverse-mode autograd engine and GPT framework, built from first principles.

    import tinygrad_llm as tl
    from tinygrad_llm import Tensor, nn, optim
    import tinygrad_llm.functional as F
"""
from . import backend
from .autocast import autocast
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .backend import cuda_available, get_rng_state, manual_seed, set_rng_state
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, cat, stack, where

__version__ = "0.1.0"


def __getattr__(name):
    # nn, optim and functional load on first use, so `import tinygrad_llm` stays light and the
    # tokenizer can be used without the engine
    if name in ("nn", "optim", "functional", "models", "tokenizer", "study", "parallel",
                "blas"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    if name in ("trace_backward", "draw_graph"):
        from . import study
        return getattr(study, name)
    raise AttributeError(f"module 'tinygrad_llm' has no attribute {name!r}")


__all__ = ["Tensor", "autocast", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "gradcheck", "GradcheckError", "manual_seed",
           "get_rng_state", "set_rng_state", "cuda_available", "cat", "stack", "where", "backend"]
