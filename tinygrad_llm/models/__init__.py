"""Models built on the engine: GPT (GPT-2 layout, with RoPE / RMSNorm / SwiGLU / GQA options)."""
from .gpt import GPT, GPTConfig, KVCache, sample_next

__all__ = ["GPT", "GPTConfig", "KVCache", "sample_next"]
