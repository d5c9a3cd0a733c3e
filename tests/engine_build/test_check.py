"""`check_checkpoint` / `mentallama-build check`: passes on tiny, one clear message per broken case."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mentallama_build.check import check_checkpoint
from mentallama_build.cli import app
from mentallama_build.safetensors_io import write_safetensors
from mentallama_build.shapes import llama_tensor_shapes
from mentallama_build.tokenizer import train_sentencepiece

LLAMA2_7B_PARAMETERS = 6_738_415_616
LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 32000,
}


@pytest.fixture
def folder(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_tiny_passes_with_its_facts(tiny_checkpoint: Path) -> None:
    report = check_checkpoint(tiny_checkpoint)
    assert report.ok, report.problems
    assert report.architecture == "LlamaForCausalLM"
    assert (report.vocab_size, report.embedding_rows) == (4000, 4000)
    assert report.dtype == "float32"
    assert report.parameter_count == 1_352_320
    assert report.context_length == 4096
    assert (report.bos_token_id, report.eos_token_id, report.pad_token_id) == (1, 2, 0)
    assert (report.hidden_size, report.num_layers, report.num_heads, report.num_kv_heads) == (128, 2, 4, 4)
    assert report.weight_files == ["model.safetensors"]


def _drop_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.json").unlink()


def _wrong_architecture(folder: Path) -> None:
    _edit_json(folder / "config.json", architectures=["MistralForCausalLM"], model_type="mistral")


def _eos_mismatch(folder: Path) -> None:
    _edit_json(folder / "config.json", eos_token_id=5)


def _bos_mismatch(folder: Path) -> None:
    _edit_json(folder / "generation_config.json", bos_token_id=7)


def _drop_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _drop_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _unsupported_dtype(folder: Path) -> None:
    _edit_json(folder / "config.json", torch_dtype="float64")


def _no_context_length(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["max_position_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))


def _pad_outside_embedding(folder: Path) -> None:
    _edit_json(folder / "generation_config.json", pad_token_id=99_999)


def _truncated_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 1000)


def _missing_shard(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


BREAKAGES: list[tuple[Callable[[Path], None], str]] = [
    (_drop_tokenizer, "no tokenizer: neither tokenizer.model nor tokenizer.json is present"),
    (_wrong_architecture, "config.json describes architecture MistralForCausalLM (model_type 'mistral')"),
    (_eos_mismatch, "eos_token_id mismatch: config.json says 5, the tokenizer's eos token has id 2"),
    (
        _bos_mismatch,
        "bos_token_id mismatch: generation_config.json says 7, the tokenizer's bos token has id 1",
    ),
    (
        _drop_weights,
        "no weights: expected model.safetensors, pytorch_model.bin or a sharded *.index.json",
    ),
    (_drop_config, "config.json is missing"),
    (_unsupported_dtype, "dtype 'float64' is not supported"),
    (_no_context_length, "no positive max_position_embeddings"),
    (_pad_outside_embedding, "pad_token_id 99999 from generation_config.json is outside the embedding"),
    (_truncated_weights, "model.safetensors is not a readable safetensors file (truncated"),
    (_missing_shard, "model.safetensors.index.json lists 1 missing shard file(s): model-00002-of-00002"),
]


@pytest.mark.parametrize(
    ("breakage", "message"), BREAKAGES, ids=[breakage.__name__.lstrip("_") for breakage, _ in BREAKAGES]
)
def test_each_breakage_gets_its_own_message(
    folder: Path, breakage: Callable[[Path], None], message: str
) -> None:
    breakage(folder)
    report = check_checkpoint(folder)
    assert len(report.problems) == 1, report.problems
    assert message in report.problems[0]


def test_vocab_mismatch_is_reported_against_tokenizer_and_weights(folder: Path) -> None:
    _edit_json(folder / "config.json", vocab_size=3000)
    problems = check_checkpoint(folder).problems
    assert problems == [
        "vocab size mismatch: the tokenizer has 4000 tokens but config.json vocab_size (embedding rows) "
        "is 3000; ids 3000..3999 would index past the embedding",
        "vocab size mismatch: model.embed_tokens.weight has 4000 rows in the weights but config.json "
        "vocab_size is 3000",
    ]


def test_padded_embedding_is_a_note_not_a_problem(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "padded"
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_checkpoint / name, folder / name)
    config = {**json.loads((tiny_checkpoint / "config.json").read_text()), "vocab_size": 4032}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {name: torch.zeros(shape) for name, shape in llama_tensor_shapes(config).items()}
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    report = check_checkpoint(folder)
    assert report.ok, report.problems
    assert any("32 more rows than the tokenizer has tokens" in note for note in report.notes)


def test_pad_token_added_by_a_fine_tune_is_accepted(folder: Path) -> None:
    # Common in fine-tunes: "<pad>" appended to the tokenizer and one more embedding row.
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    pad = {"id": 4000, "content": "<pad>", "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True}  # fmt: skip
    tokenizer_json["added_tokens"].append(pad)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    _edit_json(folder / "tokenizer_config.json", pad_token="<pad>")
    _edit_json(folder / "generation_config.json", pad_token_id=4000)
    _edit_json(folder / "config.json", vocab_size=4001, pad_token_id=4000)
    config = json.loads((folder / "config.json").read_text())
    tensors = {name: torch.zeros(shape) for name, shape in llama_tensor_shapes(config).items()}
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    report = check_checkpoint(folder)
    assert report.ok, report.problems
    assert (report.vocab_size, report.embedding_rows, report.pad_token_id) == (4001, 4001, 4000)


def test_tokenizer_files_that_disagree(folder: Path) -> None:
    (folder / "tokenizer.model").write_bytes(train_sentencepiece(vocab_size=3000))
    problems = check_checkpoint(folder).problems
    assert problems == [
        "tokenizer.json has 4000 base tokens but tokenizer.model has 3000: the two tokenizer files disagree"
    ]


def test_pytorch_bin_weights_pass_without_being_unpickled(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # not a pickle: never opened
    report = check_checkpoint(folder)
    assert report.ok, report.problems
    assert report.weight_files == ["pytorch_model.bin"]
    assert any("shapes are not checked" in note for note in report.notes)


def test_missing_pad_is_fine_and_explained(folder: Path) -> None:
    generation = json.loads((folder / "generation_config.json").read_text())
    del generation["pad_token_id"]
    (folder / "generation_config.json").write_text(json.dumps(generation))
    report = check_checkpoint(folder)
    assert report.ok, report.problems
    assert report.pad_token_id is None
    assert any("no pad token" in note for note in report.notes)


def _write_7b_folder(folder: Path, tiny_checkpoint: Path) -> None:
    """LLaMA-2-7B shapes with sparse, header-only shards: the check must not need the 13 GB of weights."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_checkpoint / name, folder / name)
    shapes = llama_tensor_shapes(LLAMA2_7B_CONFIG)
    names = list(shapes)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    weight_map = {}
    for shard, keys in shards.items():
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for key in keys:
            size = 2 * int(torch.Size(shapes[key]).numel())
            header[key] = {
                "dtype": "F16",
                "shape": list(shapes[key]),
                "data_offsets": [offset, offset + size],
            }
            offset += size
            weight_map[key] = shard
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with (folder / shard).open("wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            handle.truncate(8 + len(raw) + offset)  # sparse: no disk blocks for the tensor data
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_llama2_7b_shaped_folder_without_loading_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llama-2-7b"
    _write_7b_folder(folder, tiny_checkpoint)
    report = check_checkpoint(folder)
    assert report.ok, report.problems
    assert report.parameter_count == LLAMA2_7B_PARAMETERS
    assert report.parameter_count == pytest.approx(6.74e9, rel=1e-3)
    assert (report.hidden_size, report.num_layers, report.num_heads, report.num_kv_heads) == (
        4096,
        32,
        32,
        32,
    )
    assert (report.embedding_rows, report.dtype, report.context_length) == (32000, "float16", 4096)
    assert report.weight_files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_7b_folder_with_a_wrongly_shaped_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llama-2-7b"
    _write_7b_folder(folder, tiny_checkpoint)
    _edit_json(folder / "config.json", intermediate_size=11000)
    problems = check_checkpoint(folder).problems
    assert len(problems) == 1
    assert problems[0].startswith("96 tensor shape(s) disagree with config.json")


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_check_passes_on_tiny(tiny_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{tiny_checkpoint}: OK")
    assert "parameters: 1,352,320 (1.4M)" in result.output


def test_cli_check_fails_with_the_message(folder: Path) -> None:
    _eos_mismatch(folder)
    result = CliRunner().invoke(app, ["check", str(folder)])
    assert result.exit_code == 1
    assert "problem: eos_token_id mismatch: config.json says 5" in result.output


def test_cli_check_json(tiny_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["check", "--json", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    assert data["parameter_count"] == 1_352_320
    assert data["problems"] == []
