"""The CPU engine's KV cache: which precision it really uses and how many bytes it takes, one plan for both
`mentallama-serve` (which writes the precision into the rendered engine config) and `mentallama-build openvino`
(which prints the plan before a build).

**Precision.** `auto` is what the engine would use unasked, made explicit: f32 when the engine infers in f32
(float32 checkpoints: the tiny model's greedy output then equals transformers'); else the engine's own runtime
option (optimum-intel writes `KV_CACHE_PRECISION` f16 into the `runtime_options` of an engine exported with
fp32 or fp16 weights, and none into an int8 or int4 one); else the OpenVINO CPU plugin's default on the machine
that runs this (`Core().get_property("CPU", "KV_CACHE_PRECISION")`): with OpenVINO 2026.4.1 on x86-64 that is
**u8**. So the shipped nano and the bench checkpoint (int8 engines, bf16 inference) get u8. The plugin stores
an f16 request as bf16 when it infers in bf16 (same size), and its paged-attention kernel refuses an f32 cache
with bf16 inference, so that pair is refused here.

**Bytes.** f32 4, f16/bf16 2 bytes per element; per token 2 (K and V) x layers x kv heads x head dim elements.
u8 also keeps scales and zero points, as the plugin lays its cache out (the compiled model's `key_cache.N` /
`value_cache.N` inputs, checked by tests/engine_build/test_kv_cache.py on a real engine): a block of 32
tokens holds, per layer and kv head, the keys as [32 + 8, head dim] bytes (one f32 scale and zero point per
channel and block) and the values as [32, head dim + 8] bytes (one per token). LLaMA-2-7B (32 layers, 32 heads,
head dim 128) takes 524,288 bytes per token in f16 and 303,104 in u8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from mentallama_build.engine_config import ModelShape

__all__ = [
    "INFERENCE_PRECISIONS",
    "KV_BLOCK_TOKENS",
    "KV_PRECISIONS",
    "KvPlan",
    "config_shape",
    "engine_kv_precision",
    "exported_kv_precision",
    "kv_plan",
    "plugin_default_kv_precision",
    "resolve_precisions",
]

KV_BLOCK_TOKENS = 32
"""Tokens per block of the OpenVINO 2026.4 CPU plugin's paged attention (mentallama_server.engine.ov_engine)."""
KV_PRECISIONS = ("auto", "f32", "f16", "bf16", "u8")
INFERENCE_PRECISIONS = ("auto", "f32", "bf16")
_ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1}
_U8_EXTRA = 8
"""Bytes of one f32 scale and one f32 zero point (u8: per key channel and block, per value token)."""


def plugin_default_kv_precision() -> str:
    """The CPU plugin's default KV-cache precision on this machine (``"u8"``, ``"f16"``, ...)."""
    import openvino as ov  # the build step and the engine have it; imported only when asked

    return ov.Core().get_property("CPU", "KV_CACHE_PRECISION").to_string()


def engine_kv_precision(engine: Path) -> str | None:
    """The KV-cache precision an engine folder's model asks for in its `runtime_options` (``None``: none)."""
    root = ElementTree.parse(engine / "openvino_model.xml").getroot()
    option = root.find("./rt_info/runtime_options/KV_CACHE_PRECISION")
    return None if option is None else option.get("value")


def exported_kv_precision(weight_format: str) -> str | None:
    """What :func:`engine_kv_precision` will read from an engine exported with ``weight_format`` weights:
    optimum-intel marks unquantized exports f16 and quantized ones nothing."""
    return "f16" if weight_format in ("fp32", "fp16") else None


