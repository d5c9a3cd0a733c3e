"""What a TensorRT-LLM engine build is asked to do, and whether it can work.

`BuildConfig` holds every option of `mentallama-build engine`; `PRESETS` carries the LLaMA-2 shapes the
MentaLLaMA-chat checkpoints share (7B: 32 layers x 32 heads, 13B: 40 x 40, head dim 128, context 4096) and
per-size defaults (13B defaults to tensor parallel 2). `validate()` is pure: it takes the config, the model
shape (from the checkpoint check) and the GPU, and returns every problem at once, so a user fixes them in one
go instead of one per run.

Targets TensorRT-LLM 1.2.1 (NGC `nvcr.io/nvidia/tritonserver:26.04`..`26.07-trtllm-python-py3`), the last
line with the TensorRT engine flow.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CONTAINER_IMAGE",
    "DTYPES",
    "GPU_TABLE",
    "MAX_BEAM_WIDTH_LIMIT",
    "PRESETS",
    "QUANTIZATIONS",
    "TRTLLM_VERSION",
    "BuildConfig",
    "GpuInfo",
    "ModelShape",
    "Preset",
    "Validation",
    "detect_gpu",
    "gpu_from_name",
    "shape_from_report",
    "validate",
]

TRTLLM_VERSION = "1.2.1"
DEFAULT_CONTAINER_IMAGE = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"

# float32 is for exactness checks on small models (`mentallama-bench gpu-smoke` compares greedy tokens with the
# CPU profile): no fused attention kernels exist for it (engine_step builds it without context FMHA).
DTYPES = ("float16", "bfloat16", "float32")
MAX_BEAM_WIDTH_LIMIT = 8  # the widest beam search the serving profiles relay; KV cache grows with each beam
# none | weight-only int8/int4 (convert_checkpoint.py) | fp8 weights+activations with fp8 KV cache and
# int4 AWQ (ModelOpt, examples/quantization/quantize.py).
QUANTIZATIONS = ("none", "int8_wo", "int4_wo", "fp8", "int4_awq")
MODELOPT_QUANTIZATIONS = frozenset({"fp8", "int4_awq"})

# Minimum compute capability per feature (TensorRT-LLM support matrix): FP8 needs Ada (8.9) or Hopper (9.0);
# bfloat16 and the AWQ int4 kernels need Ampere (8.0).
FP8_MIN_CC = (8, 9)
BF16_MIN_CC = (8, 0)
AWQ_MIN_CC = (8, 0)


@dataclass(frozen=True)
class ModelShape:
    """The facts of a LLaMA checkpoint that sizing and validation need."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    parameter_count: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embedding_params(self) -> int:
        """Input embedding table; LLaMA-2 does not tie it to lm_head, which has the same size."""
        return self.vocab_size * self.hidden_size

    @property
    def layer_params(self) -> int:
        """Everything inside the decoder layers (plus the final norm): what TP and PP split."""
        return self.parameter_count - 2 * self.embedding_params


def _llama_params(hidden: int, inter: int, layers: int, vocab: int) -> int:
    # q, k, v, o (no GQA at these sizes) + gate/up/down + two RMSNorm weights per layer; embed, lm_head, norm.
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return layers * per_layer + 2 * vocab * hidden + hidden


@dataclass(frozen=True)
class Preset:
    """Per-size defaults. The shape is only used when the checkpoint check cannot report one."""

    name: str
    shape: ModelShape
    tp: int
    max_batch_size: int


PRESETS: dict[str, Preset] = {
    "7b": Preset(
        "7b",
        ModelShape(4096, 32, 32, 32, 32000, 4096, _llama_params(4096, 11008, 32, 32000)),
        tp=1,
        max_batch_size=64,
    ),
    "13b": Preset(
        "13b",
        ModelShape(5120, 40, 40, 40, 32000, 4096, _llama_params(5120, 13824, 40, 32000)),
        # 26 GB of fp16 weights leave too little KV cache on one 40/48 GB card; TP2 also halves latency.
        tp=2,
        max_batch_size=64,
    ),
}


