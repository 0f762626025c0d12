"""Models built on the engine: GPT (GPT-2 layout, with RoPE / RMSNorm / SwiGLU / GQA options) and
GPTClassifier (a GPT with a classification head)."""
from .classifier import GPTClassifier
from .generate import generate_text
from .gpt import GPT, GPTConfig, KVCache, sample_next

__all__ = ["GPT", "GPTConfig", "GPTClassifier", "KVCache", "generate_text", "sample_next"]
