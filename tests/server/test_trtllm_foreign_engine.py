"""The trtllm profile and engines built outside `mentallama-build` (plain trtllm-build, no build manifest of
ours), the tokenizer serving reads, and what the profile takes from the engine (issue 21).

A foreign engine is served after the checks that can still be made (its config.json limits, the tokenizer's
vocabulary against the engine's) with a warning naming what was not checked; the beam width and the front
model's admission follow the engine unless set, and an admission above what the engine takes is refused.
Rendered with the real `mentallama-serve --render` (nothing started; no GPU needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_server.launch import cli
from mentallama_server.launch.trtllm_engine_checks import UNCHECKED_WITHOUT_MANIFEST


def foreign_engine(tmp_path: Path, *, vocab_size: int | None = 4000, max_beam_width: int = 1) -> Path:
    """What plain `trtllm-build` leaves: config.json and rank0.engine, no mentallama_build_manifest.json."""
    engine = tmp_path / "engine"
    engine.mkdir()
    build = {"max_batch_size": 48, "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 4096,
             "max_beam_width": max_beam_width, "plugin_config": {"use_paged_context_fmha": True}}  # fmt: skip
    pretrained: dict[str, object] = {"mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1}}
    if vocab_size is not None:
        pretrained["vocab_size"] = vocab_size
    (engine / "config.json").write_text(json.dumps({"pretrained_config": pretrained, "build_config": build}))
    (engine / "rank0.engine").write_bytes(b"engine bytes")
    return engine


def parameter(config: str, key: str) -> str:
    start = config.index(f'key: "{key}"')
    return config[start:].split('string_value: "', 1)[1].split('"', 1)[0]


def render(tmp_path: Path, engine: Path, tokenizer: Path, *args: str):
    runner = CliRunner()
    return runner.invoke(cli.app, ["--profile", "trtllm", "--render", str(tmp_path / "repo"), "--engine",
                                   str(engine), "--tokenizer", str(tokenizer), *args])  # fmt: skip


def test_a_foreign_engine_is_served_with_a_warning_naming_what_was_not_checked(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    result = render(tmp_path, foreign_engine(tmp_path), tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert "built outside mentallama-build" in result.output
    assert all(item in result.output for item in UNCHECKED_WITHOUT_MANIFEST)
    repo = tmp_path / "repo"
    pre = (repo / "preprocessing" / "config.pbtxt").read_text()
    assert parameter(pre, "tokenizer_dir") == str(tiny_checkpoint)
    # Limits fitted to the engine's config.json, as for our own engines.
    assert int(parameter(pre, "max_input_len")) + int(parameter(pre, "max_output_len")) <= 2048
    front = (repo / "mentallama" / "config.pbtxt").read_text()
    assert parameter(front, "max_concurrent_requests") == str(48 + 256)  # engine batch + max_queue_size


def test_a_tokenizer_larger_than_the_engine_vocabulary_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = render(tmp_path, foreign_engine(tmp_path, vocab_size=3000), tiny_checkpoint)
    assert result.exit_code == 1
    assert "has 4000 tokens but the engine only 3000 embedding rows" in result.output
    assert not (tmp_path / "repo").exists()


def test_an_engine_config_without_a_vocabulary_is_a_warning(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = render(tmp_path, foreign_engine(tmp_path, vocab_size=None), tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert "names no pretrained_config.vocab_size: vocabulary not checked" in result.output


def test_a_tokenizer_without_tokenizer_json_is_refused_with_the_fix(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Serving reads tokenizer.json alone (no transformers in the serving processes)."""
    tokenizer = tmp_path / "sentencepiece-only"
    shutil.copytree(tiny_checkpoint, tokenizer)
    (tokenizer / "tokenizer.json").unlink()
    result = render(tmp_path, foreign_engine(tmp_path), tokenizer)
    assert result.exit_code == 1
    assert "has no tokenizer.json" in result.output and "mentallama-build fast-tokenizer" in result.output


def test_beam_width_follows_the_engine_and_is_capped_by_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    engine = foreign_engine(tmp_path, max_beam_width=2)
    assert render(tmp_path, engine, tiny_checkpoint).exit_code == 0
    config = (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert parameter(config, "max_beam_width") == "2"
    shutil.rmtree(tmp_path / "repo")
    result = render(tmp_path, engine, tiny_checkpoint, "--set", "max_beam_width=4")
    assert result.exit_code == 1 and "max_beam_width 4 > engine max_beam_width 2" in result.output


@pytest.mark.parametrize(("settings", "admitted"), [([], "304"), (["--set", "max_queue_size=16"], "64")])
def test_front_admission_stays_within_what_the_engine_takes(
    tmp_path: Path, tiny_checkpoint: Path, settings: list[str], admitted: str
) -> None:
    assert render(tmp_path, foreign_engine(tmp_path), tiny_checkpoint, *settings).exit_code == 0
    front = (tmp_path / "repo" / "mentallama" / "config.pbtxt").read_text()
    assert parameter(front, "max_concurrent_requests") == admitted


def test_front_admission_above_the_engine_queue_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = render(tmp_path, foreign_engine(tmp_path), tiny_checkpoint, "--set", "front_max_concurrent_requests=512")
    assert result.exit_code == 1
    assert "front_max_concurrent_requests 512 > what the engine takes (48 batched + max_queue_size 256 = 304)" in (
        result.output
    )
