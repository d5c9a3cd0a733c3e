"""Checkpoints with a real model's shape and random weights, for GPU serving benchmarks.

`LLAMA2_7B` is LLaMA-2-7B's shape (hidden 4096, 32 layers of 32 heads, MLP 11008, context 4096) in
float16, the dtype MentaLLaMA-chat-7B ships in. The folder is a sharded Hugging Face checkpoint (one
safetensors shard per layer plus `model.safetensors.index.json`, like the real 7B's), with the project's
SentencePiece tokenizer, and loads through the same code as the real model.

Vocabulary: the tokenizer is the one `tiny` and `bench` use (`mentallama_build.tokenizer`, 4000 pieces: the
synthetic corpus saturates a little above 4k, so a 32000-piece BPE cannot be trained on it), and the
embedding and LM head get that many rows, since an engine must never emit ids the tokenizer cannot decode.
Per generated token that drops 2 x 4096 x 28000 FLOPs of LM head from ~13.2 GFLOPs (1.7%, see
`vocab_flops_share`) and 0.46 GB of weights from 13.5 GB; the 32 layers, which dominate, are exact.

Weights are drawn on `device` (a GPU draws 6.7B values in well under a second) from one generator per
tensor, seeded from its name as in `tiny`, and shards are written by a few threads while the next ones are
drawn. Build with `mentallama-build shaped OUTPUT --device cuda`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mentallama_build.corpus import DEFAULT_SEED
from mentallama_build.safetensors_io import write_safetensors
from mentallama_build.shapes import llama_tensor_shapes
from mentallama_build.staging import staged_folder
from mentallama_build.tiny import CONTEXT_LENGTH, INIT_STD, ModelSize, checkpoint_config, generation_config
from mentallama_build.tokenizer import train_sentencepiece, write_json, write_tokenizer

if TYPE_CHECKING:
    import torch

__all__ = [
    "INDEX_FILE",
    "LLAMA2_7B",
    "LLAMA2_VOCAB_SIZE",
    "build_shaped_checkpoint",
    "flops_per_token",
    "shaped_config",
    "vocab_flops_share",
]

LLAMA2_VOCAB_SIZE = 32000  # the real model's; see the module docstring for why ours is smaller
LLAMA2_7B = ModelSize("llama2-7b", 4096, 11008, 32, 32, 32, "float16")
INDEX_FILE = "model.safetensors.index.json"
_WRITERS = 4  # shard files written at once; enough to keep a disk busy while the GPU draws the next ones


def shaped_config(spec: ModelSize, vocab_size: int | None = None) -> dict[str, Any]:
    """`config.json` for `spec`: the key set of the generated checkpoints (`tiny.checkpoint_config`) with
    `spec`'s shape, dtype and `vocab_size` (default `spec.vocab_size`)."""
    return {
        **checkpoint_config("tiny"),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "torch_dtype": spec.dtype,
        "vocab_size": spec.vocab_size if vocab_size is None else vocab_size,
    }


def flops_per_token(config: Mapping[str, Any]) -> int:
    """Matrix-multiply FLOPs of one token's forward pass (2 per weight; attention over the context and the
    embedding lookup excluded): what the weights cost, whatever the sequence length."""
    shapes = llama_tensor_shapes(config)
    return 2 * sum(
        math.prod(shape)
        for name, shape in shapes.items()
        if len(shape) == 2 and name != "model.embed_tokens.weight"
    )


def vocab_flops_share(config: Mapping[str, Any], vocab_size: int = LLAMA2_VOCAB_SIZE) -> float:
    """Fraction of the per-token FLOPs of `config` with `vocab_size` rows that a smaller vocabulary drops."""
    real = flops_per_token({**config, "vocab_size": vocab_size})
    return (real - flops_per_token(config)) / real


def _shard_groups(config: Mapping[str, Any]) -> list[dict[str, tuple[int, ...]]]:
    """Tensor shapes grouped by shard: embeddings, norm and head first, then one shard per layer."""
    shapes = llama_tensor_shapes(config)
    layers = int(config["num_hidden_layers"])
    groups: list[dict[str, tuple[int, ...]]] = [{} for _ in range(layers + 1)]
    for name, shape in shapes.items():
        if name.startswith("model.layers."):
            groups[int(name.split(".")[2]) + 1][name] = shape
        else:
            groups[0][name] = shape
    return groups


def _draw(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    """One tensor on the host, drawn on `device`: ones for norms (identity, as LLaMA starts), zeros for
    biases, N(0, INIT_STD) otherwise from a generator seeded by `seed` and the tensor's name."""
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    values = torch.randn(shape, generator=generator, dtype=torch.float32, device=device).mul_(INIT_STD)
    return values.to(dtype).cpu()


def _write_weights(folder: Path, config: Mapping[str, Any], device: str, seed: int) -> None:
    import torch

    dtype = getattr(torch, str(config["torch_dtype"]))
    groups = _shard_groups(config)
    weight_map: dict[str, str] = {}
    total_size = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=_WRITERS) as writers:
        pending: list[concurrent.futures.Future[None]] = []
        for i, group in enumerate(groups):
            shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            tensors = {name: _draw(name, shape, dtype, device, seed) for name, shape in group.items()}
            total_size += sum(t.numel() * t.element_size() for t in tensors.values())
            weight_map.update(dict.fromkeys(tensors, shard))
            while len(pending) >= _WRITERS:  # bound the drawn-but-unwritten shards held in host memory
                pending.pop(0).result()
            pending.append(writers.submit(write_safetensors, folder / shard, tensors, {"format": "pt"}))
        for future in pending:
            future.result()
    write_json(folder / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": weight_map})


def build_shaped_checkpoint(
    output: Path,
    spec: ModelSize = LLAMA2_7B,
    *,
    device: str = "cpu",
    seed: int = DEFAULT_SEED,
    force: bool = False,
) -> Path:
    """Write a random-weight checkpoint of `spec`'s shape to `output` and return it.

    The vocabulary is the project tokenizer's (see the module docstring), whatever `spec.vocab_size` says.
    Files go to a sibling staging folder renamed into place, so a reader never sees half a checkpoint.
    Raises `FileExistsError` when `output` is not empty and `force` is false.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not force)):
        raise FileExistsError(f"{output} exists and is not an empty folder; pass force=True to replace it")
    with staged_folder(output) as staging:
        vocab_size = write_tokenizer(staging, train_sentencepiece(), model_max_length=CONTEXT_LENGTH)
        config = shaped_config(spec, vocab_size)
        write_json(staging / "config.json", config)
        write_json(staging / "generation_config.json", generation_config())
        _write_weights(staging, config, device, seed)
    return output
