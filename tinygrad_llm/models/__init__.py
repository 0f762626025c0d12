"""Models built on the engine: GPT (GPT-2 layout, with RoPE / RMSNorm / SwiGLU / GQA options),
GPTClassifier (a GPT with a classification head), and Transformer (the Llama layout with the
switches of Llama, Mistral, Qwen2/3 and Gemma 2/3), loaded from Hugging Face folders by
from_pretrained."""
from .classifier import GPTClassifier
from .generate import generate_text
from .gpt import GPT, GPTConfig, KVCache, sample_next
from .pretrained import from_pretrained
from .transformer import Transformer, TransformerConfig

__all__ = ["GPT", "GPTConfig", "GPTClassifier", "KVCache", "Transformer", "TransformerConfig", "from_pretrained",
           "generate_text", "sample_next"]
