"""`mentallama-build engine`: plan, check and run a TensorRT-LLM 1.2.1 engine build for MentaLLaMA-chat.

Order of work, so that nothing long starts before everything cheap has been checked:
checkpoint check -> option validation -> capacity plan -> the exact commands -> (unless --dry-run) tool
preflight (the scripts, trtllm-build, a GPU, and the container's tensorrt_llm against the examples' release) ->
tokenizer.json converted from tokenizer.model when the checkpoint has none -> conversion/quantisation ->
trtllm-build -> build manifest beside the engine.

`EngineRequest` holds every input, one flag per field; `plan_engine` does the checks and `run_engine_build`
the whole command, so the Typer command only hands them the parsed request.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import typer

from mentallama import locations
from mentallama.cli.options import OptionGroup, flag, with_option_groups
from mentallama_build.capacity import (
    DEFAULT_RUNTIME_OVERHEAD_GIB,
    CapacityPlan,
    format_plan,
    plan_for_build,
    plan_problems,
)
from mentallama_build.engine_config import (
    DEFAULT_CONTAINER_IMAGE,
    DTYPES,
    PRESETS,
    QUANTIZATIONS,
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
from mentallama_build.fast_tokenizer import TokenizerConversionError, TokenizerPlan, convert_tokenizer, plan_tokenizer
from mentallama_build.manifest import write_manifest
from mentallama_build.trtllm_commands import TRTLLM_BUILD, Step, StepFailed, build_steps, run_steps
from mentallama_build.trtllm_versions import version_findings

__all__ = ["EngineRequest", "engine", "plan_engine", "run_engine_build"]

EXIT_REFUSED = 1
EXIT_TOOLS_MISSING = 2
EXIT_STEP_FAILED = 3

PLAN_PANEL = "Capacity plan"
RUN_PANEL = "Running the build"


@dataclass(frozen=True)
class EngineRequest:
    """Every input of `mentallama-build engine`, one flag per field (`mentallama.cli.options`): the build's
    options, named as in `BuildConfig` (None takes the preset's value), the capacity plan's assumptions, and how
    the build runs."""

    checkpoint_dir: Path = flag(
        help="Hugging Face checkpoint folder (MentaLLaMA-chat-7B/13B).", flags=("--checkpoint",)
    )
    output_dir: Path = flag(help="Engine output folder (rank<i>.engine, config.json, manifest).", flags=("--output",))
    preset: str = flag("7b", "Model size defaults; 13b defaults to --tp 2.", choices=tuple(PRESETS))
    dtype: str = flag("float16", "Activation/weight dtype of unquantised parts.", choices=DTYPES)
    quantization: str = flag(
        "none", "none | int8_wo / int4_wo (weight-only) | fp8 (+fp8 KV cache, cc>=8.9) | int4_awq.",
        choices=QUANTIZATIONS,
    )  # fmt: skip
    tp: int | None = flag(None, "Tensor parallel size (default: preset).")
    pp: int = flag(1, "Pipeline parallel size.")
    max_batch_size: int | None = flag(None, "Engine max batch size (default: preset).")
    max_input_len: int = flag(3072, "Longest prompt in tokens.")
    max_seq_len: int = flag(4096, "Longest prompt + output in tokens (<= model context).")
    max_num_tokens: int = flag(8192, "Tokens per engine iteration (batched, unpadded).")
    max_beam_width: int = flag(1, "Widest beam search the engine serves (1: sampling/greedy only).")
    workers: int = flag(1, "Parallel conversion/build workers (one GPU each).")
    gpu_memory_gib: float | None = flag(None, "GPU memory for the plan (default: GPU).", panel=PLAN_PANEL)
    kv_cache_free_gpu_mem_fraction: float = flag(
        0.9, "Share of free GPU memory the runtime gives the KV cache (plan).", panel=PLAN_PANEL
    )
    gpu_name: str | None = flag(
        None, "Target GPU, e.g. H100, A100-SXM4-80GB, L4 (default: nvidia-smi).", panel=PLAN_PANEL
    )
    plan_input_len: int = flag(1024, "Prompt length for the concurrency plan.", panel=PLAN_PANEL)
    plan_output_len: int = flag(256, "Output length for the concurrency plan.", panel=PLAN_PANEL)
    runtime_overhead_gib: float = flag(
        DEFAULT_RUNTIME_OVERHEAD_GIB, "Assumed non-weight, non-KV GPU memory per GPU (plan).", panel=PLAN_PANEL
    )
    trtllm_examples_dir: Path = flag(
        Path("TensorRT-LLM/examples"), f"examples/ folder of TensorRT-LLM v{TRTLLM_VERSION}.",
        flags=("--trtllm-examples",), envvar="TRTLLM_EXAMPLES_DIR",
    )  # fmt: skip
    work_dir: Path | None = flag(None, "TensorRT-LLM checkpoint folder (default: <output>.tllm_checkpoint).")
    calib_size: int | None = flag(None, "Calibration samples (fp8: 512, int4_awq: 32).")
    calib_dataset: str | None = flag(None, "Local calibration dataset folder for ModelOpt (no hub access).")
    container_image: str | None = flag(
        None, f"Print how to run the build in an image, e.g. {DEFAULT_CONTAINER_IMAGE}.", panel=RUN_PANEL
    )
    dry_run: bool = flag(False, "Print plan and commands; run nothing.", flags=("--dry-run",), panel=RUN_PANEL)
    force: bool = flag(False, "Overwrite an existing engine in --output.", flags=("--force",), panel=RUN_PANEL)
    step_timeout_s: float = flag(6 * 3600.0, "Time limit per build step, seconds.", panel=RUN_PANEL)

    def build_config(self) -> BuildConfig:
        """The preset's defaults, then every `BuildConfig` field this request names and sets (not None)."""
        named = {f.name for f in fields(BuildConfig)} & {f.name for f in fields(self)}
        overrides = {name: getattr(self, name) for name in named - {"preset", "checkpoint_dir", "output_dir"}}
        return BuildConfig.from_preset(self.preset, self.checkpoint_dir, self.output_dir, **overrides)


# The `BuildConfig` fields that no flag sets, and why (tests/engine_build/test_engine_cli_options.py checks that
# every other field is one of EngineRequest's).
BUILD_CONFIG_WITHOUT_FLAG: dict[str, str] = {}


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
        "--max-beam-width", str(cfg.max_beam_width), "--workers", str(cfg.workers),
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


NGC_VENV = "ngc-venv"
"""The virtual environment our tools run from inside the NGC image: `<cache>/ngc-venv` (deploy/README.md)."""


def container_hint(cfg: BuildConfig, image: str) -> str:
    """How to run this build inside the NGC container (docker and Apptainer), mounting paths 1:1, from the
    virtual environment that deploy/container/install_tools.sh puts our tools in (once per image and checkout)."""
    cfg = replace(
        cfg,
        checkpoint_dir=cfg.checkpoint_dir.resolve(),
        output_dir=cfg.output_dir.resolve(),
        trtllm_examples_dir=cfg.trtllm_examples_dir.resolve(),
        work_dir=None if cfg.work_dir is None else cfg.work_dir.resolve(),
    )
    checkout = locations.checkout_root() or Path.cwd()
    venv = (locations.cache_dir() / NGC_VENV).resolve()
    mounts = _mounts(
        [cfg.checkpoint_dir, cfg.output_dir.parent, cfg.trtllm_checkpoint_dir.parent,
         cfg.trtllm_examples_dir, checkout, venv.parent]
    )  # fmt: skip
    build = [str(venv / "bin" / "mentallama-build"), "engine", *cli_args(cfg)]
    docker = ["docker", "run", "--rm", "--gpus", "all", "--shm-size=2g", "--ulimit", "memlock=-1",
              "--ulimit", "stack=67108864", "-w", str(checkout)]  # fmt: skip
    for m in mounts:
        docker += ["-v", f"{m}:{m}"]
    apptainer = ["apptainer", "exec", "--nv", "--cleanenv", "--pwd", str(checkout)]
    for m in mounts:
        apptainer += ["--bind", f"{m}:{m}"]
    install = ["bash", str(checkout / "deploy" / "container" / "install_tools.sh"), "--venv", str(venv)]
    return "\n".join(
        [
            f"Run inside the NGC container (TensorRT-LLM {TRTLLM_VERSION}); the examples folder must come",
            f"from the same release as the container's tensorrt_llm (the build checks): git clone --branch "
            f"v{TRTLLM_VERSION} --depth 1 https://github.com/NVIDIA/TensorRT-LLM",
            "Once per image: our tools and their dependencies in a virtual environment beside the checkout (the",
            "image stays read-only; deploy/README.md, 'Our tools in the NGC image'):",
            "    " + shlex.join([*install, "--image", image, "--runtime", "docker"]),
            "    " + shlex.join([*install, "--image", f"docker://{image}", "--runtime", "apptainer"]),
            "  docker:",
            "    " + shlex.join([*docker, image, *build]),
            "  apptainer:",
            "    " + shlex.join([*apptainer, f"docker://{image}", *build]),
        ]
    )


def _preflight(cfg: BuildConfig, target: GpuInfo | None, gpu: GpuInfo | None) -> tuple[list[str], list[str]]:
    """(missing, warnings): what must exist before a real build starts: the example script, trtllm-build, a GPU
    of the target's architecture (a TensorRT engine only runs on the compute capability it was built on), and
    examples of the container's own TensorRT-LLM release."""
    missing: list[str] = []
    warnings: list[str] = []
    script = build_steps(cfg)[0].argv[1]
    if not Path(script).is_file():
        missing.append(
            f"{script} not found: pass --trtllm-examples pointing at the examples/ folder of TensorRT-LLM "
            f"v{TRTLLM_VERSION} (or set TRTLLM_EXAMPLES_DIR)"
        )
    else:
        versions = version_findings(cfg.trtllm_examples_dir)
        missing += versions.problems
        warnings += versions.warnings
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
    return missing, warnings


@dataclass(frozen=True)
class EnginePlan:
    """Everything decided before a step runs: the build config, the target GPU, the model shape, the capacity
    plan, the commands, and the findings (problems refuse the build, warnings are printed)."""

    cfg: BuildConfig
    gpu: GpuInfo | None
    shape: ModelShape
    capacity: CapacityPlan
    steps: list[Step]
    findings: Validation
    tokenizer: TokenizerPlan


def plan_engine(request: EngineRequest) -> EnginePlan:
    """Check the checkpoint, the options and the capacity plan; every problem at once, nothing run."""
    cfg = request.build_config()
    gpu = _resolve_gpu(request.gpu_name, request.gpu_memory_gib)
    findings = Validation()
    if not cfg.checkpoint_dir.is_dir():
        findings.problems.append(f"checkpoint folder {cfg.checkpoint_dir} does not exist")
        shape = PRESETS[cfg.preset].shape
    else:
        shape = _checkpoint_shape(cfg.checkpoint_dir, cfg.preset, findings)
    checked = validate(cfg, shape, gpu)
    findings.problems += checked.problems + _output_problems(cfg, request.force)
    findings.warnings += checked.warnings
    capacity = plan_for_build(cfg, shape, gpu.memory_gib if gpu else None, request.plan_input_len,
                              request.plan_output_len, request.runtime_overhead_gib)  # fmt: skip
    plan_p, plan_w = plan_problems(capacity, cfg.max_seq_len)
    findings.problems += plan_p
    findings.warnings += plan_w
    tokenizer = plan_tokenizer(cfg.checkpoint_dir, cfg.output_dir)
    return EnginePlan(cfg, gpu, shape, capacity, build_steps(cfg), findings, tokenizer)


def describe_plan(plan: EnginePlan) -> str:
    """The header, the capacity plan, the exact commands and (with --container-image) how to run them there."""
    gpu = plan.gpu
    gpu_text = "none detected" if gpu is None else f"{gpu.name} (cc {gpu.cc_text}, {gpu.memory_gib} GiB)"
    lines = [f"TensorRT-LLM {TRTLLM_VERSION} engine build, preset {plan.cfg.preset}, GPU: {gpu_text}",
             format_plan(plan.capacity), "\nCommands:"]  # fmt: skip
    lines += [f"  # {step.name}\n  {step.shell()}" for step in plan.steps]
    lines.append(plan.tokenizer.describe())
    if plan.cfg.container_image:
        lines.append("\n" + container_hint(plan.cfg, plan.cfg.container_image))
    return "\n".join(lines)


def run_engine_build(request: EngineRequest, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """`mentallama-build engine`: plan and print; then refuse, stop (dry run), or check the tools and run every
    step, writing the build manifest last. Returns the exit code."""
    plan = plan_engine(request)
    out(describe_plan(plan))
    for warning in plan.findings.warnings:
        err(f"warning: {warning}")
    if plan.findings.problems:
        err("\nRefusing to build:\n" + "\n".join(f"  - {problem}" for problem in plan.findings.problems))
        return EXIT_REFUSED
    if request.dry_run:
        out("\n(dry run: nothing executed)")
        return 0
    build_gpu = detect_gpu()
    missing, preflight_warnings = _preflight(plan.cfg, plan.gpu, build_gpu)
    for warning in preflight_warnings:
        err(f"warning: {warning}")
    if missing:
        err("\n".join(f"error: {item}" for item in missing))
        return EXIT_TOOLS_MISSING
    cfg = plan.cfg
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    if plan.tokenizer.converted:
        try:
            convert_tokenizer(cfg.checkpoint_dir, plan.tokenizer.folder)
        except TokenizerConversionError as exc:
            err(f"error: {exc}")
            return EXIT_STEP_FAILED
        out(f"==> tokenizer.json written to {plan.tokenizer.folder}")
    log_path = cfg.output_dir / "mentallama_build.log"
    try:
        run_steps(plan.steps, out, log_path=log_path, timeout_s=request.step_timeout_s)
    except StepFailed as exc:
        err(f"error: {exc}; see the output above and {log_path}")
        return EXIT_STEP_FAILED
    path = write_manifest(cfg.output_dir, cfg, gpu=build_gpu, shape=plan.shape,
                          tokenizer=plan.tokenizer.record(cfg.output_dir))  # fmt: skip
    out(f"\nEngine written to {cfg.output_dir}; manifest {path.name}.")
    return 0


@with_option_groups(request=OptionGroup())
def engine(request: EngineRequest) -> None:
    """Build a TensorRT-LLM engine (in-flight batching, paged KV cache) for MentaLLaMA-chat 7B/13B."""
    code = run_engine_build(request, out=typer.echo, err=lambda message: typer.echo(message, err=True))
    if code:
        raise typer.Exit(code)
