"""`mentallama-build engine` outside a dry run (issue 21): the preflight refuses a container whose tensorrt_llm is
not the examples' release, naming both and the fix; a build whose checkpoint has only tokenizer.model converts it
once into the engine folder and records it; `--max-beam-width` and float32 reach the commands.

No GPU and no TensorRT-LLM here, so what the preflight reads is staged for real: a `tensorrt_llm` distribution's
metadata on sys.path (what importlib.metadata reads in the container), a TensorRT-LLM checkout with its
`tensorrt_llm/version.py`, and stand-in `nvidia-smi`, `trtllm-build` and conversion script that write what the
real ones write (a checkpoint folder; config.json and rank0.engine)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_build.cli import app
from mentallama_build.engine_config import BuildConfig
from mentallama_build.manifest import read_manifest, served_tokenizer_dir, verify_manifest
from mentallama_build.trtllm_commands import build_steps
from mentallama_build.trtllm_versions import examples_version, release, version_findings

NVIDIA_SMI = 'echo "NVIDIA H100 80GB HBM3, 9.0, 81559"'
CONVERT = """
import argparse, json, os
p = argparse.ArgumentParser()
for flag in ("--model_dir", "--output_dir", "--dtype", "--tp_size", "--pp_size", "--workers"):
    p.add_argument(flag)
a = p.parse_args()
os.makedirs(a.output_dir, exist_ok=True)
json.dump({"dtype": a.dtype}, open(os.path.join(a.output_dir, "config.json"), "w"))
print("converted", a.dtype)
"""
TRTLLM_BUILD = """#!/usr/bin/env python3
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--output_dir"); p.add_argument("--max_beam_width"); p.add_argument("--max_input_len")
p.add_argument("--max_seq_len"); p.add_argument("--max_batch_size"); p.add_argument("--context_fmha")
p.add_argument("--use_paged_context_fmha")
a, _ = p.parse_known_args()
os.makedirs(a.output_dir, exist_ok=True)
build = {"max_batch_size": int(a.max_batch_size), "max_input_len": int(a.max_input_len),
         "max_seq_len": int(a.max_seq_len), "max_beam_width": int(a.max_beam_width),
         "plugin_config": {"use_paged_context_fmha": a.use_paged_context_fmha == "enable"}}
json.dump({"build_config": build, "pretrained_config": {"vocab_size": 4000, "mapping": {"tp_size": 1}}},
          open(os.path.join(a.output_dir, "config.json"), "w"))
