"""TensorRT-LLM's word-list tensor format (stop and bad words), built by the models that tokenise and read by the
CPU engine step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mentallama_server.models.request_errors import RequestError

# TensorRT-LLM pads word lists with -1 (ids row and offsets row).
WORD_LIST_PAD = -1


def to_word_list(words: Sequence[Sequence[int]]) -> np.ndarray:
    """TensorRT-LLM word-list format: `[2, L]`, row 0 the concatenated ids, row 1 the end offsets."""
    flat: list[int] = []
    offsets: list[int] = []
    for ids in words:
        flat.extend(ids)
        offsets.append(len(flat))
    width = max(len(flat), len(offsets), 1)
    out = np.full((2, width), WORD_LIST_PAD, dtype=np.int32)
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    return out


def from_word_list(array: np.ndarray | None) -> list[list[int]]:
    """Inverse of `to_word_list`; accepts `[2, L]` or `[1, 2, L]`."""
    if array is None:
        return []
    arr = np.asarray(array)
    if arr.ndim == 3:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise RequestError(f"word list must have shape [2, L], got {list(arr.shape)}")
    ids, offsets = arr[0].tolist(), [o for o in arr[1].tolist() if o >= 0]
    words, start = [], 0
    for end in offsets:
        if end < start or end > len(ids):
            raise RequestError("word list offsets are not increasing")
        if end > start:
            words.append([int(i) for i in ids[start:end]])
        start = end
    return words

