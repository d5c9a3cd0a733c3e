"""Glue of `mentallama-serve --profile trtllm`: the same shared models in front of TensorRT-LLM.

Runs inside the NGC `tritonserver:26.0x-trtllm-python-py3` container (TensorRT-LLM 1.2.1), whose
tritonserver has the `tensorrtllm` backend. Rendering (`--render`) and starting a server both check the
engine's build manifest against the tokenizer and fit the profile to the engine's limits first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mentallama_server.launch.launcher import LaunchError, ServerOptions, TritonProcess, endpoint_args, launch
from mentallama_server.launch.paths import package_roots
from mentallama_server.launch.render import render_repository
from mentallama_server.launch.serve_cpu import new_run_dir
from mentallama_server.launch.trtllm_profile import (
    ProfileError,
    TrtllmProfile,
    engine_problems,
    fit_to_engine,
    load_profile,
    mpi_command,
    read_engine_limits,
)

CONTAINER_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"


def container_python_path() -> list[str]:
    """Our package roots only: the container's own Python (3.12) brings numpy, transformers, torch."""
    return package_roots()


def render_trtllm(profile: TrtllmProfile, output: Path, python_path: list[str] | None = None) -> Path:
    values = profile.template_values()
    values["python_path"] = os.pathsep.join(python_path or container_python_path())
    return render_repository("trtllm", values, output)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def checked_profile(profile: TrtllmProfile, warn: Callable[[str], None] = _warn) -> tuple[TrtllmProfile, int]:
    """The profile fitted to the engine (and naming the tokenizer.json serving reads), and the engine's world
    size; refuses a mismatched engine. An engine without our build manifest is served after the checks that can
    still be made, with a warning (trtllm_engine_checks)."""
    from mentallama_server.launch.trtllm_engine_checks import check_engine

    if not profile.engine_dir or not profile.tokenizer_dir:
        raise LaunchError("the trtllm profile needs --engine DIR and --tokenizer DIR")
    engine_check = check_engine(profile.engine_dir, profile.tokenizer_dir)
    problems = list(engine_check.problems)
    if engine_check.tokenizer_dir is not None:
        profile = replace(profile, tokenizer_dir=str(engine_check.tokenizer_dir))
    try:
        limits = read_engine_limits(profile.engine_dir)
    except ProfileError as exc:
        problems.append(str(exc))
    else:
        profile = fit_to_engine(profile, limits)
        problems += engine_problems(profile, limits)
    if problems:
        raise LaunchError("refusing to serve this engine:\n" + "\n".join(f"  - {p}" for p in problems))
    for warning in engine_check.warnings:
        warn(warning)
    return profile, limits.world_size


def render_checked(profile: TrtllmProfile, output: Path) -> Path:
    """`--render`: the same manifest check and limit fitting as a launch, so that a repository rendered
    ahead (deploy/) agrees with its engine; refuses without --engine and --tokenizer."""
    fitted, _ = checked_profile(profile)
    return render_trtllm(fitted, output)


def gpu_metrics_on(args: list[str]) -> list[str]:
    """Triton's GPU metrics (memory used and total per GPU) on: the launcher turns them off for the CPU profile,
    where there is no GPU to report; on the GPU they are the memory figures operators and gpu-smoke read."""
    return [arg if arg != "--allow-gpu-metrics=false" else "--allow-gpu-metrics=true" for arg in args]


def start_trtllm_server(
    profile: TrtllmProfile,
    opts: ServerOptions,
    run_dir: Path,
    *,
    tritonserver: str = CONTAINER_TRITONSERVER,
    ready_timeout_s: float = 1800,
) -> TritonProcess:
    """One tritonserver rank per GPU (tp x pp) under MPI, as TensorRT-LLM's launcher does."""
    fitted, world_size = checked_profile(profile)
    repository = render_trtllm(fitted, run_dir / "model_repository")
    argv = mpi_command(
        world_size,
        repository,
        tritonserver=tritonserver,
        grpc_port=opts.grpc_port,
        http_port=opts.http_port,
        metrics_port=opts.metrics_port,
        shm_prefix=opts.shm_prefix,
        shm_pool_mib=opts.shm_pool_mib,
        rank0_args=gpu_metrics_on(endpoint_args(opts)),
    )
    return launch(argv, dict(os.environ), run_dir, opts, ready_timeout_s)


@dataclass(frozen=True)
class TrtllmLaunch:
    """What `mentallama-serve --profile trtllm` serves: a profile naming the engine and its tokenizer."""

    profile: TrtllmProfile
    tritonserver: str = CONTAINER_TRITONSERVER
    ready_timeout_s: float = 1800.0
    """--ready-timeout's default: loading a 13B engine onto its GPUs and allocating the KV cache takes minutes."""

    def render(self, output: Path) -> Path:
        return render_checked(self.profile, output)

    def start(self, opts: ServerOptions, run_dir: Path | None, ready_timeout_s: float) -> TritonProcess:
        return start_trtllm_server(self.profile, opts, run_dir or new_run_dir(), tritonserver=self.tritonserver,
                                   ready_timeout_s=ready_timeout_s)  # fmt: skip


@dataclass
class TrtllmOptions:
    """The `mentallama-serve` flags of the trtllm profile, one per field (help in the metadata, read by
    `mentallama.cli.options`); the engine folder is the --engine flag both profiles share."""

    tokenizer: Path | None = field(default=None, metadata={"help": "the engine's HF checkpoint (tokenizer)"})
    profile_file: Path | None = field(default=None, metadata={"help": "settings file (.toml or .json)"})
    overrides: list[str] | None = field(
        default=None, metadata={"help": "override a setting, key=value", "flags": ("--set",)}
    )
    tritonserver: str = field(default=CONTAINER_TRITONSERVER, metadata={"help": "the container's tritonserver"})

    def launch(self, engine: Path | None) -> TrtllmLaunch:
        """The profile file with the overrides and paths applied; a bad file or override is a LaunchError."""
        paths = {key: str(value) for key, value in (("engine_dir", engine), ("tokenizer_dir", self.tokenizer)) if value}
        try:
            profile = load_profile(self.profile_file, self.overrides or ()).with_overrides(paths)
        except ProfileError as exc:
            raise LaunchError(str(exc)) from None
        return TrtllmLaunch(profile, self.tritonserver)
