"""Requests with a batch of prompts, as TensorRT-LLM's models take them, and upstream inputs we refuse.

With `max_batch_size` > 0 every request tensor is `[N, ...]`: `[1, 1]` for one prompt, `[N, 1]` for N
prompts (upstream's end-to-end client with `--batch-inputs`). TensorRT-LLM's backend splits such a request
into N generations and answers each with responses of its own, tagged with `batch_index`; the models here do
the same. No Triton imports: used by `preprocessing`, the CPU engine step and the front model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mentallama_interface import UNSERVED_INPUTS, unserved_reason
from mentallama_server.models.request_errors import RequestError

Inputs = Mapping[str, "np.ndarray | None"]


def batch_size(inputs: Inputs) -> int:
    """N of a request: the first dimension shared by all its tensors (1 for tensors without one)."""
    sizes = {name: np.asarray(a).shape[0] for name, a in inputs.items() if a is not None and np.asarray(a).ndim >= 1}
    if not sizes:
        return 1
    n = max(sizes.values())
    wrong = sorted(name for name, size in sizes.items() if size != n)
    if wrong:
        raise RequestError(
            f"every input needs one row per prompt ({n} prompts): {', '.join(wrong)} has {sizes[wrong[0]]} row(s)"
        )
    if n < 1:
        raise RequestError("the request holds no prompt (batch of 0)")
    return n


def split_batch(inputs: Inputs) -> list[dict[str, np.ndarray | None]]:
    """One mapping per prompt, each tensor sliced to its row (`[1, ...]`)."""

    def row(array: np.ndarray | None, i: int) -> np.ndarray | None:
        if array is None or np.asarray(array).ndim == 0:
            return array
        return np.asarray(array)[i : i + 1]

    return [{name: row(a, i) for name, a in inputs.items()} for i in range(batch_size(inputs))]


def stack_padded(rows: Sequence[np.ndarray], pad: int) -> np.ndarray:
    """Stack arrays that differ only in their last dimension, right-padding it with `pad`: `[N, ...]`."""
    width = max(r.shape[-1] for r in rows)
    out = np.full((len(rows), *rows[0].shape[:-1], width), pad, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, ..., : row.shape[-1]] = row
    return out


def refuse_unserved(inputs: Inputs) -> None:
    """Raise `RequestError` naming the first upstream input in the request that no engine of ours serves.

    A flag set to false (`return_context_logits: false`, as clients send by default) asks for nothing and
    passes.
    """
    for name in UNSERVED_INPUTS:
        array = inputs.get(name)
        if array is None:
            continue
        arr = np.asarray(array)
        if arr.dtype == np.bool_ and not arr.any():
            continue
        raise RequestError(unserved_reason(name))