@dataclass(frozen=True)
class GpuInfo:
    """One GPU model: name, compute capability and memory (GiB), as nvidia-smi reports them."""

    name: str
    compute_capability: tuple[int, int] | None
    memory_gib: float | None
    count: int | None = None  # GPUs nvidia-smi sees; None when the GPU was named, not detected

    @property
    def cc_text(self) -> str:
        return (
            "unknown"
            if self.compute_capability is None
            else f"{self.compute_capability[0]}.{self.compute_capability[1]}"
        )


# Substring of the marketing name -> (compute capability, memory GiB or None when the name has variants).
# Order matters: longer, more specific names first.
GPU_TABLE: tuple[tuple[str, tuple[int, int], float | None], ...] = (
    ("GH200", (9, 0), 96.0),
    ("H200", (9, 0), 141.0),
    ("H100", (9, 0), 80.0),
    ("H800", (9, 0), 80.0),
    ("H20", (9, 0), 96.0),
    ("B200", (10, 0), 180.0),
    ("L40S", (8, 9), 48.0),
    ("L40", (8, 9), 48.0),
    ("L4", (8, 9), 24.0),
    ("RTX 6000 Ada", (8, 9), 48.0),
    ("RTX 4090", (8, 9), 24.0),
    ("A100", (8, 0), None),
    ("A800", (8, 0), None),
    ("A30", (8, 0), 24.0),
    ("A40", (8, 6), 48.0),
    ("A10G", (8, 6), 24.0),
    ("A10", (8, 6), 24.0),
    ("RTX A6000", (8, 6), 48.0),
    ("T4", (7, 5), 16.0),
    ("V100", (7, 0), None),
)


def gpu_from_name(name: str, memory_gib: float | None = None) -> GpuInfo:
    """Look a GPU up by name ("A100-SXM4-80GB", "H100", "NVIDIA L4"); memory from the name's "80GB" if any."""
    cc: tuple[int, int] | None = None
    table_mem: float | None = None
    upper = name.upper()
    for key, key_cc, key_mem in GPU_TABLE:
        if key.upper() in upper:
            cc, table_mem = key_cc, key_mem
            break
    if memory_gib is None:
        m = re.search(r"(\d+)\s*GB", upper)
        memory_gib = float(m.group(1)) if m else table_mem
    return GpuInfo(name=name, compute_capability=cc, memory_gib=memory_gib)


NVIDIA_SMI_QUERY = ("--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits")


def parse_nvidia_smi(text: str) -> GpuInfo | None:
    """Parse `nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader,nounits`.

    One line per GPU ("NVIDIA H100 80GB HBM3, 9.0, 81559"); memory is in MiB. Mixed GPUs are reported by
    the first one (a build targets one GPU type).
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    parts = [p.strip() for p in lines[0].rsplit(",", 2)]
    if len(parts) != 3:
        return None
    name, cc_text, mem_text = parts
    cc: tuple[int, int] | None
    try:
        major, minor = cc_text.split(".")
        cc = (int(major), int(minor))
    except ValueError:
        cc = gpu_from_name(name).compute_capability
    try:
        mem_gib: float | None = round(float(mem_text) / 1024.0, 1)
    except ValueError:
        mem_gib = gpu_from_name(name).memory_gib
    return GpuInfo(name=name, compute_capability=cc, memory_gib=mem_gib, count=len(lines))


def detect_gpu(timeout_s: float = 10.0) -> GpuInfo | None:
    """Ask nvidia-smi, when there is one; None on a machine without a (working) NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else None


def _fact(report: Any, *names: str) -> Any:
    for name in names:
        value = report.get(name) if isinstance(report, Mapping) else getattr(report, name, None)
        if value is not None:
            return value
    return None


def shape_from_report(report: Any) -> ModelShape | None:
    """Model facts from `mentallama_build.check.check_checkpoint`'s report (object or dict).

    None when a fact is missing."""
    facts = _fact(report, "facts")
    source = facts if facts is not None else report
    values = {
        "hidden_size": _fact(source, "hidden_size"),
        "num_layers": _fact(source, "num_layers", "num_hidden_layers", "layers"),
        "num_heads": _fact(source, "num_heads", "num_attention_heads", "heads"),
        "num_kv_heads": _fact(source, "num_kv_heads", "num_key_value_heads", "kv_heads"),
        # check.py reports the tokenizer's size as vocab_size and config.json's as embedding_rows; memory
        # follows the embedding.
        "vocab_size": _fact(source, "embedding_rows", "vocab_size"),
        "context_length": _fact(source, "context_length", "max_position_embeddings", "max_seq_len"),
        "parameter_count": _fact(source, "parameter_count", "param_count", "num_parameters", "n_params"),
    }
    if values["num_kv_heads"] is None:
        values["num_kv_heads"] = values["num_heads"]
    if any(v is None for v in values.values()):
        return None
    return ModelShape(**{k: int(v) for k, v in values.items()})


