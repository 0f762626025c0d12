"""Modules, parameters and layers: `from tinygrad_llm import nn`."""
from . import init
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .lora import (LoRALinear, apply_lora, lora_layers, lora_state_dict, merge_lora, trainable_parameters,
                   unmerge_lora)
from .mla import MLA
from .moe import MoE, moe_layers, update_router_biases
from .module import LoadResult, Module, ModuleList, Parameter, Sequential, StateDictError

__all__ = ["Module", "Parameter", "ModuleList", "Sequential", "StateDictError", "LoadResult",
           "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "GELU", "init",
           "LoRALinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_layers", "lora_state_dict",
           "trainable_parameters", "MoE", "MLA", "moe_layers", "update_router_biases"]
