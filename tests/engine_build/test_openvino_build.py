"""`mentallama-build openvino` and the engine cache of `mentallama-serve`: checks before work, the capacity
plan, reuse keyed by checkpoint content and options, and refusal of engines that do not match."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mentallama_build.engine_config import PRESETS
from mentallama_build.manifest import MANIFEST_NAME
from mentallama_build.openvino_build import (
    EngineBuildError,
    OpenVinoOptions,
    build_engine,
    cached_engine_dir,
    capacity_text,
    ensure_engine,
    option_problems,
    verify_engine,
)

BUILD = [sys.executable, "-m", "mentallama_build.cli"]
SERVE = [sys.executable, "-c", "from mentallama_server.launch.cli import main; main()"]


def test_capacity_plan_of_llama2_7b_matches_hand_arithmetic() -> None:
    shape = PRESETS["7b"].shape
    text = capacity_text(shape, OpenVinoOptions("int8"), kv_precision="f16", kv_blocks=1024)
    # 2 (K, V) x 32 layers x 32 kv heads x 128 head dim x 2 bytes
    assert "524,288 bytes per token" in text
    # 1024 blocks x 32 tokens = 32,768 tokens x 0.5 MiB = 16 GiB; 16 sequences of 2048 tokens
    assert "32,768 tokens, 16,384.0 MiB: 16 sequences of 2048 tokens" in text
    # int8 weights: ~6.7e9 parameters at ~1 byte each, about 6.3 GiB
    weights_mib = float(text.split("~")[1].split(" MiB")[0].replace(",", ""))
    assert 6_300 < weights_mib < 6_500
    fp16_mib = float(capacity_text(shape, OpenVinoOptions("fp16"), kv_precision="f16", kv_blocks=1).split("~")[1]
                     .split(" MiB")[0].replace(",", ""))  # fmt: skip
    assert fp16_mib == pytest.approx(shape.parameter_count * 2 / 2**20, rel=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (OpenVinoOptions("int3"), "--weight-format"),
        (OpenVinoOptions("int8", group_size=64), "int4 only"),
        (OpenVinoOptions("int4", group_size=0), "--group-size must be positive"),
        (OpenVinoOptions("int4", group_size=96), "does not divide the hidden size 4096"),
        (OpenVinoOptions("int4", ratio=1.5), "--ratio"),
    ],
)
def test_bad_options_are_refused_naming_the_flag(options: OpenVinoOptions, message: str) -> None:
    problems = option_problems(options, PRESETS["7b"].shape)
    assert any(message in p for p in problems), problems


def test_dry_run_checks_and_plans_without_writing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine"
    result = subprocess.run(
        [*BUILD, "openvino", "--checkpoint", str(tiny_checkpoint), "--output", str(out), "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "bytes per token" in result.stderr and "dry run" in result.stderr
    assert not out.exists()


def test_invalid_checkpoint_is_refused_before_any_export(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(EngineBuildError, match="not servable"):
        build_engine(tmp_path / "ckpt", tmp_path / "engine", OpenVinoOptions("int8"), say=lambda _: None)
    assert not (tmp_path / "engine").exists()


def test_engine_is_reused_and_rebuilt_when_the_checkpoint_changes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny-copy"
    shutil.copytree(tiny_checkpoint, checkpoint)
    messages: list[str] = []
    first = ensure_engine(checkpoint, OpenVinoOptions("int8"), say=messages.append)
    assert any("building" in m for m in messages)
    manifest = json.loads((first / MANIFEST_NAME).read_text())
    assert manifest["engine"] == "openvino" and manifest["options"]["weight_format"] == "int8"
    assert manifest["tools"]["openvino"] and manifest["tools"]["optimum_intel"]
    assert manifest["checkpoint"]["sha256"]
    built_at = (first / "openvino_model.bin").stat().st_mtime_ns

    messages.clear()
    assert ensure_engine(checkpoint, OpenVinoOptions("int8"), say=messages.append) == first  # reused
    assert messages == [] and (first / "openvino_model.bin").stat().st_mtime_ns == built_at
    assert cached_engine_dir(checkpoint, OpenVinoOptions("fp16")) != first  # other options, other engine

    generation = checkpoint / "generation_config.json"
    generation.write_text(json.dumps({**json.loads(generation.read_text()), "temperature": 0.5}))
    second = ensure_engine(checkpoint, OpenVinoOptions("int8"), say=messages.append)
    assert second != first and any("building" in m for m in messages)
    assert verify_engine(first, checkpoint)  # the old engine no longer matches the changed checkpoint
    shutil.rmtree(first, ignore_errors=True)
    shutil.rmtree(second, ignore_errors=True)


def test_engine_that_does_not_match_its_manifest_is_refused(tiny_engine: Path, tmp_path: Path) -> None:
    assert verify_engine(tiny_engine) == []
    tampered = tmp_path / "engine"
    shutil.copytree(tiny_engine, tampered)
    tokenizer = tampered / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text().replace("</s>", "<eos>"))
    problems = verify_engine(tampered)
    assert any("tokenizer_config.json changed after the build" in p for p in problems)
    (tampered / MANIFEST_NAME).unlink()
    assert any("no mentallama_build_manifest.json" in p for p in verify_engine(tampered))


def test_serve_refuses_a_prebuilt_engine_of_another_checkpoint(
    tiny_engine: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    (other / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    result = subprocess.run(
        [*SERVE, "--model", str(other), "--engine", str(tiny_engine), "--render", str(tmp_path / "repo")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "built from another checkpoint" in result.stderr
    ok = subprocess.run(
        [*SERVE, "--engine", str(tiny_engine), "--render", str(tmp_path / "repo")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    config = (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert f'string_value: "{tiny_engine}"' in config


def test_build_cli_has_short_help_and_version() -> None:
    version = subprocess.run([*BUILD, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("mentallama-build ")
    short = subprocess.run([*BUILD, "openvino", "-h"], capture_output=True, text=True, timeout=60)
    assert short.returncode == 0 and "--weight-format" in short.stdout