@dataclass(frozen=True)
class BuildConfig:
    """Every option of one engine build. Paths are as the user gave them (printed in commands verbatim)."""

    checkpoint_dir: Path
    output_dir: Path
    preset: str = "7b"
    dtype: str = "float16"
    quantization: str = "none"
    tp: int = 1
    pp: int = 1
    max_batch_size: int = 64
    max_input_len: int = 3072
    max_seq_len: int = 4096
    max_num_tokens: int = 8192
    max_beam_width: int = 1
    workers: int = 1
    kv_cache_free_gpu_mem_fraction: float = 0.9
    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    trtllm_examples_dir: Path = Path("TensorRT-LLM/examples")
    work_dir: Path | None = None
    calib_size: int | None = None
    calib_dataset: str | None = None
    container_image: str | None = None

    @classmethod
    def from_preset(
        cls, preset: str, checkpoint_dir: Path, output_dir: Path, **overrides: Any
    ) -> BuildConfig:
        """Preset defaults, then every override that is not None."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        base = cls(checkpoint_dir, output_dir, preset=preset, tp=p.tp, max_batch_size=p.max_batch_size)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def uses_modelopt(self) -> bool:
        return self.quantization in MODELOPT_QUANTIZATIONS

    @property
    def kv_cache_dtype(self) -> str:
        """fp8 quantisation also quantises the KV cache (`--kv_cache_dtype fp8`); the others keep dtype."""
        return "fp8" if self.quantization == "fp8" else self.dtype

    @property
    def trtllm_checkpoint_dir(self) -> Path:
        """Where conversion writes the TensorRT-LLM checkpoint that trtllm-build reads."""
        if self.work_dir is not None:
            return self.work_dir
        return self.output_dir.parent / f"{self.output_dir.name}.tllm_checkpoint"

    def as_record(self) -> dict[str, Any]:
        """JSON-safe view for the manifest."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Path) else value
        out["world_size"] = self.world_size
        out["kv_cache_dtype"] = self.kv_cache_dtype
        out["trtllm_checkpoint_dir"] = str(self.trtllm_checkpoint_dir)
        return out


