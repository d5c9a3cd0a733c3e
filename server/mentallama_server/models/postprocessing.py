"""Stateless detokenisation of one chunk of output tokens (the ensemble's `postprocessing` step).

A SentencePiece decoder drops the leading space of the first piece it sees, so decoding streamed
chunks one by one would lose the spaces between them. Each chunk is decoded behind an anchor token
(`detokenize.AnchoredDecoder`): the result is the text the chunk adds to a sequence. A chunk that
starts with BOS is a whole sequence (prompt included) and decodes as usual.

Being stateless, a chunk is exact text only when the engine ended it on a character. The CPU profile's engine
step does (it ends streamed chunks only where `detokenize.utf8_safe_boundary` allows); TensorRT-LLM's C++ backend
on the GPU profile does not: a character whose byte-fallback tokens it splits over two chunks decodes here as
U+FFFD, one per byte, as in TensorRT-LLM's own ensemble. The `mentallama` front model decodes each call
incrementally and never splits a character (README, "Text contract"). Beams of a beam search come whole in every
response (TensorRT-LLM streams them so), so their texts are exact on every profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mentallama_server.models.detokenize import AnchoredDecoder
from mentallama_server.models.request_errors import RequestError

INPUTS = ("TOKENS_BATCH", "SEQUENCE_LENGTH")


class ChunkDecoder:
    def __init__(self, tokenizer) -> None:
        self.bos_id = tokenizer.bos_token_id
        self.decoder = AnchoredDecoder(tokenizer, skip_special_tokens=True)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.bos_id:
            return self.decoder.first(ids)
        return self.decoder.raw(ids)


def decode_batch(decoder: ChunkDecoder, tokens: np.ndarray | None, lengths: np.ndarray | None) -> np.ndarray:
    """The `OUTPUT` tensor of one request: `TOKENS_BATCH` `[batch, beam, len]` cut to `SEQUENCE_LENGTH`
    `[batch, beam]` and decoded, flat over (batch, beam) as TensorRT-LLM's postprocessing returns it: `[1]`
    for one sequence. A `RequestError` names the bad input."""
    if tokens is None:
        raise RequestError("TOKENS_BATCH is required")
    if lengths is None:
        raise RequestError("SEQUENCE_LENGTH is required")
    if tokens.ndim != 3:
        raise RequestError(f"TOKENS_BATCH must be [batch, beam, len], got shape {list(tokens.shape)}")
    if lengths.shape != tokens.shape[:2]:
        raise RequestError(
            f"SEQUENCE_LENGTH must be [batch, beam] = {list(tokens.shape[:2])}, got shape {list(lengths.shape)}"
        )
    if lengths.size and not (lengths.min() >= 0 and lengths.max() <= tokens.shape[2]):
        raise RequestError(f"SEQUENCE_LENGTH must be in [0, {tokens.shape[2]}] (TOKENS_BATCH's length)")
    texts = [
        decoder.decode(tokens[b, beam, : lengths[b, beam]]).encode("utf-8")
        for b in range(tokens.shape[0])
        for beam in range(tokens.shape[1])
    ]
    return np.array(texts, dtype=object)


def postprocess(decoder: ChunkDecoder, inputs: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """The output tensors of one request (its `INPUTS`)."""
    return {"OUTPUT": decode_batch(decoder, inputs.get("TOKENS_BATCH"), inputs.get("SEQUENCE_LENGTH"))}
