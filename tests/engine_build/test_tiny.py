"""Generated checkpoints: determinism, offline Auto loading, LLaMA-2 tokenizer behaviour, shapes, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from typer.testing import CliRunner

from mentallama_build.cli import app
from mentallama_build.corpus import generate_corpus
from mentallama_build.shapes import llama_tensor_shapes, parameter_count
from mentallama_build.tiny import (
    CHECKPOINT_FILES,
    RECIPE_KEY,
    build_checkpoint,
    checkpoint_config,
    default_checkpoint_dir,
    describe,
    is_current,
)
from mentallama_build.tokenizer import BOS_ID, EOS_ID, UNK_ID

HELLO = "Hello world"
BYTE_FALLBACK_TEXT = "naïve café 😊 心"
SYSTEM = "You are a careful mental health assistant."
USER = 'Consider this post: "I can\'t sleep and I feel empty." Question: Is the poster depressed?'


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", "tiny")


@pytest.fixture(scope="module")
def tokenizer(built: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(built)


@pytest.fixture(scope="module")
def sentencepiece(built: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(built / "tokenizer.model"))


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


# --- build -------------------------------------------------------------------------------------------------


def test_build_writes_the_llama_folder_layout(built: Path) -> None:
    assert sorted(path.name for path in built.iterdir()) == sorted(CHECKPOINT_FILES)
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["bos_token_id"], config["eos_token_id"], config["max_position_embeddings"]) == (1, 2, 4096)
    assert "pad_token_id" not in config  # as LLaMA-2: the pad id lives in generation_config.json only
    assert json.loads((built / "generation_config.json").read_text())["pad_token_id"] == UNK_ID
    tokenizer_config = json.loads((built / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer"
    assert (tokenizer_config["add_bos_token"], tokenizer_config["add_eos_token"]) == (True, False)


def test_two_builds_are_byte_identical(built: Path, tmp_path: Path) -> None:
    # Built in another process with another hash seed: per-process randomness (Python's str hashing,
    # Rust HashMap order in native writers) would show up here and not in a same-process rebuild.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    command = [sys.executable, "-m", "mentallama_build.cli", "tiny", "--output", str(tmp_path / "again")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _digests(tmp_path / "again") == _digests(built)


def test_default_checkpoint_is_current_and_matches_a_fresh_build(tiny_checkpoint: Path, built: Path) -> None:
    # `tiny_checkpoint` (tests/conftest.py) comes from ensure_checkpoint("tiny").
    assert tiny_checkpoint == default_checkpoint_dir("tiny")
    assert is_current(tiny_checkpoint, "tiny")
    assert _digests(tiny_checkpoint) == _digests(built)


def test_is_current_rejects_partial_and_other_size_folders(built: Path, tmp_path: Path) -> None:
    assert not is_current(built, "bench")
    partial = shutil.copytree(built, tmp_path / "partial")
    (partial / "tokenizer.json").unlink()
    assert not is_current(partial, "tiny")


def test_recipe_is_recorded_in_the_safetensors_metadata(built: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(built / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()[RECIPE_KEY].startswith("tiny-")


def test_build_refuses_a_non_empty_folder_unless_forced(built: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--force"):
        build_checkpoint(target, "tiny")
    assert (target / "stale.txt").exists()
    build_checkpoint(target, "tiny", force=True)
    assert _digests(target) == _digests(built)  # the stale file is gone, nothing else changed
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging leftovers


def test_unknown_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny, bench"):
        build_checkpoint(tmp_path / "x", "huge")


def test_bench_size_without_building_it() -> None:
    facts = describe("bench")
    assert facts["parameters"] == 91_097_856
    assert (facts["hidden_size"], facts["num_hidden_layers"], facts["num_attention_heads"]) == (768, 12, 12)
    assert checkpoint_config("bench")["torch_dtype"] == "bfloat16"
    assert checkpoint_config("bench")["max_position_embeddings"] == 4096


# --- loading -----------------------------------------------------------------------------------------------

_OFFLINE_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
ids = tokenizer("Hello world", return_tensors="pt").input_ids
with torch.inference_mode():
    logits = model(ids).logits
print(json.dumps({"tokenizer": type(tokenizer).__name__, "model": type(model).__name__,
                  "dtype": str(model.dtype), "ids": ids[0].tolist(), "logits": list(logits.shape),
                  "finite": bool(torch.isfinite(logits).all())}))
"""


