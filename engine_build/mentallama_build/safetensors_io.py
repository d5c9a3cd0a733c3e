"""Header-level safetensors I/O: a deterministic writer and a reader that never touches tensor data.

Why our own writer: `safetensors.torch.save_file` serializes `__metadata__` from a Rust HashMap, whose key
order changes from process to process, so two builds of the same checkpoint would differ by a few header
bytes. Here every key is sorted. The layout is the published format: an 8-byte little-endian header length,
the JSON header padded with spaces to a multiple of 8, then the tensors back to back in header order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_HEADER_BYTES", "read_header", "write_safetensors"]

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger length means a corrupt file
_DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32"}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write `tensors` (sorted by name) with string `metadata`; identical inputs give identical bytes."""
    import torch

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    names = sorted(tensors)
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[str(tensor.dtype).removeprefix("torch.")],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for name in names:
            # Native byte order: little-endian on every platform torch ships for, as the format requires.
            handle.write(tensors[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype/shape/offsets, plus `__metadata__`).

    Raises `ValueError` for a corrupt header or a file shorter than the tensor data the header promises
    (a download cut short keeps a valid header), `OSError` when the file cannot be read.
    """
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("file is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            raise ValueError(f"header length {length} is larger than the file allows")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2
    ]
    available = path.stat().st_size - 8 - length
    if ends and max(ends) > available:
        raise ValueError(
            f"truncated: the header promises {max(ends)} bytes of tensor data, {available} present"
        )
    return header
