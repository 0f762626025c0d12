"""Models built on the engine: GPT (GPT-2 layout, with RoPE / RMSNorm / SwiGLU / GQA options)."""
from .generate import generate_text
from .gpt import GPT, GPTConfig, KVCache, sample_next

__all__ = ["GPT", "GPTConfig", "KVCache", "generate_text", "sample_next"]
