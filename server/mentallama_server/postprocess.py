"""Stateless detokenisation of one chunk of output tokens (the ensemble's `postprocessing` step).

A SentencePiece decoder drops the leading space of the first piece it sees, so decoding streamed
chunks one by one loses the spaces between them. Each chunk is therefore decoded behind a fixed
anchor token and the anchor's text removed: the result is the text the chunk adds to a sequence.
A chunk that starts with BOS is a whole sequence (prompt included) and decodes as usual.
"""

from __future__ import annotations

from collections.abc import Sequence


class ChunkDecoder:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id
        self.anchor = [_anchor_id(tokenizer)]
        self.anchor_text = tokenizer.decode(self.anchor, skip_special_tokens=True)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        if ids[0] == self.bos_id:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        text = self.tokenizer.decode(self.anchor + ids, skip_special_tokens=True)
        return text[len(self.anchor_text) :]


def _anchor_id(tokenizer) -> int:
    """An ordinary (not special, not byte-fallback) token: a byte piece would fuse with the chunk's bytes."""
    special = set(tokenizer.all_special_ids)
    for word in ("A", "a", "I", "the", "and"):
        for token_id in tokenizer.encode(word, add_special_tokens=False):
            piece = tokenizer.convert_ids_to_tokens(token_id)
            if token_id not in special and not (piece.startswith("<0x") and piece.endswith(">")):
                return int(token_id)
    raise ValueError("no ordinary token found to anchor chunk decoding")