def test_loads_offline_with_auto_classes_and_an_empty_hub_cache(built: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_LOAD, str(built)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tokenizer"] == "LlamaTokenizer"
    assert result["model"] == "LlamaForCausalLM"
    assert result["dtype"] == "torch.float32"
    assert result["ids"][0] == BOS_ID
    assert result["logits"] == [1, len(result["ids"]), 4000]
    assert result["finite"]


def test_forward_pass_shape_and_parameter_count(built: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    ids = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 8, 9, 10]])
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape == (2, 4, 4000)
    assert torch.isfinite(logits).all()
    assert model.num_parameters() == describe("tiny")["parameters"] == 1_352_320


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_key_value_heads": 2},
        {"tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True},
    ],
    ids=["tiny", "gqa", "tied", "biases"],
)
def test_shape_table_matches_the_transformers_llama_module(overrides: dict[str, object]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {**checkpoint_config("tiny"), **overrides}
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())
    state = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    expected = llama_tensor_shapes(config)
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # the tied head is an alias of the embedding, not its own tensor
    assert state == expected


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_hello_world_gets_one_bos_and_sentencepiece_ids(
    tokenizer: PreTrainedTokenizerBase, sentencepiece: spm.SentencePieceProcessor
) -> None:
    ids = tokenizer(HELLO).input_ids
    assert ids[0] == BOS_ID
    assert ids.count(BOS_ID) == 1
    assert EOS_ID not in ids
    assert ids[1:] == sentencepiece.encode(HELLO)


def test_special_tokens_match_llama2(tokenizer: PreTrainedTokenizerBase, built: Path) -> None:
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token is None
    assert len(tokenizer) == json.loads((built / "config.json").read_text())["vocab_size"]


def test_byte_fallback_round_trip(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer(BYTE_FALLBACK_TEXT).input_ids
    byte_pieces = [token for token in tokenizer.convert_ids_to_tokens(ids) if token.startswith("<0x")]
    assert byte_pieces, "the emoji and the CJK character should go through byte fallback"
    assert tokenizer.decode(ids, skip_special_tokens=True) == BYTE_FALLBACK_TEXT


def test_chat_template_renders_llama2_format(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{USER} [/INST]"


def test_chat_template_ids_match_metas_reference_encoding(
    tokenizer: PreTrainedTokenizerBase, sentencepiece: spm.SentencePieceProcessor
) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])
    # Meta's llama generation code: [BOS] + sp.encode("[INST] <<SYS>>\n...")
    reference = [BOS_ID] + sentencepiece.encode(f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{USER} [/INST]")
    assert ids == reference
    assert ids.count(BOS_ID) == 1


def test_chat_template_multi_turn(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "second"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s>[INST] first [/INST] answer </s><s>[INST] second [/INST]"


def test_fast_tokenizer_matches_sentencepiece_on_synthetic_text(
    tokenizer: PreTrainedTokenizerBase, sentencepiece: spm.SentencePieceProcessor
) -> None:
    # Leading whitespace is left out: transformers' Metaspace skips the dummy prefix there, for real
    # LLaMA-2 folders too.
    lines = [line for line in generate_corpus(300, seed=11) if not line[0].isspace()]
    assert len(lines) > 250
    for line in lines:
        ids = tokenizer(line).input_ids
        assert ids == [BOS_ID, *sentencepiece.encode(line)], line
        assert tokenizer.decode(ids, skip_special_tokens=True) == line


def test_tokenizer_json_equals_conversion_from_tokenizer_model(
    tokenizer: PreTrainedTokenizerBase, built: Path, tmp_path: Path
) -> None:
    slow_only = tmp_path / "slow-only"
    slow_only.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(built / name, slow_only / name)
    converted = AutoTokenizer.from_pretrained(slow_only)
    for line in [HELLO, BYTE_FALLBACK_TEXT, *generate_corpus(100, seed=12)]:
        assert converted(line).input_ids == tokenizer(line).input_ids, line


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_tiny_builds_then_refuses_to_overwrite(built: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "cli"
    result = runner.invoke(app, ["tiny", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert "1,352,320 parameters" in result.output
    assert _digests(target) == _digests(built)

    again = runner.invoke(app, ["tiny", "--output", str(target)])
    assert again.exit_code == 1
    assert "--force" in again.output


def test_cli_rejects_an_unknown_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["tiny", "--output", str(tmp_path / "x"), "--size", "huge"])
    assert result.exit_code != 0
    assert not (tmp_path / "x").exists()