def resolve_precisions(
    checkpoint_dtype: str, inference: str = "auto", kv: str = "auto", engine_default: str | None = None,
    plugin_default: Callable[[], str] = plugin_default_kv_precision,
) -> tuple[str, str]:  # fmt: skip
    """``(inference precision, KV precision)`` the engine will really use; ``auto`` decided as the module
    docstring says (``engine_default``: the engine's own runtime option, :func:`engine_kv_precision` or, before
    the build, :func:`exported_kv_precision`). Raises ``ValueError`` for an unknown value or a pair the plugin
    refuses."""
    if inference not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {inference!r}")
    if kv not in KV_PRECISIONS:
        raise ValueError(f"KV-cache precision must be one of {', '.join(KV_PRECISIONS)}, got {kv!r}")
    if inference == "auto":
        inference = "f32" if checkpoint_dtype in ("float32", "fp32") else "bf16"
    if kv == "auto":
        kv = "f32" if inference == "f32" else engine_default or plugin_default()
    if inference == "bf16" and kv == "f32":
        raise ValueError("an f32 KV cache needs f32 inference (--inference-precision f32): with bf16 inference the "
                         "CPU plugin's paged attention refuses it")  # fmt: skip
    if inference == "bf16" and kv == "f16":
        kv = "bf16"  # what the plugin stores (same size)
    return inference, kv


@dataclass(frozen=True)
class KvPlan:
    """The KV cache of one engine: its precision, bytes per block and per token, and what a cache holds."""

    precision: str
    block_bytes: int
    """Bytes of one block of :data:`KV_BLOCK_TOKENS` tokens, all layers."""
    blocks: int
    sequence_tokens: int
    """Tokens of the sequence the plan counts (the context, at most 2,048)."""

    @property
    def bytes_per_token(self) -> float:
        return self.block_bytes / KV_BLOCK_TOKENS

    @property
    def tokens(self) -> int:
        return self.blocks * KV_BLOCK_TOKENS

    @property
    def cache_bytes(self) -> int:
        return self.blocks * self.block_bytes

    @property
    def sequences(self) -> int:
        return self.tokens // self.sequence_tokens

    def lines(self, shape: ModelShape) -> list[str]:
        """The plan as printed by the launcher and the build step."""
        per_token = f"{self.bytes_per_token:,.0f}" if self.block_bytes % KV_BLOCK_TOKENS == 0 else (
            f"{self.bytes_per_token:,.1f}")  # fmt: skip
        scales = " plus u8 scales and zero points" if self.precision == "u8" else ""
        return [
            f"KV cache: {per_token} bytes per token ({self.precision}; 2 x {shape.num_layers} layers x "
            f"{shape.num_kv_heads} kv heads x {shape.head_dim}{scales})",
            f"KV cache of {self.blocks} blocks x {KV_BLOCK_TOKENS} tokens = {self.tokens:,} tokens, "
            f"{self.cache_bytes / 2**20:,.1f} MiB: {self.sequences} sequences of {self.sequence_tokens} tokens at once",
        ]


def config_shape(config: dict) -> ModelShape:
    """The KV-relevant shape of a Hugging Face / engine ``config.json`` (parameter count left at 0)."""
    heads = int(config["num_attention_heads"])
    return ModelShape(int(config["hidden_size"]), int(config["num_hidden_layers"]), heads,
                      int(config.get("num_key_value_heads") or heads), int(config["vocab_size"]),
                      int(config["max_position_embeddings"]), 0)  # fmt: skip


def kv_plan(shape: ModelShape, precision: str, blocks: int) -> KvPlan:
    """The plan for a resolved ``precision`` (not ``auto``; see :func:`resolve_precisions`)."""
    if precision not in _ELEMENT_BYTES:
        raise ValueError(f"resolve the KV-cache precision first (f32, f16, bf16 or u8), got {precision!r}")
    heads, dim, size = shape.num_kv_heads, shape.head_dim, _ELEMENT_BYTES[precision]
    if precision == "u8":
        per_layer = heads * (KV_BLOCK_TOKENS + _U8_EXTRA) * dim + heads * KV_BLOCK_TOKENS * (dim + _U8_EXTRA)
    else:
        per_layer = 2 * heads * KV_BLOCK_TOKENS * dim * size
    return KvPlan(precision, per_layer * shape.num_layers, blocks, min(shape.context_length, 2048))
