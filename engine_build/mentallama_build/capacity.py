"""GPU memory plan for a TensorRT-LLM engine: weights per GPU, KV cache per token, how many sequences fit.

Pure arithmetic, no GPU needed, so the plan is printed (and checked) before any build starts.

KV cache per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element. LLaMA-2-7B in fp16:
2 x 32 x 32 x 128 x 2 = 524288 B (0.5 MiB); 13B: 2 x 40 x 40 x 128 x 2 = 819200 B (0.78 MiB); an fp8 KV
cache halves both. Each GPU holds its share: TP splits the KV heads, PP the layers.

The runtime (Triton backend / TensorRT-LLM executor) sizes the paged KV cache as
`kv_cache_free_gpu_mem_fraction` x the memory still free once the engine (weights + activation buffers) is
loaded. We estimate that free memory as GPU memory - weights - a fixed runtime overhead (CUDA context,
activation buffers for max_num_tokens, NCCL); the default overhead is a deliberate round number, refine it
from `nvidia-smi` after a first load. Blocks hold `tokens_per_block` tokens (TensorRT-LLM default 32), and a
sequence occupies whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from mentallama_build.engine_config import BuildConfig, ModelShape

__all__ = [
    "BYTES_PER_ELEMENT",
    "DEFAULT_RUNTIME_OVERHEAD_GIB",
    "DEFAULT_TOKENS_PER_BLOCK",
    "CapacityPlan",
    "capacity_plan",
    "format_plan",
    "kv_bytes_per_token",
    "plan_for_build",
    "plan_problems",
    "weight_bytes",
]

GIB = 1024**3
MIB = 1024**2
DEFAULT_TOKENS_PER_BLOCK = 32
DEFAULT_RUNTIME_OVERHEAD_GIB = 3.0

BYTES_PER_ELEMENT: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "int8": 1}

# Bytes per decoder-layer weight. Weight-only and AWQ keep activations in dtype; AWQ adds one fp16 scale per
# group of 128 weights. Per-channel scales of int8/int4 weight-only are < 0.1% and left out.
_LAYER_BYTES_PER_PARAM: dict[str, float] = {
    "none": 2.0,
    "int8_wo": 1.0,
    "int4_wo": 0.5,
    "fp8": 1.0,
    "int4_awq": 0.5 + 2.0 / 128,
}


def kv_bytes_per_token(shape: ModelShape, kv_cache_dtype: str, tp: int = 1, pp: int = 1) -> int:
    """KV cache bytes one token takes on one GPU (tp = pp = 1: the whole model)."""
    per_element = BYTES_PER_ELEMENT[kv_cache_dtype]
    return 2 * (shape.num_layers // pp) * (shape.num_kv_heads // tp) * shape.head_dim * per_element


def weight_bytes(
    shape: ModelShape, quantization: str, dtype: str, tp: int = 1, pp: int = 1
) -> tuple[int, int]:
    """(total, busiest GPU) weight bytes.

    Embedding and lm_head stay in dtype (TensorRT-LLM does not quantise them by default). TP splits the
    decoder layers and lm_head (vocab-parallel); the input embedding is replicated on every TP rank (no
    `--use_parallel_embedding`). PP puts the embedding on the first stage and lm_head on the last.
    """
    dt = BYTES_PER_ELEMENT[dtype]
    layers = shape.layer_params * (dt if quantization == "none" else _LAYER_BYTES_PER_PARAM[quantization])
    embed = shape.embedding_params * dt
    head = shape.embedding_params * dt
    total = int(layers + embed + head)
    layers_gpu = layers / (tp * pp)
    # PP: the busiest stage is the first (embedding) or the last (lm_head shard).
    busiest = layers_gpu + (embed + head / tp if pp == 1 else max(embed, head / tp))
    return total, int(busiest)


@dataclass(frozen=True)
class CapacityPlan:
    """Memory plan of one engine on one GPU type. `None` fields need the GPU memory to be known."""

    tp: int
    pp: int
    weight_bytes_total: int
    weight_bytes_per_gpu: int
    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    tokens_per_block: int
    gpu_memory_bytes: int | None
    runtime_overhead_bytes: int
    kv_cache_free_gpu_mem_fraction: float
    kv_cache_bytes_per_gpu: int | None
    kv_cache_blocks: int | None
    kv_cache_tokens: int | None
    plan_input_len: int
    plan_output_len: int
    blocks_per_sequence: int
    """Blocks one request holds: its tokens' blocks times the beams (beam_width)."""
    kv_limited_sequences: int | None
    max_batch_size: int
    beam_width: int = 1

    @property
    def concurrent_sequences(self) -> int | None:
        """Sequences of plan_input_len + plan_output_len that run at once: KV cache or max_batch_size."""
        if self.kv_limited_sequences is None:
            return None
        return min(self.kv_limited_sequences, self.max_batch_size)

    @property
    def limited_by(self) -> str | None:
        if self.kv_limited_sequences is None:
            return None
        return "kv cache" if self.kv_limited_sequences < self.max_batch_size else "max_batch_size"


