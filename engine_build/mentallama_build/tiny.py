"""Random-weight LLaMA checkpoints (`tiny` for tests, `bench` for load tests) in the real MentaLLaMA layout.

The folder holds what a Hugging Face LLaMA-2-chat folder holds: `config.json`, `generation_config.json`,
`model.safetensors` and the tokenizer files, and loads with the Auto classes without custom code.
Every byte derives from fixed seeds and sorted JSON, so two builds are identical (a test checks sha256s).
Each tensor draws from its own generator, seeded from its name, so the values do not depend on write order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mentallama import locations
from mentallama_build.corpus import DEFAULT_SEED
from mentallama_build.locks import file_lock
from mentallama_build.safetensors_io import read_header, write_safetensors
from mentallama_build.shapes import llama_tensor_shapes, parameter_count
from mentallama_build.staging import staged_folder
from mentallama_build.tokenizer import (
    BOS_ID,
    DEFAULT_VOCAB_SIZE,
    EOS_ID,
    TOKENIZER_FILES,
    UNK_ID,
    train_sentencepiece,
    write_json,
    write_tokenizer,
)

if TYPE_CHECKING:  # torch, sentencepiece and transformers load lazily: `check` and the CLI start fast
    import torch

__all__ = [
    "CHECKPOINT_FILES",
    "CONTEXT_LENGTH",
    "RECIPE_KEY",
    "SIZES",
    "ModelSize",
    "build_checkpoint",
    "checkpoint_config",
    "default_checkpoint_dir",
    "describe",
    "ensure_checkpoint",
    "generation_config",
    "is_current",
]

CONTEXT_LENGTH = 4096  # LLaMA-2's max_position_embeddings
INIT_STD = 0.02  # LLaMA-2's initializer_range
# Bump when anything that changes the built bytes changes (corpus, trainer settings, file layout), so
# `ensure_checkpoint` rebuilds stale folders left under artifacts/ by an older version of this code.
RECIPE_VERSION = 1
RECIPE_KEY = "mentallama_recipe"  # safetensors header metadata key; loaders ignore unknown metadata
CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES)


@dataclass(frozen=True)
class ModelSize:
    """Shape of one generated checkpoint; `dtype` is what `config.json` declares and the weights store."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    dtype: str
    vocab_size: int = DEFAULT_VOCAB_SIZE


SIZES: dict[str, ModelSize] = {
    # Two layers: enough to exercise the layer loop and the KV cache, builds and runs in a blink.
    "tiny": ModelSize("tiny", 128, 256, 2, 4, 4, "float32"),
    # ~91M parameters: compute dominates over framework overhead in benchmarks, still builds in seconds.
    # bfloat16: on this project's CPU (AVX512-BF16, oneDNN) a bench forward runs ~2x faster than float32
    # (4x128 prefill ~0.32 s vs ~0.68 s, decode ~31 vs ~59 ms/step at batch 4 on 2 threads), because the
    # weights move half the bytes and random fp32 activations hit denormals; it also halves the file.
    "bench": ModelSize("bench", 768, 2048, 12, 12, 12, "bfloat16"),
}


def default_checkpoint_dir(size: str) -> Path:
    """`<cache>/checkpoints/<size>` (`mentallama.locations`), where the launcher and tests look for them."""
    _size(size)
    return locations.checkpoints_dir() / size


def checkpoint_config(size: str) -> dict[str, Any]:
    """The `config.json` of a generated checkpoint, in LLaMA-2's own key set (`torch_dtype`, `rope_theta`),
    which every transformers version and TensorRT-LLM's converter read."""
    spec = _size(size)
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": INIT_STD,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": CONTEXT_LENGTH,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": spec.dtype,
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def generation_config() -> dict[str, Any]:
    """`generation_config.json` of the random-weight checkpoints (`tiny`, `bench`, `shaped`)."""
    # LLaMA-2-chat's values; pad_token_id 0 (<unk>) lives here, not in config.json, exactly as upstream.
    # Upstream's `max_length: 4096` is left out: with it transformers warns on every request that sets
    # `max_new_tokens`, and the context length is already `max_position_embeddings` in config.json.
    return {
        "bos_token_id": BOS_ID,
        "do_sample": True,
        "eos_token_id": EOS_ID,
        "pad_token_id": UNK_ID,
        "temperature": 0.6,
        "top_p": 0.9,
    }


def _recipe(size: str) -> str:
    payload = json.dumps(
        {"version": RECIPE_VERSION, "seed": DEFAULT_SEED, **asdict(_size(size))}, sort_keys=True
    )
    return f"{size}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _size(size: str) -> ModelSize:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown checkpoint size {size!r}; choose one of {', '.join(SIZES)}") from None


def _random_weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    import torch

    dtype = getattr(torch, config["torch_dtype"])  # "float32" / "bfloat16" name torch dtypes directly
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in llama_tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=dtype)  # RMSNorm starts as identity, as in LLaMA init
        elif name.endswith(".bias"):
            tensors[name] = torch.zeros(shape, dtype=dtype)
        else:
            digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            values = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(INIT_STD)
            tensors[name] = values.to(dtype)
    return tensors


def _write_checkpoint(folder: Path, size: str) -> None:
    spec = _size(size)
    vocab_size = write_tokenizer(
        folder, train_sentencepiece(spec.vocab_size), model_max_length=CONTEXT_LENGTH
    )
    config = checkpoint_config(size)
    if vocab_size != config["vocab_size"]:
        raise RuntimeError(f"tokenizer trained {vocab_size} pieces, expected {config['vocab_size']}")
    write_json(folder / "config.json", config)
    write_json(folder / "generation_config.json", generation_config())
    write_safetensors(
        folder / "model.safetensors",
        _random_weights(config, DEFAULT_SEED),
        metadata={"format": "pt", RECIPE_KEY: _recipe(size)},
    )


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        header = read_header(path)
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def is_current(path: Path, size: str) -> bool:
    """True when `path` is a complete checkpoint built by this version of the recipe for `size`."""
    if not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    return _safetensors_metadata(path / "model.safetensors").get(RECIPE_KEY) == _recipe(size)


def build_checkpoint(output: Path, size: str = "tiny", force: bool = False) -> Path:
    """Build the `size` checkpoint into `output` and return it.

    Files are written to a sibling staging folder and renamed into place, so readers never see a half-built
    checkpoint. Raises `FileExistsError` when `output` is not empty and `force` is false.
    """
    _size(size)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise FileExistsError(f"{output} is not empty; pass --force to replace it")
    with staged_folder(output) as staging:
        _write_checkpoint(staging, size)
    return output




def ensure_checkpoint(size: str = "tiny") -> Path:
    """Return `default_checkpoint_dir(size)`, first building it (or rebuilding a stale or partial one)."""
    path = default_checkpoint_dir(size)
    if is_current(path, size):
        return path
    with file_lock(path.parent / f".{size}.lock"):
        if not is_current(path, size):
            build_checkpoint(path, size, force=True)
    return path


def describe(size: str) -> dict[str, Any]:
    """Facts about a size without building it (for reports and the CLI)."""
    config = checkpoint_config(size)
    return {**asdict(_size(size)), "parameters": parameter_count(config), "context_length": CONTEXT_LENGTH}
