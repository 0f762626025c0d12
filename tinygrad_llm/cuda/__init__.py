"""The CuPy glue: compiles tinygrad_llm/kernels/*.cu on first use, caches them, launches them.

An op calls a kernel only where `serves(...)` says so:

    y = cuda.softmax_forward(x) if cuda.serves(x) else softmax_forward_cpu(x)

`serves` is True only for C-contiguous CuPy float32/float64 arrays (RawKernel ignores strides)
while the kernels are enabled; `TINYGRAD_LLM_KERNELS=0` in the environment, or
`set_enabled(False)`, sends every op down its plain CuPy path instead. This package imports
without CuPy: nothing here touches CuPy until an op hands it a CuPy array.

Layout: runtime.py compiles, caches and launches (and holds the registry of kernel files); each
kernel family has a module of its own (softmax.py, layernorm.py, cross_entropy.py, gelu.py,
adamw.py, attention.py, embedding.py, random.py) that registers its .cu file and wraps its launches.
"""
from . import adamw, attention, cross_entropy, embedding, gelu, layernorm, random, runtime, softmax
from .adamw import adamw_step
from .attention import flash_attention_backward, flash_attention_forward
from .cross_entropy import cross_entropy_backward, cross_entropy_forward
from .embedding import embedding_backward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layer_norm_backward, layer_norm_forward
from .runtime import (FLOAT_ONLY, KERNEL_DIR, KERNELS, enabled, kernel, kernel_source, module,
                      serves, set_enabled)
from .softmax import softmax_backward, softmax_forward

KERNEL_FILES = runtime.kernel_files()  # every family module above has registered its file

__all__ = ["serves", "set_enabled", "enabled", "module", "kernel", "softmax_forward",
           "softmax_backward", "layer_norm_forward", "layer_norm_backward", "cross_entropy_forward",
           "cross_entropy_backward", "embedding_backward", "gelu_forward", "gelu_backward",
           "adamw_step", "flash_attention_forward", "flash_attention_backward", "KERNEL_DIR",
           "KERNEL_FILES", "KERNELS", "FLOAT_ONLY", "kernel_source"]
