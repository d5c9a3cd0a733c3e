"""Incremental, UTF-8-safe detokenization for LLaMA / SentencePiece tokenizers (byte fallback).

Contract (docs/ARCHITECTURE.md, "Text semantics"): for every split of the output into chunks,
``decode(prompt + output) == decode(prompt) + concat(deltas)``, and with no prompt
``concat(deltas) == decode(output)`` (the first token's leading space goes exactly as `decode` drops it).

Two properties of the LLaMA decoder (Replace "▁" -> " ", ByteFallback, Fuse, Strip one leading space) make
naive "decode the new tokens" wrong, and shape this module:

1. Strip: decoding a chunk on its own drops its leading space. We decode every chunk behind an *anchor*
   token whose text has no leading space (so nothing gets stripped) and cut the anchor's text off. Only
   while no text exists yet (no prompt text, nothing emitted) do we decode natively, so the first
   token's space goes exactly when `decode` would drop it.
2. ByteFallback decodes each *run* of consecutive byte tokens (`<0xE2>`, ...) all or nothing: if the
   run's bytes are not valid UTF-8, every byte of the run becomes U+FFFD, including characters that were
   complete earlier in the run (`<0xE2><0x82><0xAC>` is "€", but followed by `<0xFF>` it is four U+FFFD).
   So text is only final once the run is closed by a non-byte token: a trailing run of byte tokens is held
   back (never a partial character, never a U+FFFD that `decode` would not produce). The hold is capped
   (`max_held`, default 32 tokens) to keep each call O(new tokens); past it we emit up to the last complete
   character, which can only differ from `decode` for an invalid run longer than the cap.

`flush()` emits what is held; a dangling incomplete sequence then decodes to U+FFFD, as `decode` gives.
The prompt is assumed to end on a character boundary (true for any prompt produced by `encode`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_MAX_HELD",
    "AnchoredDecoder",
    "IncrementalDetokenizer",
    "byte_token_map",
    "decode_continuation",
    "find_anchor_token",
    "utf8_safe_boundary",
]

DEFAULT_MAX_HELD = 32
_ANCHOR_CANDIDATES = ("a", "e", "x", "z", "A", "0", "1", ".", ",")


def byte_token_map(tokenizer: Any) -> dict[int, int]:
    """Map each byte-fallback token id (pieces `<0x00>` .. `<0xFF>`) to its byte value."""
    byte_of: dict[int, int] = {}
    for piece, token_id in tokenizer.get_vocab().items():
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                byte_of[int(token_id)] = int(piece[3:5], 16)
            except ValueError:
                continue
    return byte_of


def _continuations(lead: int) -> int:
    """Continuation bytes a UTF-8 lead byte announces (0: ASCII, or a byte that cannot start a character)."""
    if 0xC2 <= lead <= 0xDF:
        return 1
    if 0xE0 <= lead <= 0xEF:
        return 2
    if 0xF0 <= lead <= 0xF4:
        return 3
    return 0


def _last_char_boundary(run: Sequence[int]) -> int:
    """Length of the longest prefix of the byte values `run` that does not end inside a character."""
    i = 0
    boundary = 0
    while i < len(run):
        needed = _continuations(run[i])
        j = i + 1
        while needed and j < len(run) and run[j] & 0xC0 == 0x80:
            needed -= 1
            j += 1
        if needed and j == len(run):
            return boundary  # an unfinished character at the end: stop before it
        boundary = i = j
    return boundary


def utf8_safe_boundary(
    ids: Sequence[int], byte_of: Mapping[int, int], *, final: bool = False, max_held: int = DEFAULT_MAX_HELD
) -> int:
    """How many leading tokens of `ids` can be turned into text now without risking a different result
    than decoding the whole sequence later (see the module docstring).

    `ids` must start on a character boundary (after everything already emitted). With `final`, everything
    is safe. Otherwise a trailing run of byte tokens is held back; a run longer than `max_held` is cut at
    its last complete character instead.
    """
    if final:
        return len(ids)
    start = len(ids)
    while start > 0 and ids[start - 1] in byte_of:
        start -= 1
    run_length = len(ids) - start
    if run_length <= max_held:
        return start
    return start + _last_char_boundary([byte_of[t] for t in ids[start:]])


def find_anchor_token(tokenizer: Any, skip_special_tokens: bool = True) -> int:
    """A token whose text is non-empty, starts with no whitespace and is unchanged by what follows it, so
    ``decode([anchor] + ids)`` is the anchor's text followed by the exact text of `ids`."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []))
    candidates = [vocab[c] for c in _ANCHOR_CANDIDATES if c in vocab]
    candidates += [i for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]) if piece.isalnum()]
    probe = tokenizer.encode(" a", add_special_tokens=False)
    for token_id in candidates:
        if token_id in special:
            continue
        text = _decode(tokenizer, [token_id], skip_special_tokens)
        if not text or text[0].isspace() or "\ufffd" in text:
            continue
        if _decode(tokenizer, [token_id, *probe], skip_special_tokens) == text + " a":
            return token_id
    raise ValueError("no anchor token found: this tokenizer is not a SentencePiece/LLaMA-style tokenizer")


