"""`mentallama-build engine`: plan, check and run a TensorRT-LLM 1.2.1 engine build for MentaLLaMA-chat.

Order of work, so that nothing long starts before everything cheap has been checked:
checkpoint check -> option validation -> capacity plan -> the exact commands -> (unless --dry-run) tool
preflight -> conversion/quantisation -> trtllm-build -> build manifest beside the engine.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mentallama_build.capacity import DEFAULT_RUNTIME_OVERHEAD_GIB, format_plan, plan_for_build, plan_problems
from mentallama_build.engine_config import (
    DEFAULT_CONTAINER_IMAGE,
    PRESETS,
    TRTLLM_VERSION,
    BuildConfig,
    GpuInfo,
    ModelShape,
    Validation,
    detect_gpu,
    gpu_from_name,
    shape_from_report,
    validate,
)
from mentallama_build.manifest import write_manifest
from mentallama_build.trtllm_commands import TRTLLM_BUILD, StepFailed, build_steps, run_steps

__all__ = ["engine"]

EXIT_REFUSED = 1
EXIT_TOOLS_MISSING = 2
EXIT_STEP_FAILED = 3
REPO_ROOT = Path(__file__).resolve().parents[1]


class PresetName(str, Enum):
    b7 = "7b"
    b13 = "13b"


class Dtype(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"


class Quantization(str, Enum):
    none = "none"
    int8_wo = "int8_wo"
    int4_wo = "int4_wo"
    fp8 = "fp8"
    int4_awq = "int4_awq"


def _checkpoint_shape(checkpoint: Path, preset: str, validation: Validation) -> ModelShape:
    """Run the checkpoint check; its problems refuse the build. Falls back to the preset's LLaMA-2 shape."""
    try:
        from mentallama_build.check import check_checkpoint
    except ImportError:
        validation.warnings.append(
            "mentallama_build.check unavailable: checkpoint not checked, preset shape used"
        )
        return PRESETS[preset].shape
    report = check_checkpoint(checkpoint)
    problems = report.get("problems") if isinstance(report, dict) else getattr(report, "problems", [])
    validation.problems.extend(f"checkpoint: {p}" for p in problems or [])
    shape = shape_from_report(report)
    if shape is None:
        validation.warnings.append("checkpoint check reported no model shape: preset shape used for the plan")
        return PRESETS[preset].shape
    expected = PRESETS[preset].shape
    if (shape.num_layers, shape.hidden_size) != (expected.num_layers, expected.hidden_size):
        validation.warnings.append(
            f"checkpoint has {shape.num_layers} layers / hidden {shape.hidden_size}, preset {preset} expects "
            f"{expected.num_layers} / {expected.hidden_size}: defaults may not suit it"
        )
    return shape


def _resolve_gpu(gpu_name: str | None, gpu_memory_gib: float | None) -> GpuInfo | None:
    if gpu_name:
        return gpu_from_name(gpu_name, gpu_memory_gib)
    gpu = detect_gpu()
    if gpu is not None and gpu_memory_gib is not None:
        gpu = GpuInfo(gpu.name, gpu.compute_capability, gpu_memory_gib, gpu.count)
    return gpu


def _output_problems(cfg: BuildConfig, force: bool) -> list[str]:
    existing = list(cfg.output_dir.glob("rank*.engine")) if cfg.output_dir.is_dir() else []
    if existing and not force:
        return [f"{cfg.output_dir} already holds engine files ({existing[0].name}, ...); pass --force"]
    if cfg.checkpoint_dir.resolve() == cfg.output_dir.resolve():
        return ["--output must not be the checkpoint folder"]
    return []


def cli_args(cfg: BuildConfig) -> list[str]:
    """The `mentallama-build engine` arguments that reproduce `cfg` (for the container hint)."""
    args = [
        "--checkpoint", str(cfg.checkpoint_dir), "--output", str(cfg.output_dir),
        "--preset", cfg.preset, "--dtype", cfg.dtype, "--quantization", cfg.quantization,
        "--tp", str(cfg.tp), "--pp", str(cfg.pp),
        "--max-batch-size", str(cfg.max_batch_size), "--max-input-len", str(cfg.max_input_len),
        "--max-seq-len", str(cfg.max_seq_len), "--max-num-tokens", str(cfg.max_num_tokens),
        "--workers", str(cfg.workers),
        "--kv-cache-free-gpu-mem-fraction", f"{cfg.kv_cache_free_gpu_mem_fraction:g}",
        "--trtllm-examples", str(cfg.trtllm_examples_dir),
    ]  # fmt: skip
    if cfg.work_dir is not None:
        args += ["--work-dir", str(cfg.work_dir)]
    if cfg.calib_size is not None:
        args += ["--calib-size", str(cfg.calib_size)]
    if cfg.calib_dataset:
        args += ["--calib-dataset", cfg.calib_dataset]
    return args


def _mounts(paths: list[Path]) -> list[str]:
    """Absolute folders to bind 1:1, without those already inside another."""
    out: list[Path] = []
    for path in sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts)):
        if not any(path == m or m in path.parents for m in out):
            out.append(path)
    return sorted(str(p) for p in out)


