"""Stateless detokenisation of one chunk of output tokens (the ensemble's `postprocessing` step).

A SentencePiece decoder drops the leading space of the first piece it sees, so decoding streamed
chunks one by one would lose the spaces between them. Each chunk is decoded behind an anchor token
(`detokenize.AnchoredDecoder`): the result is the text the chunk adds to a sequence. A chunk that
starts with BOS is a whole sequence (prompt included) and decodes as usual. The engine step ends
streamed chunks only where `detokenize.utf8_safe_boundary` allows, so chunks never split a character.
"""

from __future__ import annotations

from collections.abc import Sequence

from mentallama_server.detokenize import AnchoredDecoder


class ChunkDecoder:
    def __init__(self, tokenizer) -> None:
        self.bos_id = tokenizer.bos_token_id
        self.decoder = AnchoredDecoder(tokenizer, skip_special_tokens=True)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.bos_id:
            return self.decoder.first(ids)
        return self.decoder.raw(ids)
