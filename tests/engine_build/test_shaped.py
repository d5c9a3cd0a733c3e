"""Shaped random-weight checkpoints: LLaMA-2-7B's numbers, and a small build that loads and checks clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from mentallama_build.check import check_checkpoint
from mentallama_build.cli import app
from mentallama_build.safetensors_io import read_header
from mentallama_build.shaped import (
    INDEX_FILE,
    LLAMA2_7B,
    LLAMA2_VOCAB_SIZE,
    build_shaped_checkpoint,
    shaped_config,
    vocab_flops_share,
)
from mentallama_build.shapes import llama_tensor_shapes, parameter_count
from mentallama_build.tiny import ModelSize
from mentallama_build.tokenizer import DEFAULT_VOCAB_SIZE

SMALL = ModelSize("small", 64, 160, 3, 4, 2, "float16")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shaped_checkpoint(tmp_path_factory.mktemp("shaped") / "small", SMALL)


def test_llama2_7b_shape_has_the_real_parameter_count_and_a_small_vocab_cost():
    config = shaped_config(LLAMA2_7B, LLAMA2_VOCAB_SIZE)
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (4096, 32, 11008)
    assert config["max_position_embeddings"] == 4096 and config["torch_dtype"] == "float16"
    assert parameter_count(config) == 6_738_415_616  # meta-llama/Llama-2-7b-chat-hf
    share = vocab_flops_share(shaped_config(LLAMA2_7B, DEFAULT_VOCAB_SIZE))
    assert 0.015 < share < 0.02


def test_small_build_has_the_asked_shapes_one_shard_per_layer_and_float16(small):
    config = json.loads((small / "config.json").read_text())
    assert config["vocab_size"] == DEFAULT_VOCAB_SIZE  # the tokenizer's size, never more rows than it decodes
    assert (config["hidden_size"], config["num_key_value_heads"], config["torch_dtype"]) == (64, 2, "float16")
    weight_map = json.loads((small / INDEX_FILE).read_text())["weight_map"]
    assert set(weight_map) == set(llama_tensor_shapes(config))
    shards = sorted(set(weight_map.values()))
    assert len(shards) == SMALL.num_hidden_layers + 1
    found = {}
    for shard in shards:
        header = read_header(small / shard)
        found.update({k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"})
    assert found == {name: ("F16", shape) for name, shape in llama_tensor_shapes(config).items()}


def test_small_build_passes_the_check_and_loads_with_random_weights(small):
    report = check_checkpoint(small)
    assert report.ok, report.problems
    model = AutoModelForCausalLM.from_pretrained(small)
    assert model.dtype is torch.float16
    config = json.loads((small / "config.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config)
    up = model.model.layers[1].mlp.up_proj.weight.detach().float()
    assert 0.015 < float(up.std()) < 0.025 and torch.all(model.model.norm.weight == 1)


def test_same_seed_gives_the_same_weights_and_a_full_folder_is_not_replaced(small, tmp_path):
    again = build_shaped_checkpoint(tmp_path / "again", SMALL)
    for shard in ("model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors"):
        assert (again / shard).read_bytes() == (small / shard).read_bytes()
    with pytest.raises(FileExistsError):
        build_shaped_checkpoint(again, SMALL)


def test_shaped_command_hands_its_arguments_to_the_builder():
    for help_flag in ("--help", "-h"):
        shown = CliRunner().invoke(app, ["shaped", help_flag])
        assert shown.exit_code == 0 and "shaped [OPTIONS] OUTPUT" in shown.stdout
        assert all(f in shown.stdout for f in ("--device", "--force"))
    assert "shaped" in CliRunner().invoke(app, ["--help"]).stdout
    missing = CliRunner().invoke(app, ["shaped", "--device", "cpu"])
    assert missing.exit_code == 2 and "Missing argument 'OUTPUT'" in missing.stderr
