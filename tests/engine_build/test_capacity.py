"""Capacity plan numbers against hand arithmetic for LLaMA-2-7B/13B shapes.

7B: 32 layers x 32 heads x head dim 128; 13B: 40 x 40 x 128; vocab 32000; untied embeddings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mentallama_build.capacity import (
    capacity_plan,
    format_plan,
    kv_bytes_per_token,
    plan_for_build,
    plan_problems,
    weight_bytes,
)
from mentallama_build.engine_config import PRESETS, BuildConfig

GIB = 2**30
S7, S13 = PRESETS["7b"].shape, PRESETS["13b"].shape
P7, P13 = 6_738_415_616, 13_015_864_320  # LLaMA-2 parameter counts


def test_kv_cache_bytes_per_token() -> None:
    assert kv_bytes_per_token(S7, "float16") == 2 * 32 * 32 * 128 * 2 == 524288  # 0.5 MiB
    assert kv_bytes_per_token(S13, "float16") == 2 * 40 * 40 * 128 * 2 == 819200  # ~0.78 MiB
    assert kv_bytes_per_token(S7, "bfloat16") == 524288
    assert kv_bytes_per_token(S7, "fp8") == 262144
    assert kv_bytes_per_token(S13, "int8") == 409600
    # Per GPU: TP splits KV heads, PP splits layers.
    assert kv_bytes_per_token(S13, "float16", tp=2) == 409600
    assert kv_bytes_per_token(S7, "float16", tp=2, pp=2) == 2 * 16 * 16 * 128 * 2


def test_weight_bytes() -> None:
    embed7, embed13 = 32000 * 4096, 32000 * 5120
    assert S7.parameter_count == P7 and S13.parameter_count == P13
    assert weight_bytes(S7, "none", "float16") == (2 * P7, 2 * P7)
    # int8 weight-only: decoder layers 1 byte, embedding and lm_head stay fp16.
    int8_total = (P7 - 2 * embed7) + 2 * 2 * embed7
    assert weight_bytes(S7, "int8_wo", "float16") == (int8_total, int8_total)
    # int4 AWQ: half a byte plus one fp16 scale per 128 weights.
    awq_total = int((P7 - 2 * embed7) * (0.5 + 2 / 128) + 4 * embed7)
    assert weight_bytes(S7, "int4_awq", "float16")[0] == awq_total
    # 13B at TP2: layers and lm_head split in two, the input embedding replicated.
    layers13 = P13 - 2 * embed13
    assert weight_bytes(S13, "none", "float16", tp=2) == (2 * P13, layers13 + 2 * embed13 + embed13)
    # PP2: busiest stage = half the layers + the larger of embedding and lm_head.
    assert weight_bytes(S13, "none", "float16", pp=2)[1] == layers13 + 2 * embed13


def test_plan_7b_fp16_on_80gib() -> None:
    plan = capacity_plan(S7, gpu_memory_gib=80, kv_cache_free_gpu_mem_fraction=0.9, runtime_overhead_gib=3,
                         plan_input_len=1024, plan_output_len=256, max_batch_size=64)  # fmt: skip
    free = 80 * GIB - 2 * P7 - 3 * GIB  # 69,201,289,216 B
    kv = int(free * 0.9)
    blocks = kv // (524288 * 32)
    assert plan.kv_cache_bytes_per_gpu == kv
    assert plan.kv_cache_blocks == blocks == 3712
    assert plan.kv_cache_tokens == 3712 * 32 == 118784
    assert plan.blocks_per_sequence == 40  # 1280 tokens / 32
    assert plan.kv_limited_sequences == 92  # 3712 // 40
    assert plan.concurrent_sequences == 64 and plan.limited_by == "max_batch_size"
    wide = capacity_plan(S7, gpu_memory_gib=80, runtime_overhead_gib=3, max_batch_size=256)
    assert wide.concurrent_sequences == 92 and wide.limited_by == "kv cache"


def test_plan_13b_fp8_tp2_on_h100() -> None:
    cfg = BuildConfig.from_preset("13b", Path("/c"), Path("/o"), quantization="fp8")
    plan = plan_for_build(cfg, S13, gpu_memory_gib=80, plan_input_len=2048, plan_output_len=512,
                          runtime_overhead_gib=3)  # fmt: skip
    embed = 32000 * 5120
    per_gpu = int((P13 - 2 * embed) * 1.0 / 2 + 2 * embed + 2 * embed / 2)
    assert plan.weight_bytes_per_gpu == per_gpu
    assert plan.kv_cache_dtype == "fp8"
    assert plan.kv_bytes_per_token == 409600 and plan.kv_bytes_per_token_per_gpu == 204800
    kv = int((80 * GIB - per_gpu - 3 * GIB) * 0.9)
    assert plan.kv_cache_blocks == kv // (204800 * 32)
    assert plan.kv_limited_sequences == plan.kv_cache_blocks // 80  # 2560 tokens = 80 blocks


def test_plan_without_gpu_memory_keeps_per_token_facts() -> None:
    plan = capacity_plan(S13)
    assert plan.kv_bytes_per_token == 819200 and plan.kv_cache_tokens is None
    assert plan.concurrent_sequences is None and plan.limited_by is None
    assert plan_problems(plan, 4096) == ([], [])
    assert "give --gpu-memory-gib or --gpu-name" in format_plan(plan)


def test_plan_problems() -> None:
    # 13B fp16 on one 24 GiB L4: 26 GB of weights cannot fit.
    problems, _ = plan_problems(capacity_plan(S13, gpu_memory_gib=24), 4096)
    assert len(problems) == 1 and "do not fit in 24.0 GiB" in problems[0]
    # 7B fp16 on a 16 GiB T4: weights fit; (16 - 12.55 - 3) GiB x 0.9 holds 25 blocks = 800 tokens.
    t4 = capacity_plan(S7, gpu_memory_gib=16, runtime_overhead_gib=3)
    assert t4.kv_cache_tokens == 800
    problems, _ = plan_problems(t4, 4096)
    assert problems == [
        "the KV cache holds 800 tokens per GPU, fewer than one --max-seq-len 4096 sequence: raise --tp, "
        "quantise, or lower --max-seq-len"
    ]
    assert plan_problems(capacity_plan(S7, gpu_memory_gib=80), 4096) == ([], [])


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_fraction_scales_the_kv_cache(fraction: float) -> None:
    plan = capacity_plan(
        S7, gpu_memory_gib=80, kv_cache_free_gpu_mem_fraction=fraction, runtime_overhead_gib=3
    )
    assert plan.kv_cache_bytes_per_gpu == int((80 * GIB - 2 * P7 - 3 * GIB) * fraction)


def test_format_plan_table() -> None:
    text = format_plan(capacity_plan(S7, gpu_memory_gib=80, runtime_overhead_gib=3))
    assert "524288 B (0.500 MiB)" in text
    assert "118784 (3712 blocks)" in text
    assert "64 (limited by max_batch_size, max_batch_size=64)" in text
    lines = text.splitlines()
    assert lines[0] == "Capacity plan"
    column = lines[2].index("tp=1")  # every value starts in the same column
    for line in lines[2:]:
        assert line[column - 2 : column] == "  " and line[column] != " ", line