def _decode(tokenizer: Any, ids: Sequence[int], skip_special_tokens: bool) -> str:
    return tokenizer.decode(
        list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )


class AnchoredDecoder:
    """Decodes whole chunks (starting and ending on run boundaries) with or without the leading-space rule."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool, anchor: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.anchor = find_anchor_token(tokenizer, skip_special_tokens) if anchor is None else anchor
        self.anchor_text = _decode(tokenizer, [self.anchor], skip_special_tokens)

    def raw(self, ids: Sequence[int]) -> str:
        """The text `ids` add after existing text: nothing stripped."""
        if not ids:
            return ""
        return _decode(self.tokenizer, [self.anchor, *ids], self.skip)[len(self.anchor_text) :]

    def first(self, ids: Sequence[int]) -> str:
        """The text of `ids` at the very start of a text: the tokenizer's own leading-space rule applies."""
        return _decode(self.tokenizer, ids, self.skip) if ids else ""


@functools.lru_cache(maxsize=8)
def _cached_decoder(tokenizer: Any, skip_special_tokens: bool) -> AnchoredDecoder:
    """Anchor search scans the vocabulary: do it once per tokenizer for the stateless helper."""
    return AnchoredDecoder(tokenizer, skip_special_tokens)


def decode_continuation(
    tokenizer: Any, ids: Sequence[int], anchor_ids: Sequence[int] = (), *, skip_special_tokens: bool = True
) -> str:
    """Stateless: the text `ids` add after `anchor_ids`, i.e.
    ``decode(anchor_ids + ids)[len(decode(anchor_ids)):]``, computed without decoding them together.

    `anchor_ids` is what precedes `ids` (the prompt and earlier output, or a tail of it that has text; empty
    at the start of a text). The split must not fall inside a run of byte tokens: cut where
    `utf8_safe_boundary` says. Equivalent to one `IncrementalDetokenizer` step, for callers without state.
    """
    decoder = _cached_decoder(tokenizer, skip_special_tokens)
    if anchor_ids and decoder.raw(anchor_ids):
        return decoder.raw(ids)
    return decoder.first(ids)


class IncrementalDetokenizer:
    """Turns a stream of output token ids into text deltas that never split a character.

    ``add(ids)`` returns the text these tokens complete (possibly "" while a byte run is held back);
    ``flush()`` returns the rest at the end. Each call decodes only the new and held tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
        *,
        max_held: int = DEFAULT_MAX_HELD,
        byte_of: Mapping[int, int] | None = None,
        decoder: AnchoredDecoder | None = None,
    ) -> None:
        # A server passes one `decoder` (and `byte_of`) for all requests: building them scans the vocabulary.
        self._decoder = AnchoredDecoder(tokenizer, skip_special_tokens) if decoder is None else decoder
        self._byte_of = byte_token_map(tokenizer) if byte_of is None else byte_of
        self._max_held = max_held
        self._held: list[int] = []
        # Whether text already precedes the next chunk (then no leading space may be stripped from it).
        self._has_text = bool(prompt_ids) and self._decoder.raw(prompt_ids) != ""

    def add(self, token_ids: Sequence[int]) -> str:
        self._held.extend(token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        cut = utf8_safe_boundary(self._held, self._byte_of, final=final, max_held=self._max_held)
        if cut == 0:
            return ""
        chunk, self._held = self._held[:cut], self._held[cut:]
        raw = self._decoder.raw(chunk)
        if self._has_text:
            return raw
        self._has_text = raw != ""
        return self._decoder.first(chunk)