@dataclass
class Validation:
    """Problems refuse the build; warnings are printed and the build goes on."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _cc_below(gpu: GpuInfo | None, minimum: tuple[int, int]) -> bool | None:
    if gpu is None or gpu.compute_capability is None:
        return None
    return gpu.compute_capability < minimum


def validate(cfg: BuildConfig, shape: ModelShape, gpu: GpuInfo | None) -> Validation:
    """Check the option combination against the model and the GPU. Pure; returns all findings."""
    v = Validation()
    p, w = v.problems, v.warnings

    if cfg.dtype not in DTYPES:
        p.append(f"--dtype {cfg.dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    if cfg.quantization not in QUANTIZATIONS:
        p.append(f"--quantization {cfg.quantization!r} is unknown; choose one of {', '.join(QUANTIZATIONS)}")

    # Parallelism: TP splits attention heads (and KV heads) across GPUs, PP splits layers.
    if cfg.tp < 1 or cfg.pp < 1:
        p.append(f"--tp and --pp must be >= 1 (got tp={cfg.tp}, pp={cfg.pp})")
    else:
        if shape.num_heads % cfg.tp:
            p.append(
                f"--tp {cfg.tp} does not divide the model's {shape.num_heads} attention heads; "
                f"use a divisor of {shape.num_heads} (e.g. 1, 2, 4, 8)"
            )
        elif shape.num_kv_heads % cfg.tp:
            p.append(f"--tp {cfg.tp} does not divide the model's {shape.num_kv_heads} KV heads")
        if shape.num_layers % cfg.pp:
            p.append(f"--pp {cfg.pp} does not divide the model's {shape.num_layers} layers")
    if cfg.workers < 1:
        p.append(f"--workers must be >= 1 (got {cfg.workers})")
    elif cfg.workers > cfg.world_size:
        w.append(f"--workers {cfg.workers} exceeds tp*pp={cfg.world_size}; only {cfg.world_size} are used")

    # Lengths: the engine cannot attend past the model's trained context (LLaMA-2: 4096).
    if cfg.max_input_len < 1 or cfg.max_seq_len < 2:
        p.append("--max-input-len must be >= 1 and --max-seq-len >= 2")
    if cfg.max_input_len >= cfg.max_seq_len:
        p.append(
            f"--max-input-len {cfg.max_input_len} must be smaller than --max-seq-len {cfg.max_seq_len} "
            "(max_seq_len counts prompt plus generated tokens)"
        )
    if cfg.max_seq_len > shape.context_length:
        p.append(
            f"--max-seq-len {cfg.max_seq_len} exceeds the model's context length {shape.context_length} "
            "(max_position_embeddings)"
        )
    if cfg.max_batch_size < 1:
        p.append(f"--max-batch-size must be >= 1 (got {cfg.max_batch_size})")
    if cfg.max_num_tokens < 1:
        p.append(f"--max-num-tokens must be >= 1 (got {cfg.max_num_tokens})")
    elif cfg.max_num_tokens < cfg.max_input_len:
        w.append(
            f"--max-num-tokens {cfg.max_num_tokens} < --max-input-len {cfg.max_input_len}: long prompts only "
            "run with enable_chunked_context=true in the Triton profile (the default)"
        )
    if not 1 <= cfg.max_beam_width <= MAX_BEAM_WIDTH_LIMIT:
        p.append(f"--max-beam-width must be in 1..{MAX_BEAM_WIDTH_LIMIT} (got {cfg.max_beam_width})")
    elif cfg.max_beam_width > 1:
        w.append(
            f"--max-beam-width {cfg.max_beam_width}: every running beam-search request holds that many sequences of "
            "KV cache (the plan counts them); requests of another beam width wait until the running ones finish "
            "(the executor reconfigures between widths)"
        )
    if cfg.dtype == "float32":
        w.append(
            "float32 engine (exactness checks on small models): built without context FMHA, so serve it with "
            "enable_chunked_context=false and enable_kv_cache_reuse=false (--set ...); 2x the memory of float16"
        )
    if not 0.0 < cfg.kv_cache_free_gpu_mem_fraction < 1.0:
        p.append(
            f"--kv-cache-free-gpu-mem-fraction must be in (0, 1) (got {cfg.kv_cache_free_gpu_mem_fraction})"
        )

    # GPU features.
    gpu_label = gpu.name if gpu is not None else "unknown GPU"
    if cfg.quantization == "fp8":
        below = _cc_below(gpu, FP8_MIN_CC)
        if below:
            p.append(
                f"--quantization fp8 needs compute capability >= 8.9 (Ada or Hopper); {gpu_label} has "
                f"{gpu.cc_text if gpu else 'unknown'}. Use int8_wo or int4_awq on this GPU"
            )
        elif below is None:
            w.append("fp8 needs compute capability >= 8.9 (Ada/Hopper); GPU unknown: pass --gpu-name")
    if cfg.dtype == "bfloat16" and _cc_below(gpu, BF16_MIN_CC):
        p.append(f"--dtype bfloat16 needs compute capability >= 8.0 (Ampere); {gpu_label} has {gpu.cc_text}")
    if cfg.quantization == "int4_awq" and _cc_below(gpu, AWQ_MIN_CC):
        p.append(f"--quantization int4_awq needs compute capability >= 8.0; {gpu_label} has {gpu.cc_text}")
    if gpu is not None and gpu.count is not None and gpu.count < cfg.world_size:
        w.append(
            f"this machine shows {gpu.count} GPU(s) but tp*pp={cfg.world_size}: building works, "
            f"serving needs {cfg.world_size} GPUs"
        )
    if cfg.uses_modelopt and not cfg.calib_dataset:
        w.append(
            "ModelOpt calibration downloads the cnn_dailymail dataset from the Hugging Face hub; on a node "
            "without internet pass --calib-dataset with a local copy"
        )
    if cfg.calib_size is not None and not cfg.uses_modelopt:
        w.append("--calib-size only applies to fp8 and int4_awq (ModelOpt calibration); ignored")
    return v
