"""The CPU engine's KV-cache plan (issue 22): one precision rule and one byte count for the launcher and the
build step, checked against the cache the OpenVINO CPU plugin really lays out for a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mentallama_build.engine_config import ModelShape
from mentallama_build.kv_cache import (
    KV_BLOCK_TOKENS,
    engine_kv_precision,
    exported_kv_precision,
    kv_plan,
    resolve_precisions,
)

BENCH = ModelShape(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, vocab_size=32000,
                   context_length=4096, parameter_count=0)  # fmt: skip
LLAMA_7B = ModelShape(4096, 32, 32, 32, 32000, 4096, 6_738_415_616)


@pytest.mark.parametrize(("shape", "precision", "per_token"), [
    (BENCH, "f32", 73_728), (BENCH, "f16", 36_864), (BENCH, "bf16", 36_864),
    # u8: keys [32 + 8, 64] and values [32, 64 + 8] bytes per block, layer and head: (2560 + 2304) / 32 = 152
    (BENCH, "u8", 12 * 12 * 152),
    (LLAMA_7B, "f16", 524_288), (LLAMA_7B, "u8", 32 * 32 * (40 * 128 + 32 * 136) // 32),
])  # fmt: skip
def test_bytes_per_token_by_hand(shape: ModelShape, precision: str, per_token: int) -> None:
    plan = kv_plan(shape, precision, blocks=512)
    assert plan.bytes_per_token == per_token
    assert plan.cache_bytes == 512 * KV_BLOCK_TOKENS * per_token
    assert plan.sequences == 512 * KV_BLOCK_TOKENS // 2048


def test_the_plan_prints_the_precision_it_counts() -> None:
    lines = kv_plan(BENCH, "u8", 512).lines(BENCH)
    assert lines[0].startswith("KV cache: 21,888 bytes per token (u8;") and "scales" in lines[0]
    assert "342.0 MiB" in lines[1]


def test_auto_is_f32_with_f32_inference_else_the_plugins_default() -> None:
    asked = []

    def plugin() -> str:
        asked.append(1)
        return "u8"

    assert resolve_precisions("float32", plugin_default=plugin) == ("f32", "f32")
    assert not asked  # an f32 engine does not ask the plugin
    assert resolve_precisions("bfloat16", plugin_default=plugin) == ("bf16", "u8")
    assert resolve_precisions("float16", "f32", plugin_default=plugin) == ("f32", "f32")
    assert resolve_precisions("bfloat16", kv="f16", plugin_default=plugin) == ("bf16", "bf16")  # stored as bf16
    assert resolve_precisions("float32", kv="f16", plugin_default=plugin) == ("f32", "f16")
    # An engine exported with fp16 weights asks for f16 itself (stored as bf16 with bf16 inference).
    assert resolve_precisions("bfloat16", engine_default="f16", plugin_default=plugin) == ("bf16", "bf16")
    assert len(asked) == 1
    assert exported_kv_precision("int8") is None and exported_kv_precision("int4") is None
    with pytest.raises(ValueError, match="f32 inference"):
        resolve_precisions("bfloat16", kv="f32", plugin_default=plugin)
    with pytest.raises(ValueError, match="one of"):
        resolve_precisions("bfloat16", kv="fp8", plugin_default=plugin)
    with pytest.raises(ValueError, match="resolve"):
        kv_plan(BENCH, "auto", 1)


def _compiled_block_bytes(engine: Path, inference: str, kv: str | None) -> tuple[int, str]:
    """Bytes of one cache block, all layers, and the precision, as the CPU plugin compiles the engine with paged
    attention (what OpenVINO GenAI's ContinuousBatchingPipeline allocates)."""
    import openvino as ov
    from openvino._offline_transformations import paged_attention_transformation

    core = ov.Core()
    model = core.read_model(engine / "openvino_model.xml")
    paged_attention_transformation(model, False, False)
    config = {"INFERENCE_PRECISION_HINT": inference} | ({"KV_CACHE_PRECISION": kv} if kv else {})
    compiled = core.compile_model(model, "CPU", config)
    total = 0
    for port in compiled.inputs:
        name = port.get_any_name()
        if name.startswith(("key_cache.", "value_cache.")):
            dims = [d.get_length() for d in list(port.get_partial_shape())[1:]]  # [heads, rows, columns]
            count = 1
            for d in dims:
                count *= d
            total += count * port.get_element_type().size
    return total, compiled.get_property("KV_CACHE_PRECISION").to_string()


@pytest.mark.slow
@pytest.mark.parametrize(("inference", "kv"), [("f32", None), ("bf16", None), ("f32", "f32"), ("f32", "f16"),
                                               ("bf16", "f16"), ("bf16", "bf16"), ("bf16", "u8")])  # fmt: skip
def test_the_plan_equals_the_cache_the_plugin_lays_out(tiny_engine: Path, inference: str, kv: str | None) -> None:
    config = json.loads((tiny_engine / "config.json").read_text())
    shape = ModelShape(config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                       config.get("num_key_value_heads", config["num_attention_heads"]), config["vocab_size"],
                       config["max_position_embeddings"], 0)  # fmt: skip
    block_bytes, compiled_kv = _compiled_block_bytes(tiny_engine, inference, kv)
    own = engine_kv_precision(tiny_engine)
    assert own == exported_kv_precision("fp32") == "f16"  # the exporter marks an unquantized engine
    if kv is None:  # unasked, the plugin takes the engine's own option: auto with bf16 inference says so
        _, resolved = resolve_precisions("bfloat16", "bf16", "auto", engine_default=own)
        resolved = "f16" if inference == "f32" else resolved
    else:
        _, resolved = resolve_precisions("float32", inference, kv)
    assert kv_plan(shape, resolved, 1).block_bytes == block_bytes, (inference, kv, compiled_kv)
