"""LLaMA tensor names and shapes derived from a `config.json` dict, declared once.

Both the random-weight builder (`tiny.py`) and the checkpoint validator (`check.py`) use this table, so the
parameter count and the weights we write can never disagree with what `LlamaForCausalLM` expects (a test
compares it with the real module's `state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["REQUIRED_SHAPE_KEYS", "head_dim", "llama_tensor_shapes", "parameter_count"]

# Keys without which the shapes cannot be computed.
REQUIRED_SHAPE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


def head_dim(config: Mapping[str, Any]) -> int:
    """Per-head width: the explicit `head_dim` of newer LLaMA configs, else hidden / heads."""
    explicit = config.get("head_dim")
    if explicit:
        return int(explicit)
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def llama_tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a Hugging Face `LlamaForCausalLM` checkpoint, in checkpoint key order.

    Raises `KeyError` when one of `REQUIRED_SHAPE_KEYS` is missing.
    """
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    vocab = int(config["vocab_size"])
    hd = head_dim(config)
    attention_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))

    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        projections = {
            "self_attn.q_proj": (heads * hd, hidden),
            "self_attn.k_proj": (kv_heads * hd, hidden),
            "self_attn.v_proj": (kv_heads * hd, hidden),
            "self_attn.o_proj": (hidden, heads * hd),
            "mlp.gate_proj": (inter, hidden),
            "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter),
        }
        for name, shape in projections.items():
            shapes[f"{prefix}.{name}.weight"] = shape
            if mlp_bias if name.startswith("mlp.") else attention_bias:
                shapes[f"{prefix}.{name}.bias"] = (shape[0],)
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def parameter_count(config: Mapping[str, Any]) -> int:
    """Number of parameters implied by the config (tied embeddings counted once); no weights are read."""
    return sum(math.prod(shape) for shape in llama_tensor_shapes(config).values())