def container_hint(cfg: BuildConfig, image: str) -> str:
    """How to run this build inside the NGC container (docker and Apptainer), mounting paths 1:1."""
    cfg = replace(
        cfg,
        checkpoint_dir=cfg.checkpoint_dir.resolve(),
        output_dir=cfg.output_dir.resolve(),
        trtllm_examples_dir=cfg.trtllm_examples_dir.resolve(),
        work_dir=None if cfg.work_dir is None else cfg.work_dir.resolve(),
    )
    mounts = _mounts(
        [cfg.checkpoint_dir, cfg.output_dir.parent, cfg.trtllm_checkpoint_dir.parent,
         cfg.trtllm_examples_dir, REPO_ROOT]
    )  # fmt: skip
    inner = (
        f"pip install --no-deps -e {shlex.quote(str(REPO_ROOT))} && pip install typer==0.20.0 && "
        + shlex.join(["mentallama-build", "engine", *cli_args(cfg)])
    )
    docker = ["docker", "run", "--rm", "--gpus", "all", "--shm-size=2g", "--ulimit", "memlock=-1",
              "--ulimit", "stack=67108864", "-w", str(REPO_ROOT)]  # fmt: skip
    for m in mounts:
        docker += ["-v", f"{m}:{m}"]
    apptainer = ["apptainer", "exec", "--nv", "--cleanenv", "--pwd", str(REPO_ROOT)]
    for m in mounts:
        apptainer += ["--bind", f"{m}:{m}"]
    return "\n".join(
        [
            f"Run inside the NGC container (TensorRT-LLM {TRTLLM_VERSION}); the examples folder must come",
            f"from the same release: git clone --branch v{TRTLLM_VERSION} --depth 1 "
            "https://github.com/NVIDIA/TensorRT-LLM",
            "  docker:",
            "    " + shlex.join([*docker, image, "bash", "-lc", inner]),
            "  apptainer:",
            "    " + shlex.join([*apptainer, f"docker://{image}", "bash", "-lc", inner]),
        ]
    )


def _preflight(cfg: BuildConfig, target: GpuInfo | None, gpu: GpuInfo | None) -> list[str]:
    """What must exist before a real build starts: the example script, trtllm-build and a GPU of the
    target's architecture (a TensorRT engine only runs on the compute capability it was built on)."""
    missing: list[str] = []
    script = build_steps(cfg)[0].argv[1]
    if not Path(script).is_file():
        missing.append(
            f"{script} not found: pass --trtllm-examples pointing at the examples/ folder of TensorRT-LLM "
            f"v{TRTLLM_VERSION} (or set TRTLLM_EXAMPLES_DIR)"
        )
    if shutil.which(TRTLLM_BUILD) is None:
        missing.append(
            f"{TRTLLM_BUILD} not on PATH: run inside {DEFAULT_CONTAINER_IMAGE} (see --container-image)"
        )
    if gpu is None:
        missing.append("no NVIDIA GPU visible (nvidia-smi): engines are built on the GPU type they run on")
    elif target is not None and target.compute_capability not in (None, gpu.compute_capability):
        missing.append(
            f"this machine has {gpu.name} (cc {gpu.cc_text}) but --gpu-name {target.name} is cc "
            f"{target.cc_text}: build on the GPU type that will serve the engine"
        )
    return missing


