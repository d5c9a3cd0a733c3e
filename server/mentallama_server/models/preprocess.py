"""Request validation and tokenisation shared by `preprocessing` and the `mentallama` front model.

Pure logic (no Triton import) so it is tested directly. Every rejection is a `RequestError` whose
message names the offending field; the Triton adapters turn it into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# TensorRT-LLM pads word lists with -1 (ids row and offsets row).
WORD_LIST_PAD = -1
# Bytes of text one token can stand for, at most: LLaMA-2's longest token decodes to 16 bytes, so a prompt of
# more than max_input_len * 32 bytes is over the token limit for sure and is refused before tokenising (a
# 50 MB prompt took 45 s of tokeniser CPU only to be refused; issue 15, finding 3).
MAX_BYTES_PER_TOKEN = 32
# Stop and bad words: at most this many per list, each at most this many bytes.
MAX_WORDS = 64
MAX_WORD_BYTES = 256


class RequestError(ValueError):
    """A request the server refuses; the message names the field."""


@dataclass(frozen=True)
class Limits:
    """Request limits, rendered from the model's context length and the profile."""

    max_input_len: int
    max_output_len: int


@dataclass(frozen=True)
class PreparedRequest:
    input_ids: list[int]
    max_tokens: int
    stop_words: list[list[int]]
    bad_words: list[list[int]]
    end_id: int
    pad_id: int


def decode_text(value: object, field: str = "text_input") -> str:
    """Turn a STRING tensor element into text, refusing what a prompt must not contain."""
    if value is None:  # Triton 2.51 lets a missing required input through when the input count fits
        raise RequestError(f"{field} is required")
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"{field} is not valid UTF-8 (byte {exc.start})") from None
    elif isinstance(value, str):
        text = value
    else:
        raise RequestError(f"{field} must be a string, got {type(value).__name__}")
    if "\x00" in text:
        raise RequestError(f"{field} contains a NUL character")
    return text


def scalar(array: np.ndarray | None, field: str) -> object | None:
    """The single value of a `[1]`/`[1, 1]` request tensor; a batch of several values is refused."""
    if array is None:
        return None
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{field} must hold exactly one value per request, got {flat.size}")
    return flat[0]


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


class Preprocessor:
    """Validates one request and tokenises it with the served model's tokenizer."""

    def __init__(self, tokenizer, limits: Limits) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.eos_id = int(tokenizer.eos_token_id)
        # LLaMA-2 has no pad token; TensorRT-LLM's preprocessing falls back to eos the same way.
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id

    def encode_prompt(self, text: str) -> list[int]:
        if not text.strip():
            raise RequestError("text_input is empty or only whitespace")
        ids = self.tokenizer.encode(text)
        if len(ids) > self.limits.max_input_len:
            raise RequestError(
                f"text_input is {len(ids)} tokens, above the limit of {self.limits.max_input_len} input tokens"
            )
        return ids

    def check_max_tokens(self, value: object | None) -> int:
        if value is None:
            raise RequestError("max_tokens is required")
        n = int(value)
        if n <= 0:
            raise RequestError(f"max_tokens must be positive, got {n}")
        if n > self.limits.max_output_len:
            raise RequestError(f"max_tokens is {n}, above the limit of {self.limits.max_output_len}")
        return n

    @property
    def max_text_bytes(self) -> int:
        return self.limits.max_input_len * MAX_BYTES_PER_TOKEN

    def check_text_size(self, text: object) -> None:
        """Refuse a prompt that cannot fit the token limit, by its size alone (before decoding or tokenising)."""
        if isinstance(text, str):
            text = text.encode("utf-8", "replace")
        size = len(text) if isinstance(text, bytes) else 0
        if size > self.max_text_bytes:
            raise RequestError(
                f"text_input is {size} bytes, above the {self.max_text_bytes} bytes that "
                f"{self.limits.max_input_len} input tokens can hold"
            )

    def encode_words(self, words: Sequence[object] | None, field: str) -> list[list[int]]:
        out: list[list[int]] = []
        words = list(words) if words is not None else []
        if len(words) > MAX_WORDS:
            raise RequestError(f"{field} holds {len(words)} words, above the limit of {MAX_WORDS}")
        for raw in words:
            if isinstance(raw, bytes | str) and len(raw) > MAX_WORD_BYTES:
                raise RequestError(f"{field}: a word of {len(raw)} bytes, above the limit of {MAX_WORD_BYTES}")
            word = decode_text(raw, field)
            if not word:
                continue
            ids = self.tokenizer.encode(word, add_special_tokens=False)
            if ids:
                out.append([int(i) for i in ids])
        return out

    def prepare(
        self,
        text: object,
        max_tokens: object | None,
        *,
        stop_words: Sequence[object] | None = None,
        bad_words: Sequence[object] | None = None,
        end_id: object | None = None,
        pad_id: object | None = None,
    ) -> PreparedRequest:
        self.check_text_size(text)
        prompt = decode_text(text)
        n = self.check_max_tokens(max_tokens)
        ids = self.encode_prompt(prompt)
        return PreparedRequest(
            input_ids=ids,
            max_tokens=n,
            stop_words=self.encode_words(stop_words, "stop_words"),
            bad_words=self.encode_words(bad_words, "bad_words"),
            end_id=self.eos_id if end_id is None else int(end_id),
            pad_id=self.pad_id if pad_id is None else int(pad_id),
        )
