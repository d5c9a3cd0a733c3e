"""The `preprocessing` model's logic, without Triton: a request's tensors in, the engine's tensors out.

`Preprocessor` validates and tokenises one prompt (the `mentallama` front model uses it too). A request holds
one or more prompts (`[N, 1]` tensors); `preprocess` validates and tokenises each, and stacks the rows back into
`[N, ...]` outputs. Every rejection is a `RequestError` naming the field (the first bad field of any prompt
refuses the whole request); the model turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mentallama_interface import UNSERVED_INPUTS
from mentallama_server.models.batching import refuse_unserved, split_batch, stack_padded
from mentallama_server.models.request_errors import Limits, RequestError, decode_text, scalar
from mentallama_server.models.word_lists import WORD_LIST_PAD, to_word_list

# Bytes of text one token can stand for, at most: LLaMA-2's longest token decodes to 16 bytes, so a prompt of
# more than max_input_len * 32 bytes is over the token limit for sure and is refused before tokenising (a
# 50 MB prompt took 45 s of tokeniser CPU only to be refused; issue 15, finding 3).
MAX_BYTES_PER_TOKEN = 32
# Stop and bad words: at most this many per list, each at most this many bytes.
MAX_WORDS = 64
MAX_WORD_BYTES = 256


@dataclass(frozen=True)
class PreparedRequest:
    input_ids: list[int]
    max_tokens: int
    stop_words: list[list[int]]
    bad_words: list[list[int]]
    end_id: int
    pad_id: int



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


Inputs = Mapping[str, "np.ndarray | None"]

# The inputs this step serves; the rest of config.pbtxt's inputs are the refused UNSERVED_INPUTS.
SERVED_INPUTS = ("QUERY", "REQUEST_OUTPUT_LEN", "STOP_WORDS_DICT", "BAD_WORDS_DICT", "END_ID", "PAD_ID")
HANDLED_INPUTS = (*SERVED_INPUTS, *UNSERVED_INPUTS)


def _words(array: np.ndarray | None) -> list[object] | None:
    return None if array is None else array.reshape(-1).tolist()


def _prepare(preprocessor: Preprocessor, inputs: Inputs) -> PreparedRequest:
    return preprocessor.prepare(
        scalar(inputs["QUERY"], "text_input"),
        scalar(inputs["REQUEST_OUTPUT_LEN"], "max_tokens"),
        stop_words=_words(inputs["STOP_WORDS_DICT"]),
        bad_words=_words(inputs["BAD_WORDS_DICT"]),
        end_id=scalar(inputs["END_ID"], "end_id"),
        pad_id=scalar(inputs["PAD_ID"], "pad_id"),
    )


def preprocess(preprocessor: Preprocessor, inputs: Inputs) -> dict[str, np.ndarray]:
    """The output tensors of one request; `RequestError` names the first bad field of any of its prompts."""
    refuse_unserved(inputs)
    served = {name: inputs.get(name) for name in SERVED_INPUTS}
    items = [_prepare(preprocessor, item) for item in split_batch(served)]  # one per prompt of [N, 1]
    return {
        # rows padded to the longest prompt; REQUEST_INPUT_LEN tells the engine each one's length
        "INPUT_ID": stack_padded([np.array(p.input_ids, dtype=np.int32) for p in items], 0),
        "REQUEST_INPUT_LEN": np.array([[len(p.input_ids)] for p in items], dtype=np.int32),
        "REQUEST_OUTPUT_LEN": np.array([[p.max_tokens] for p in items], dtype=np.int32),
        "STOP_WORDS_IDS": stack_padded([to_word_list(p.stop_words) for p in items], WORD_LIST_PAD),
        "BAD_WORDS_IDS": stack_padded([to_word_list(p.bad_words) for p in items], WORD_LIST_PAD),
        "OUT_END_ID": np.array([[p.end_id] for p in items], dtype=np.int32),
        "OUT_PAD_ID": np.array([[p.pad_id] for p in items], dtype=np.int32),
    }