def engine(
    checkpoint: Annotated[
        Path, typer.Option(help="Hugging Face checkpoint folder (MentaLLaMA-chat-7B/13B).")
    ],
    output: Annotated[
        Path, typer.Option(help="Engine output folder (rank<i>.engine, config.json, manifest).")
    ],
    preset: Annotated[
        PresetName, typer.Option(help="Model size defaults; 13b defaults to --tp 2.")
    ] = PresetName.b7,
    dtype: Annotated[
        Dtype, typer.Option(help="Activation/weight dtype of unquantised parts.")
    ] = Dtype.float16,
    quantization: Annotated[
        Quantization,
        typer.Option(
            help="none | int8_wo / int4_wo (weight-only) | fp8 (+fp8 KV cache, cc>=8.9) | int4_awq."
        ),
    ] = Quantization.none,
    tp: Annotated[int | None, typer.Option(help="Tensor parallel size (default: preset).")] = None,
    pp: Annotated[int, typer.Option(help="Pipeline parallel size.")] = 1,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Engine max batch size (default: preset).")
    ] = None,
    max_input_len: Annotated[int, typer.Option(help="Longest prompt in tokens.")] = 3072,
    max_seq_len: Annotated[
        int, typer.Option(help="Longest prompt + output in tokens (<= model context).")
    ] = 4096,
    max_num_tokens: Annotated[
        int, typer.Option(help="Tokens per engine iteration (batched, unpadded).")
    ] = 8192,
    workers: Annotated[int, typer.Option(help="Parallel conversion/build workers (one GPU each).")] = 1,
    gpu_memory_gib: Annotated[
        float | None, typer.Option(help="GPU memory for the plan (default: GPU).")
    ] = None,
    kv_cache_free_gpu_mem_fraction: Annotated[
        float, typer.Option(help="Share of free GPU memory the runtime gives the KV cache (plan).")
    ] = 0.9,
    gpu_name: Annotated[
        str | None, typer.Option(help="Target GPU, e.g. H100, A100-SXM4-80GB, L4 (default: nvidia-smi).")
    ] = None,
    plan_input_len: Annotated[int, typer.Option(help="Prompt length for the concurrency plan.")] = 1024,
    plan_output_len: Annotated[int, typer.Option(help="Output length for the concurrency plan.")] = 256,
    runtime_overhead_gib: Annotated[
        float, typer.Option(help="Assumed non-weight, non-KV GPU memory per GPU (plan).")
    ] = DEFAULT_RUNTIME_OVERHEAD_GIB,
    trtllm_examples: Annotated[
        Path,
        typer.Option(
            envvar="TRTLLM_EXAMPLES_DIR", help=f"examples/ folder of TensorRT-LLM v{TRTLLM_VERSION}."
        ),
    ] = Path("TensorRT-LLM/examples"),
    work_dir: Annotated[
        Path | None, typer.Option(help="TensorRT-LLM checkpoint folder (default: <output>.tllm_checkpoint).")
    ] = None,
    calib_size: Annotated[
        int | None, typer.Option(help="Calibration samples (fp8: 512, int4_awq: 32).")
    ] = None,
    calib_dataset: Annotated[
        str | None, typer.Option(help="Local calibration dataset folder for ModelOpt (no hub access).")
    ] = None,
    container_image: Annotated[
        str | None,
        typer.Option(help=f"Print how to run the build in an image, e.g. {DEFAULT_CONTAINER_IMAGE}."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print plan and commands; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing engine in --output.")] = False,
    step_timeout_s: Annotated[float, typer.Option(help="Time limit per build step, seconds.")] = 6 * 3600.0,
) -> None:
    """Build a TensorRT-LLM engine (in-flight batching, paged KV cache) for MentaLLaMA-chat 7B/13B."""
    overrides: dict[str, Any] = {
        "dtype": dtype.value, "quantization": quantization.value, "tp": tp, "pp": pp,
        "max_batch_size": max_batch_size, "max_input_len": max_input_len, "max_seq_len": max_seq_len,
        "max_num_tokens": max_num_tokens, "workers": workers,
        "kv_cache_free_gpu_mem_fraction": kv_cache_free_gpu_mem_fraction, "gpu_name": gpu_name,
        "gpu_memory_gib": gpu_memory_gib, "trtllm_examples_dir": trtllm_examples, "work_dir": work_dir,
        "calib_size": calib_size, "calib_dataset": calib_dataset, "container_image": container_image,
    }  # fmt: skip
    cfg = BuildConfig.from_preset(preset.value, checkpoint, output, **overrides)
    gpu = _resolve_gpu(gpu_name, gpu_memory_gib)

    findings = Validation()
    if not checkpoint.is_dir():
        findings.problems.append(f"checkpoint folder {checkpoint} does not exist")
        shape = PRESETS[cfg.preset].shape
    else:
        shape = _checkpoint_shape(checkpoint, cfg.preset, findings)
    checked = validate(cfg, shape, gpu)
    findings.problems += checked.problems + _output_problems(cfg, force)
    findings.warnings += checked.warnings

    plan = plan_for_build(
        cfg, shape, gpu.memory_gib if gpu else None, plan_input_len, plan_output_len, runtime_overhead_gib
    )
    plan_p, plan_w = plan_problems(plan, cfg.max_seq_len)
    findings.problems += plan_p
    findings.warnings += plan_w

    gpu_text = "none detected" if gpu is None else f"{gpu.name} (cc {gpu.cc_text}, {gpu.memory_gib} GiB)"
    typer.echo(f"TensorRT-LLM {TRTLLM_VERSION} engine build, preset {cfg.preset}, GPU: {gpu_text}")
    typer.echo(format_plan(plan))
    typer.echo("\nCommands:")
    steps = build_steps(cfg)
    for step in steps:
        typer.echo(f"  # {step.name}\n  {step.shell()}")
    if container_image:
        typer.echo("\n" + container_hint(cfg, container_image))
    for warning in findings.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if findings.problems:
        typer.echo("\nRefusing to build:", err=True)
        for problem in findings.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(EXIT_REFUSED)
    if dry_run:
        typer.echo("\n(dry run: nothing executed)")
        return

    build_gpu = detect_gpu()
    missing = _preflight(cfg, gpu, build_gpu)
    if missing:
        for item in missing:
            typer.echo(f"error: {item}", err=True)
        raise typer.Exit(EXIT_TOOLS_MISSING)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.output_dir / "mentallama_build.log"
    try:
        run_steps(steps, typer.echo, log_path=log_path, timeout_s=step_timeout_s)
    except StepFailed as exc:
        typer.echo(f"error: {exc}; see the output above and {log_path}", err=True)
        raise typer.Exit(EXIT_STEP_FAILED) from None
    path = write_manifest(cfg.output_dir, cfg, gpu=build_gpu, shape=shape)
    typer.echo(f"\nEngine written to {cfg.output_dir}; manifest {path.name}.")