open(os.path.join(a.output_dir, "rank0.engine"), "wb").write(b"engine")
print("built")
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in NGC container: `tensorrt_llm` metadata, nvidia-smi and trtllm-build on PATH. Returns a function
    that makes a TensorRT-LLM checkout of a release and gives its examples/ folder."""
    site = tmp_path / "site"
    dist = site / "tensorrt_llm-1.2.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorrt_llm\nVersion: 1.2.1\n")
    monkeypatch.syspath_prepend(str(site))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "nvidia-smi", f"#!/bin/sh\n{NVIDIA_SMI}\n")
    executable(bin_dir / "trtllm-build", TRTLLM_BUILD)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def checkout(version: str) -> Path:
        root = tmp_path / f"TensorRT-LLM-{version}"
        (root / "tensorrt_llm").mkdir(parents=True)
        (root / "tensorrt_llm" / "version.py").write_text(f'# header\n__version__ = "{version}"\n')
        script = root / "examples" / "models" / "core" / "llama" / "convert_checkpoint.py"
        script.parent.mkdir(parents=True)
        script.write_text(textwrap.dedent(CONVERT))
        return root / "examples"

    return checkout


def build(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["engine", *args])
    return result.exit_code, result.output


def small_engine_args(checkpoint: Path, output: Path, examples: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--output", str(output), "--trtllm-examples", str(examples),
            "--max-input-len", "256", "--max-seq-len", "512", "--max-num-tokens", "1024", "--max-batch-size", "8",
            "--gpu-name", "H100"]  # fmt: skip


def test_examples_of_another_release_are_refused_with_both_versions_and_the_fix(
    container, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    examples = container("1.2.0")
    code, text = build(*small_engine_args(tiny_checkpoint, tmp_path / "engine", examples))
    assert code == 2, text
    assert "the container has tensorrt_llm 1.2.1 but the examples" in text and "TensorRT-LLM 1.2.0" in text
    assert f"git -C {examples.parent} fetch --depth 1 origin tag v1.2.1" in text
    assert f"git -C {examples.parent} checkout v1.2.1" in text
    assert not (tmp_path / "engine").exists(), "nothing may run before the preflight passes"


@pytest.mark.slow  # converts a tokenizer with transformers (seconds to import)
def test_a_matching_release_builds_converts_the_tokenizer_and_records_it(
    container, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "tokenizer.json").unlink()  # a checkpoint with SentencePiece's tokenizer.model only
    engine = tmp_path / "engine"
    args = small_engine_args(checkpoint, engine, container("1.2.1"))
    code, text = build(*args, "--dtype", "float32", "--max-beam-width", "2")
    assert code == 0, text
    assert "tokenizer.model converted once" in text and "tokenizer.json written" in text
    config = json.loads((engine / "config.json").read_text())["build_config"]
    assert config["max_beam_width"] == 2
    assert config["plugin_config"]["use_paged_context_fmha"] is False  # float32: no fused context attention
    manifest = read_manifest(engine)
    assert manifest["tokenizer"]["source"] == "converted from tokenizer.model"
    assert set(manifest["tokenizer"]["files"]) >= {"tokenizer.json", "tokenizer_config.json"}
    assert manifest["options"]["max_beam_width"] == 2 and manifest["options"]["dtype"] == "float32"
    assert verify_manifest(engine, checkpoint) == []
    assert served_tokenizer_dir(engine, checkpoint) == (engine / "tokenizer", None)
    # Serving never converts: a changed converted file is refused like any changed engine file.
    (engine / "tokenizer" / "tokenizer.json").write_text("{}")
    assert any("converted at build time" in p for p in verify_manifest(engine, checkpoint))


def test_a_checkpoint_with_tokenizer_json_is_served_with_its_own(
    container, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    engine = tmp_path / "engine"
    code, text = build(*small_engine_args(tiny_checkpoint, engine, container("1.2.1")))
    assert code == 0, text
    assert read_manifest(engine)["tokenizer"] == {"source": "checkpoint", "dir": None}
    assert not (engine / "tokenizer").exists()
    assert served_tokenizer_dir(engine, tiny_checkpoint) == (tiny_checkpoint, None)


def test_version_findings(tmp_path: Path) -> None:
    examples = tmp_path / "TensorRT-LLM" / "examples"
    examples.mkdir(parents=True)
    assert examples_version(examples) is None
    unknown = version_findings(examples, "1.2.1", None, read=False)
    assert unknown.problems == [] and "cannot tell which TensorRT-LLM release" in unknown.warnings[0]
    (examples.parent / "tensorrt_llm").mkdir()
    (examples.parent / "tensorrt_llm" / "version.py").write_text("__version__ = '1.2.0rc3'\n")
    assert examples_version(examples) == "1.2.0rc3"
    assert release("1.2.1+cu130") == release("v1.2.1") == "1.2.1"
    other = version_findings(examples, "1.2.0rc3", read=False, examples="1.2.0rc3")
    assert other.problems == [] and "not 1.2.1, the release whose command-line flags" in other.warnings[-1]
    missing = version_findings(examples, None, "1.2.1", read=False)
    assert "no tensorrt_llm package" in missing.problems[0]


def test_max_beam_width_and_float32_reach_the_commands() -> None:
    cfg = BuildConfig(Path("/c"), Path("/o"), dtype="float32", max_beam_width=4)
    convert, engine = build_steps(cfg)
    assert convert.argv[convert.argv.index("--dtype") + 1] == "float32"
    flags = dict(zip(engine.argv[1::2], engine.argv[2::2], strict=False))
    assert flags["--max_beam_width"] == "4"
    assert flags["--context_fmha"] == flags["--use_paged_context_fmha"] == "disable"
    half = build_steps(BuildConfig(Path("/c"), Path("/o")))[1].argv
    assert half[half.index("--use_paged_context_fmha") + 1] == "enable"


def test_the_capacity_plan_counts_each_beam(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def sequences(width: int) -> str:
        code, text = build("--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "e"), "--dry-run",
                           "--gpu-name", "H100", "--max-beam-width", str(width))  # fmt: skip
        assert code == 0, text
        return next(line for line in text.splitlines() if line.startswith("sequences the KV cache holds"))

    one, two = int(sequences(1).split()[-1]), int(sequences(2).split()[-1])
    assert two in (one // 2, one // 2 - 1)
    code, text = build("--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "e"), "--dry-run",
                       "--max-beam-width", "9")  # fmt: skip
    assert code == 1 and "--max-beam-width must be in 1..8" in text
