"""Glue of `mentallama-serve`: resolve the checkpoint, render the profile, run tritonserver."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from mentallama_server.launcher import ServerOptions, TritonProcess, bundled_server, launch
from mentallama_server.paths import RUNS
from mentallama_server.render import render_repository
from mentallama_server.settings import CpuSettings

BUILTIN_MODELS = ("tiny", "bench")


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(model: str) -> Path:
    """`tiny`/`bench` build the embedded checkpoint when missing; anything else is a folder path."""
    from engine_build.check import check_checkpoint
    from engine_build.tiny import ensure_checkpoint

    path = ensure_checkpoint(model) if model in BUILTIN_MODELS else Path(model).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist (use tiny, bench or a LLaMA-2 HF folder)")
    report = check_checkpoint(path)
    if report.problems:
        raise CheckpointError(f"checkpoint {path} is not servable:\n" + "\n".join(f"  - {p}" for p in report.problems))
    return path


def context_length(checkpoint: Path) -> int:
    from engine_build.check import check_checkpoint

    return int(check_checkpoint(checkpoint).context_length)


def fit_to_context(settings: CpuSettings, context: int) -> CpuSettings:
    """Keep prompt + output within the model's context window."""
    max_output = min(settings.max_output_len, context - 1)
    max_input = min(settings.max_input_len, context - max_output)
    return replace(settings, max_input_len=max_input, max_output_len=max_output)


def cpu_values(checkpoint: Path, settings: CpuSettings) -> dict[str, str]:
    values = settings.template_values()
    values.update(checkpoint_dir=str(checkpoint), tokenizer_dir=str(checkpoint))
    return values


def render_cpu(checkpoint: Path, settings: CpuSettings, output: Path) -> Path:
    settings = fit_to_context(settings, context_length(checkpoint))
    return render_repository("cpu", cpu_values(checkpoint, settings), output)


def new_run_dir() -> Path:
    run = RUNS / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    run.mkdir(parents=True)
    return run


def start_cpu_server(
    model: str,
    settings: CpuSettings,
    opts: ServerOptions,
    run_dir: Path | None = None,
    ready_timeout_s: float = 300,
) -> TritonProcess:
    """Render and start the CPU profile; returns once the server reports ready."""
    checkpoint = resolve_checkpoint(model)
    run_dir = run_dir or new_run_dir()
    repository = render_cpu(checkpoint, settings, run_dir / "model_repository")
    argv, env = bundled_server(repository, run_dir, opts)
    return launch(argv, env, run_dir, opts, ready_timeout_s)
