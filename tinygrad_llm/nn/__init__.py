"""Modules, parameters and layers: `from tinygrad_llm import nn`."""
from . import init
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .module import LoadResult, Module, ModuleList, Parameter, Sequential, StateDictError

__all__ = ["Module", "Parameter", "ModuleList", "Sequential", "StateDictError", "LoadResult",
           "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "init"]
