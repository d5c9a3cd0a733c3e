"""`mentallama-serve --profile trtllm --render` checks the engine like a launch does (issue 12).

A repository rendered ahead (deploy/) must agree with its engine: the build manifest is verified against the
tokenizer and max_input_len / max_output_len are fitted to the engine's limits, as `start_trtllm_server`
does; an engine that fails the check is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_build.engine_config import PRESETS, BuildConfig, gpu_from_name
from mentallama_build.manifest import write_manifest
from mentallama_server.launch import cli


def engine_with_manifest(tmp_path: Path, checkpoint: Path, *, max_input_len: int, max_seq_len: int) -> Path:
    engine = tmp_path / "engine"
    engine.mkdir()
    build = {
        "max_batch_size": 64, "max_input_len": max_input_len, "max_seq_len": max_seq_len, "max_num_tokens": 8192,
        "max_beam_width": 1, "plugin_config": {"use_paged_context_fmha": True},
    }  # fmt: skip
    mapping = {"world_size": 1, "tp_size": 1, "pp_size": 1}
    config = {"version": "1.2.1", "pretrained_config": {"mapping": mapping}, "build_config": build}
    (engine / "config.json").write_text(json.dumps(config))
    (engine / "rank0.engine").write_bytes(b"engine bytes")
    cfg = BuildConfig.from_preset("7b", checkpoint, engine)
    gpu = gpu_from_name("H100")
    write_manifest(engine, cfg, gpu=gpu, shape=PRESETS["7b"].shape, versions={"tensorrt_llm": "1.2.1"})
    return engine


def parameter(config: str, key: str) -> str:
    start = config.index(f'key: "{key}"')
    return config[start:].split('string_value: "', 1)[1].split('"', 1)[0]


def render(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli.app, ["--profile", "trtllm", "--render", str(tmp_path / "repo"), *args])


def test_render_fits_limits_to_the_engine(tmp_path: Path, tiny_checkpoint: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    engine = engine_with_manifest(tmp_path, checkpoint, max_input_len=1024, max_seq_len=1536)
    result = render(tmp_path, "--engine", str(engine), "--tokenizer", str(checkpoint))
    assert result.exit_code == 0, result.output
    pre = (tmp_path / "repo" / "preprocessing" / "config.pbtxt").read_text()
    # The profile's defaults (3072 in + 1024 out) do not fit: the same fit as a launch.
    assert (parameter(pre, "max_input_len"), parameter(pre, "max_output_len")) == ("512", "1024")


def test_render_refuses_an_engine_that_fails_the_manifest_check(tmp_path: Path, tiny_checkpoint: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    engine = engine_with_manifest(tmp_path, checkpoint, max_input_len=1024, max_seq_len=1536)
    (engine / "rank0.engine").write_bytes(b"rebuilt, manifest not")
    result = render(tmp_path, "--engine", str(engine), "--tokenizer", str(checkpoint))
    assert result.exit_code == 1
    assert "refusing to serve this engine" in result.output and "rank0.engine" in result.output
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("args", [[], ["--engine", "/nowhere"]])
def test_render_needs_the_engine_and_its_tokenizer(tmp_path: Path, args: list[str]) -> None:
    result = render(tmp_path, *args)
    assert result.exit_code == 1 and "needs --engine DIR and --tokenizer DIR" in result.output
