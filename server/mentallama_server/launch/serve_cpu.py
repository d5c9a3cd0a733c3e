"""Glue of `mentallama-serve`: resolve the checkpoint and its OpenVINO engine, render the profile, run tritonserver."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mentallama import locations
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import ServerOptions, TritonProcess, bundled_server, launch
from mentallama_server.launch.paths import SHIPPED_CHECKPOINTS
from mentallama_server.launch.render import render_repository

if TYPE_CHECKING:
    from collections.abc import Callable

BUILTIN_MODELS = ("tiny", "bench")  # generated with random weights on first use
SHIPPED_MODELS = {"nano": "mentallama-nano"}  # trained, shipped in the server package (checkpoints/)
DEFAULT_CHECKPOINT = "nano"


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(model: str) -> Path:
    """`tiny`/`bench` build the embedded checkpoint when missing, `nano` is the shipped trained model; anything
    else is a folder path."""
    from mentallama_build.check import check_checkpoint
    from mentallama_build.tiny import ensure_checkpoint

    if model in BUILTIN_MODELS:
        path = ensure_checkpoint(model)
    elif model in SHIPPED_MODELS:
        path = SHIPPED_CHECKPOINTS / SHIPPED_MODELS[model]
    else:
        path = Path(model).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint folder {path} does not exist (use nano, tiny, bench or a LLaMA-2 HF folder)"
        )
    report = check_checkpoint(path)
    if report.problems:
        raise CheckpointError(f"checkpoint {path} is not servable:\n" + "\n".join(f"  - {p}" for p in report.problems))
    return path


def context_length(checkpoint: Path) -> int:
    config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    return int(config["max_position_embeddings"])


def fit_to_context(settings: CpuSettings, context: int) -> CpuSettings:
    """Keep prompt + output within the model's context window, shrinking both limits in proportion when
    they do not fit (a 512-token model gets 341 + 171, not 1 + 511)."""
    total = settings.max_input_len + settings.max_output_len
    if total <= context:
        return settings
    max_input = max(1, context * settings.max_input_len // total)
    return replace(settings, max_input_len=max_input, max_output_len=context - max_input)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_engine(
    checkpoint: Path | None, settings: CpuSettings, engine: Path | None = None, say: Callable[[str], None] = _stderr
) -> tuple[Path, CpuSettings]:
    """The OpenVINO engine folder to serve and the settings with `auto` values decided.

    With `engine`, a prebuilt folder is checked against its manifest (and against `checkpoint` when given);
    otherwise the checkpoint's engine is built on first use and reused afterwards (artifacts/engines/)."""
    from mentallama_build.kv_cache import config_shape, engine_kv_precision, kv_plan
    from mentallama_build.openvino_build import EngineBuildError, OpenVinoOptions, ensure_engine, verify_engine

    problems = settings.problems()
    if problems:
        raise CheckpointError("; ".join(problems))
    if engine is not None:
        engine = Path(engine).expanduser().resolve()
        problems = verify_engine(engine, checkpoint)
        if problems:
            raise CheckpointError(f"engine {engine} cannot be served:\n" + "\n".join(f"  - {p}" for p in problems))
        source = engine
    else:
        if checkpoint is None:
            raise CheckpointError("give a checkpoint (--model) or a prebuilt engine (--engine)")
        source = checkpoint
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    try:
        planned = settings.resolved(dtype)  # before a build: the KV precision predicted from the weight format
        if engine is None:
            engine = ensure_engine(
                checkpoint, OpenVinoOptions(planned.weight_format), say=say, kv_blocks=settings.cache_num_blocks,
                inference_precision=planned.inference_precision, kv_precision=planned.kv_cache_precision,
            )  # fmt: skip
        # The engine's own runtime option decides `auto`; the rendered config names the precision it resolves to.
        settings = settings.resolved(dtype, engine_kv_precision(engine), engine_known=True)
    except EngineBuildError as exc:
        raise CheckpointError(str(exc)) from None
    except ValueError as exc:  # precisions the CPU plugin refuses together
        raise CheckpointError(str(exc)) from None
    plan = kv_plan(config_shape(config), settings.kv_cache_precision, settings.cache_num_blocks)
    say(f"engine: {settings.inference_precision} inference; {plan.lines(config_shape(config))[0]}")
    return engine, settings


def cpu_values(engine: Path, settings: CpuSettings) -> dict[str, str]:
    values = settings.template_values()
    values.update(engine_dir=str(engine), tokenizer_dir=str(engine))
    return values


def render_cpu(checkpoint: Path | None, settings: CpuSettings, output: Path, engine: Path | None = None) -> Path:
    engine, settings = resolve_engine(checkpoint, settings, engine)
    settings = fit_to_context(settings, context_length(engine))
    return render_repository("cpu", cpu_values(engine, settings), output)


def new_run_dir() -> Path:
    runs = locations.runs_dir()
    run = runs / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    run.mkdir(parents=True, mode=0o700)  # the rendered configs, logs and the front door's keys
    return run


def start_cpu_server(
    model: str | None,
    settings: CpuSettings,
    opts: ServerOptions,
    run_dir: Path | None = None,
    ready_timeout_s: float = 300,
    engine: Path | None = None,
) -> TritonProcess:
    """Render and start the CPU profile; returns once the server reports ready."""
    checkpoint = None if model is None else resolve_checkpoint(model)
    run_dir = run_dir or new_run_dir()
    repository = render_cpu(checkpoint, settings, run_dir / "model_repository", engine)
    argv, env = bundled_server(repository, run_dir, opts)
    return launch(argv, env, run_dir, opts, ready_timeout_s)


@dataclass(frozen=True)
class CpuLaunch:
    """What `mentallama-serve --profile cpu` serves: a checkpoint (name or folder), a prebuilt engine, or both (the
    engine is then checked against the checkpoint); neither means the shipped checkpoint."""

    checkpoint: str | None
    engine: Path | None
    settings: CpuSettings
    ready_timeout_s: float = 300.0
    """--ready-timeout's default: the first start of a checkpoint builds its engine (minutes for 7B)."""

    @property
    def checkpoint_name(self) -> str | None:
        return self.checkpoint or (DEFAULT_CHECKPOINT if self.engine is None else None)

    def render(self, output: Path) -> Path:
        """`--render`: write the repository a launch would serve to `output`; nothing is started."""
        name = self.checkpoint_name
        return render_cpu(None if name is None else resolve_checkpoint(name), self.settings, output, self.engine)

    def start(self, opts: ServerOptions, run_dir: Path | None, ready_timeout_s: float) -> TritonProcess:
        return start_cpu_server(self.checkpoint_name, self.settings, opts, run_dir, ready_timeout_s, self.engine)
