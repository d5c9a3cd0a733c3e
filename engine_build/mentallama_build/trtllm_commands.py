"""The exact command lines of an engine build, and a runner that streams them.

Flags are those of TensorRT-LLM 1.2.1 (checked against the sources of that line):
- `examples/models/core/llama/convert_checkpoint.py` (argparse in the script): `--model_dir --output_dir
  --dtype --tp_size --pp_size --workers --use_weight_only --weight_only_precision {int8,int4}`;
- `examples/quantization/quantize.py` (ModelOpt): `--model_dir --output_dir --dtype --qformat {fp8,int4_awq}
  --kv_cache_dtype fp8 --awq_block_size --calib_size --calib_dataset --tp_size --pp_size`;
- `trtllm-build` (`tensorrt_llm/commands/build.py` + `tensorrt_llm/plugin/plugin.py` cli_plugin_args).

Every engine is built for in-flight batching: paged KV cache (`--kv_cache_type paged`), the GPT attention
plugin, packed input (`--remove_input_padding enable`), fused context attention with paged context FMHA
(`--use_paged_context_fmha enable`, which chunked context and KV-cache reuse need at run time), and
`--multiple_profiles enable` (more TensorRT profiles: longer build, faster runtime; docs "Useful Build-Time
Flags"). GEMM plugin: `auto` (the model dtype) for fp16/bf16 and weight-only, as the LLaMA example README
does; `disable` for fp8, which the "FP8 Quantization" tuning guide recommends (TensorRT picks its FP8 GEMMs),
with `--use_fp8_context_fmha enable`. float32 engines (exactness checks) get neither fused context attention nor
paged context FMHA: TensorRT-LLM has those kernels for fp16/bf16/fp8 only, so such an engine is served without
chunked context and KV-cache reuse.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mentallama_build.engine_config import BuildConfig

__all__ = [
    "CONVERT_SCRIPT",
    "PYTHON",
    "QUANTIZE_SCRIPT",
    "TRTLLM_BUILD",
    "Step",
    "StepFailed",
    "build_steps",
    "conversion_step",
    "engine_step",
    "run_steps",
]

PYTHON = "python3"
TRTLLM_BUILD = "trtllm-build"
CONVERT_SCRIPT = Path("models/core/llama/convert_checkpoint.py")
QUANTIZE_SCRIPT = Path("quantization/quantize.py")

# Calibration sizes of the LLaMA README examples: 512 samples for fp8, 32 for AWQ.
DEFAULT_CALIB_SIZE = {"fp8": 512, "int4_awq": 32}
AWQ_BLOCK_SIZE = 128
_WEIGHT_ONLY_PRECISION = {"int8_wo": "int8", "int4_wo": "int4"}


@dataclass(frozen=True)
class Step:
    """One command of the build: a name for messages and its argv."""

    name: str
    argv: tuple[str, ...]

    def shell(self) -> str:
        """The command as one copy-pasteable shell line."""
        return shlex.join(self.argv)


class StepFailed(RuntimeError):
    """A build step exited non-zero or ran out of time."""

    def __init__(self, step: Step, returncode: int | None, reason: str) -> None:
        super().__init__(f"step '{step.name}' {reason}")
        self.step = step
        self.returncode = returncode


def conversion_step(cfg: BuildConfig) -> Step:
    """HF checkpoint -> TensorRT-LLM checkpoint (sharded for tp x pp), quantised on the way if asked."""
    common = [
        "--model_dir", str(cfg.checkpoint_dir),
        "--output_dir", str(cfg.trtllm_checkpoint_dir),
        "--dtype", cfg.dtype,
        "--tp_size", str(cfg.tp),
        "--pp_size", str(cfg.pp),
    ]  # fmt: skip
    if cfg.uses_modelopt:
        script = cfg.trtllm_examples_dir / QUANTIZE_SCRIPT
        argv = [PYTHON, str(script), *common, "--qformat", cfg.quantization]
        if cfg.quantization == "fp8":
            argv += ["--kv_cache_dtype", "fp8"]
        else:
            argv += ["--awq_block_size", str(AWQ_BLOCK_SIZE)]
        argv += ["--calib_size", str(cfg.calib_size or DEFAULT_CALIB_SIZE[cfg.quantization])]
        if cfg.calib_dataset:
            argv += ["--calib_dataset", cfg.calib_dataset]
        return Step(f"quantize ({cfg.quantization}, ModelOpt)", tuple(argv))
    script = cfg.trtllm_examples_dir / CONVERT_SCRIPT
    argv = [PYTHON, str(script), *common, "--workers", str(min(cfg.workers, cfg.world_size))]
    if cfg.quantization in _WEIGHT_ONLY_PRECISION:
        argv += ["--use_weight_only", "--weight_only_precision", _WEIGHT_ONLY_PRECISION[cfg.quantization]]
    return Step("convert checkpoint", tuple(argv))


def engine_step(cfg: BuildConfig) -> Step:
    """TensorRT-LLM checkpoint -> engine files (rank<i>.engine + config.json) in the output directory."""
    gemm_plugin = "disable" if cfg.quantization == "fp8" else "auto"
    fused = "disable" if cfg.dtype == "float32" else "enable"
    argv = [
        TRTLLM_BUILD,
        "--checkpoint_dir", str(cfg.trtllm_checkpoint_dir),
        "--output_dir", str(cfg.output_dir),
        "--max_batch_size", str(cfg.max_batch_size),
        "--max_input_len", str(cfg.max_input_len),
        "--max_seq_len", str(cfg.max_seq_len),
        "--max_num_tokens", str(cfg.max_num_tokens),
        "--max_beam_width", str(cfg.max_beam_width),
        "--kv_cache_type", "paged",
        "--gpt_attention_plugin", "auto",
        "--gemm_plugin", gemm_plugin,
        "--remove_input_padding", "enable",
        "--context_fmha", fused,
        "--use_paged_context_fmha", fused,
        "--multiple_profiles", "enable",
        "--workers", str(min(cfg.workers, cfg.world_size)),
    ]  # fmt: skip
    if cfg.quantization == "fp8":
        argv += ["--use_fp8_context_fmha", "enable"]
    return Step("trtllm-build", tuple(argv))


def build_steps(cfg: BuildConfig) -> list[Step]:
    """The steps in order: conversion (or quantisation), then trtllm-build."""
    return [conversion_step(cfg), engine_step(cfg)]


def _pump(stream: TextIO, emit: Callable[[str], None], log: TextIO | None) -> None:
    for line in stream:
        emit(line.rstrip("\n"))
        if log is not None:
            log.write(line)
            log.flush()


def run_steps(
    steps: Sequence[Step],
    emit: Callable[[str], None],
    *,
    log_path: Path | None = None,
    timeout_s: float | None = None,
    cwd: Path | None = None,
) -> None:
    """Run steps in order, streaming each line of their output as it comes; stop at the first failure.

    stdout and stderr are merged (TensorRT-LLM logs to both) and also appended to `log_path`. A step that
    outlives `timeout_s` is terminated (then killed) and reported as failed. Raises StepFailed.
    """
    log = log_path.open("a", encoding="utf-8") if log_path is not None else None
    try:
        for index, step in enumerate(steps, 1):
            emit(f"==> [{index}/{len(steps)}] {step.name}: {step.shell()}")
            if log is not None:
                log.write(f"==> {step.shell()}\n")
            try:
                proc = subprocess.Popen(
                    step.argv,
                    cwd=cwd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    errors="replace",
                )
            except OSError as exc:
                raise StepFailed(step, None, f"could not start: {exc}") from exc
            assert proc.stdout is not None
            reader = threading.Thread(target=_pump, args=(proc.stdout, emit, log), daemon=True)
            reader.start()
            started = time.monotonic()
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                reader.join(timeout=5)
                raise StepFailed(step, None, f"timed out after {timeout_s:.0f} s") from None
            reader.join(timeout=30)
            if rc != 0:
                raise StepFailed(step, rc, f"failed with exit code {rc}")
            emit(f"==> {step.name} done in {time.monotonic() - started:.0f} s")
    finally:
        if log is not None:
            log.close()
