"""`mentallama-build engine` takes its flags from `EngineRequest` (issue 13), and the option helper both CLIs use
(`mentallama.cli.options`) refuses a field that is neither a flag nor says why: no flag lost, defaults
from the dataclass, every `BuildConfig` field set by a flag or excused, the values parsed into the request."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
from typer.testing import CliRunner

from mentallama.cli.options import OptionGroup, field_default, flag_fields, with_option_groups
from mentallama_build import engine_cli
from mentallama_build.cli import app
from mentallama_build.engine_cli import BUILD_CONFIG_WITHOUT_FLAG, EngineRequest
from mentallama_build.engine_config import PRESETS, BuildConfig

ENGINE = typer.main.get_command(app).commands["engine"]  # type: ignore[attr-defined]
OPTIONS = {p.name: p for p in ENGINE.params if isinstance(p, click.Option)}

# The flags the command had before its options came from EngineRequest, in order.
FLAGS_BEFORE = [
    "--checkpoint", "--output", "--preset", "--dtype", "--quantization", "--tp", "--pp", "--max-batch-size",
    "--max-input-len", "--max-seq-len", "--max-num-tokens", "--max-beam-width", "--workers", "--gpu-memory-gib",
    "--kv-cache-free-gpu-mem-fraction", "--gpu-name", "--plan-input-len", "--plan-output-len",
    "--runtime-overhead-gib", "--trtllm-examples", "--work-dir", "--calib-size", "--calib-dataset",
    "--container-image", "--dry-run", "--force", "--step-timeout-s",
]


def test_the_flags_are_those_of_before():
    assert [p.opts[0] for p in ENGINE.params if p.name != "help"] == FLAGS_BEFORE
    switches = {p.opts[0]: p.secondary_opts for p in ENGINE.params if getattr(p, "is_flag", False)}
    assert switches == {"--dry-run": [], "--force": []}  # no --no-dry-run / --no-force
    assert OPTIONS["trtllm_examples_dir"].envvar == "TRTLLM_EXAMPLES_DIR"
    assert OPTIONS["checkpoint_dir"].required and OPTIONS["output_dir"].required


def test_flag_defaults_are_the_dataclass_defaults():
    for f in flag_fields(EngineRequest):
        default = field_default(f)
        if default is inspect.Parameter.empty:
            assert OPTIONS[f.name].required, f.name
        else:
            assert OPTIONS[f.name].default == default, f.name


def test_every_build_config_field_has_a_flag_or_a_reason():
    request = {f.name for f in fields(EngineRequest)}
    without = {f.name for f in fields(BuildConfig)} - request
    assert without == set(BUILD_CONFIG_WITHOUT_FLAG)
    assert all(reason.strip() for reason in BUILD_CONFIG_WITHOUT_FLAG.values())


def test_build_config_takes_the_preset_then_every_given_value(tmp_path: Path):
    request = EngineRequest(tmp_path / "ckpt", tmp_path / "out", preset="13b")
    cfg = request.build_config()
    assert (cfg.tp, cfg.max_batch_size) == (PRESETS["13b"].tp, PRESETS["13b"].max_batch_size)
    given = {"dtype": "bfloat16", "quantization": "fp8", "tp": 4, "pp": 2, "max_batch_size": 8, "max_input_len": 100,
             "max_seq_len": 200, "max_num_tokens": 300, "max_beam_width": 2, "workers": 2,
             "kv_cache_free_gpu_mem_fraction": 0.5,
             "gpu_name": "L4", "gpu_memory_gib": 20.0, "trtllm_examples_dir": tmp_path / "ex",
             "work_dir": tmp_path / "w", "calib_size": 9, "calib_dataset": "d", "container_image": "img"}  # fmt: skip
    shared = {f.name for f in fields(BuildConfig)} & {f.name for f in fields(EngineRequest)}
    assert set(given) == shared - {"preset", "checkpoint_dir", "output_dir"}  # a new shared field needs a case here
    cfg = EngineRequest(tmp_path / "ckpt", tmp_path / "out", **given).build_config()
    assert {name: getattr(cfg, name) for name in given} == given


def test_the_command_parses_into_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: list[EngineRequest] = []
    monkeypatch.setattr(engine_cli, "run_engine_build", lambda request, out, err: seen.append(request) or 0)
    result = CliRunner().invoke(app, ["engine", "--checkpoint", "c", "--output", "o", "--preset", "13b", "--tp", "4",
                                      "--trtllm-examples", "ex", "--dry-run", "--plan-input-len", "64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen == [EngineRequest(Path("c"), Path("o"), preset="13b", tp=4, trtllm_examples_dir=Path("ex"),
                                  dry_run=True, plan_input_len=64)]  # fmt: skip


def test_choices_are_checked_while_parsing(tmp_path: Path):
    result = CliRunner().invoke(app, ["engine", "--checkpoint", "c", "--output", "o", "--preset", "70b"])
    assert result.exit_code == 2 and "70b" in result.output


def test_help_panels():
    panels = {OPTIONS[f.name].rich_help_panel for f in flag_fields(EngineRequest)}  # type: ignore[attr-defined]
    assert panels == {None, engine_cli.PLAN_PANEL, engine_cli.RUN_PANEL}
    text = CliRunner().invoke(app, ["engine", "--help"], env={"COLUMNS": "120"}).output
    assert engine_cli.PLAN_PANEL in text and engine_cli.RUN_PANEL in text


# ---- The option helper ------------------------------------------------------------------------------------


@dataclass
class Documented:
    size: int = field(default=1, metadata={"help": "a size"})
    internal: int = field(default=2, metadata={"not_a_flag": "set by the code, not by users"})


@dataclass
class Forgotten:
    size: int = field(default=1, metadata={"help": "a size"})
    forgotten: int = 2


def test_a_field_that_is_neither_a_flag_nor_says_why_is_refused():
    def command(settings: Forgotten) -> None: ...

    with pytest.raises(TypeError, match=r"Forgotten\.forgotten has no flag"):
        with_option_groups(settings=OptionGroup())(command)


def test_two_groups_may_not_define_the_same_flag():
    def command(first: Documented, second: Documented) -> None: ...

    with pytest.raises(TypeError, match="defined twice: size"):
        with_option_groups(first=OptionGroup(), second=OptionGroup())(command)


def test_the_command_gets_the_dataclass():
    got: list[Any] = []

    @with_option_groups(settings=OptionGroup("Panel", help_prefix="p: "))
    def command(name: str = "x", *, settings: Documented) -> None:
        got.append((name, settings))

    demo = typer.Typer()
    demo.command()(command)
    result = CliRunner().invoke(demo, ["--size", "5", "--name", "y"])
    assert result.exit_code == 0, result.output
    assert got == [("y", Documented(size=5))]
    params = {p.name: p for p in typer.main.get_command(demo).params}
    assert "internal" not in params and params["size"].help == "p: a size"