def capacity_plan(
    shape: ModelShape,
    *,
    quantization: str = "none",
    dtype: str = "float16",
    kv_cache_dtype: str | None = None,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_gib: float | None = None,
    kv_cache_free_gpu_mem_fraction: float = 0.9,
    plan_input_len: int = 1024,
    plan_output_len: int = 256,
    max_batch_size: int = 64,
    tokens_per_block: int = DEFAULT_TOKENS_PER_BLOCK,
    runtime_overhead_gib: float = DEFAULT_RUNTIME_OVERHEAD_GIB,
    beam_width: int = 1,
) -> CapacityPlan:
    """Compute the plan. Pure; every input is explicit so tests can check it against hand arithmetic."""
    kv_dtype = kv_cache_dtype or ("fp8" if quantization == "fp8" else dtype)
    total, per_gpu = weight_bytes(shape, quantization, dtype, tp, pp)
    kv_token = kv_bytes_per_token(shape, kv_dtype)
    kv_token_gpu = kv_bytes_per_token(shape, kv_dtype, tp, pp)
    overhead = int(runtime_overhead_gib * GIB)
    seq_len = plan_input_len + plan_output_len
    # Each beam of a beam-search request holds its own blocks (plan for the widest the engine allows).
    blocks_per_seq = -(-seq_len // tokens_per_block) * max(1, beam_width)

    gpu_bytes = kv_bytes = blocks = tokens = seqs = None
    if gpu_memory_gib is not None:
        gpu_bytes = int(gpu_memory_gib * GIB)
        free = max(0, gpu_bytes - per_gpu - overhead)
        kv_bytes = int(free * kv_cache_free_gpu_mem_fraction)
        blocks = kv_bytes // (kv_token_gpu * tokens_per_block)
        tokens = blocks * tokens_per_block
        seqs = blocks // blocks_per_seq
    return CapacityPlan(
        tp=tp,
        pp=pp,
        weight_bytes_total=total,
        weight_bytes_per_gpu=per_gpu,
        kv_cache_dtype=kv_dtype,
        kv_bytes_per_token=kv_token,
        kv_bytes_per_token_per_gpu=kv_token_gpu,
        tokens_per_block=tokens_per_block,
        gpu_memory_bytes=gpu_bytes,
        runtime_overhead_bytes=overhead,
        kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction,
        kv_cache_bytes_per_gpu=kv_bytes,
        kv_cache_blocks=blocks,
        kv_cache_tokens=tokens,
        plan_input_len=plan_input_len,
        plan_output_len=plan_output_len,
        blocks_per_sequence=blocks_per_seq,
        kv_limited_sequences=seqs,
        max_batch_size=max_batch_size,
        beam_width=max(1, beam_width),
    )


def plan_for_build(
    cfg: BuildConfig,
    shape: ModelShape,
    gpu_memory_gib: float | None,
    plan_input_len: int,
    plan_output_len: int,
    runtime_overhead_gib: float = DEFAULT_RUNTIME_OVERHEAD_GIB,
) -> CapacityPlan:
    """The plan for a build config (its quantisation, parallelism, batch size and memory fraction)."""
    return capacity_plan(
        shape,
        quantization=cfg.quantization,
        dtype=cfg.dtype,
        kv_cache_dtype=cfg.kv_cache_dtype,
        tp=cfg.tp,
        pp=cfg.pp,
        gpu_memory_gib=gpu_memory_gib,
        kv_cache_free_gpu_mem_fraction=cfg.kv_cache_free_gpu_mem_fraction,
        plan_input_len=plan_input_len,
        plan_output_len=plan_output_len,
        max_batch_size=cfg.max_batch_size,
        runtime_overhead_gib=runtime_overhead_gib,
        beam_width=cfg.max_beam_width,
    )


def plan_problems(plan: CapacityPlan, max_seq_len: int) -> tuple[list[str], list[str]]:
    """(problems, warnings) that the plan reveals; empty when the GPU memory is unknown."""
    problems: list[str] = []
    warnings: list[str] = []
    if plan.gpu_memory_bytes is None or plan.kv_cache_tokens is None:
        return problems, warnings
    need = plan.weight_bytes_per_gpu + plan.runtime_overhead_bytes
    if need >= plan.gpu_memory_bytes:
        problems.append(
            f"weights ({plan.weight_bytes_per_gpu / GIB:.1f} GiB per GPU) plus runtime overhead "
            f"({plan.runtime_overhead_bytes / GIB:.1f} GiB) do not fit in "
            f"{plan.gpu_memory_bytes / GIB:.1f} GiB: raise --tp or choose a quantisation"
        )
    elif plan.kv_cache_tokens < max_seq_len:
        problems.append(
            f"the KV cache holds {plan.kv_cache_tokens} tokens per GPU, fewer than one --max-seq-len "
            f"{max_seq_len} sequence: raise --tp, quantise, or lower --max-seq-len"
        )
    elif plan.kv_limited_sequences is not None and plan.kv_limited_sequences < 4:
        warnings.append(
            f"only {plan.kv_limited_sequences} sequences of {plan.plan_input_len}+{plan.plan_output_len} "
            "tokens fit in the KV cache at once"
        )
    return problems, warnings


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def format_plan(plan: CapacityPlan) -> str:
    """The plan as an aligned two-column table."""
    rows: list[tuple[str, str]] = [
        ("parallelism", f"tp={plan.tp} pp={plan.pp} ({plan.tp * plan.pp} GPU)"),
        ("weights, total", _gib(plan.weight_bytes_total)),
        ("weights, per GPU", _gib(plan.weight_bytes_per_gpu)),
        (
            f"KV cache per token ({plan.kv_cache_dtype})",
            f"{plan.kv_bytes_per_token} B ({plan.kv_bytes_per_token / MIB:.3f} MiB)",
        ),
        ("KV cache per token, per GPU", f"{plan.kv_bytes_per_token_per_gpu} B"),
        ("GPU memory", _gib(plan.gpu_memory_bytes)),
        ("runtime overhead (assumed)", _gib(plan.runtime_overhead_bytes)),
        ("kv_cache_free_gpu_mem_fraction", f"{plan.kv_cache_free_gpu_mem_fraction:g}"),
        ("KV cache, per GPU", _gib(plan.kv_cache_bytes_per_gpu)),
        (
            f"KV cache tokens ({plan.tokens_per_block}/block)",
            "-"
            if plan.kv_cache_tokens is None
            else f"{plan.kv_cache_tokens} ({plan.kv_cache_blocks} blocks)",
        ),
        (
            "sequence (input+output)",
            f"{plan.plan_input_len}+{plan.plan_output_len} tokens = {plan.blocks_per_sequence} blocks"
            + (f" ({plan.beam_width} beams)" if plan.beam_width > 1 else ""),
        ),
        (
            "sequences the KV cache holds",
            "-" if plan.kv_limited_sequences is None else str(plan.kv_limited_sequences),
        ),
        (
            "concurrent sequences",
            "- (give --gpu-memory-gib or --gpu-name)"
            if plan.concurrent_sequences is None
            else f"{plan.concurrent_sequences} (limited by {plan.limited_by}, "
            f"max_batch_size={plan.max_batch_size})",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["Capacity plan", "-" * (width + 30)]
    lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)
