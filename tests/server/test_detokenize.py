"""IncrementalDetokenizer and helpers against the tiny checkpoint's real SentencePiece tokenizer."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mentallama_server.models.detokenize import (
    IncrementalDetokenizer,
    byte_token_map,
    decode_continuation,
    utf8_safe_boundary,
)

FFFD = "\ufffd"


def decode(tokenizer: Any, ids: list[int], skip_special_tokens: bool = True) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def byte_ids(tokenizer: Any, data: bytes) -> list[int]:
    return tokenizer.convert_tokens_to_ids([f"<0x{b:02X}>" for b in data])


def stream(detok: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> list[str]:
    """Feed `ids` in random chunks (sometimes empty) and return every delta, flush included."""
    deltas, i = [], 0
    while i < len(ids):
        n = rng.choice([0, 1, 1, 1, 2, 3, 5])
        deltas.append(detok.add(ids[i : i + n]))
        i += n
    deltas.append(detok.flush())
    return deltas


def assert_deltas_match(full: str, start: int, deltas: list[str]) -> None:
    """Each delta is exactly the full decode's text at its place (so no chunk holds a U+FFFD or half of a
    character that the full decode does not have there)."""
    offset = start
    for delta in deltas:
        assert full[offset : offset + len(delta)] == delta
        offset += len(delta)
    assert offset == len(full)


def word_id(tokenizer: Any) -> int:
    """A plain word token ("▁the"): not special, not a byte."""
    (token,) = tokenizer.encode("the", add_special_tokens=False)
    return token


def random_ids(rng: random.Random, vocab_size: int, byte_ids_: list[int], n: int) -> list[int]:
    """Uniform tokens with extra byte-fallback runs, so that valid and invalid UTF-8 runs both occur."""
    ids: list[int] = []
    while len(ids) < n:
        if rng.random() < 0.3:
            code = rng.choice([  # 2-, 3- and 4-byte characters
                rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xFFFF), rng.randint(0x10000, 0x2FFFF)
            ])
            data = chr(code).encode("utf-8", errors="replace")  # surrogates become "?"
            if rng.random() < 0.2:
                data = data[: rng.randint(1, len(data))]  # an unfinished character
            ids.extend(byte_ids_[b] for b in data)
        else:
            ids.append(rng.randrange(vocab_size))
    return ids


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_chunks_concatenate_to_full_decode(
    tiny_tokenizer: Any, seed: int, skip_special_tokens: bool
) -> None:
    rng = random.Random(seed)
    table = [tiny_tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in range(256)]
    vocab_size = len(tiny_tokenizer)
    output = random_ids(rng, vocab_size, table, rng.randint(1, 60))
    prompt = random_ids(rng, vocab_size, table, rng.randint(1, 20)) if seed % 2 else None
    if prompt is not None:
        prompt.append(word_id(tiny_tokenizer))  # prompts end on a character boundary

    deltas = stream(IncrementalDetokenizer(tiny_tokenizer, prompt, skip_special_tokens), output, rng)

    full = decode(tiny_tokenizer, (prompt or []) + output, skip_special_tokens)
    start = len(decode(tiny_tokenizer, prompt, skip_special_tokens)) if prompt else 0
    assert full[:start] == (decode(tiny_tokenizer, prompt, skip_special_tokens) if prompt else "")
    assert_deltas_match(full, start, deltas)


def test_real_text_round_trips_token_by_token(tiny_tokenizer: Any) -> None:
    text = "I can't sleep 😞 — my café job, 漢字 and naïve résumé… worry me. Ça va? 🧠💬"
    ids = tiny_tokenizer.encode(text)  # starts with <s>
    detok = IncrementalDetokenizer(tiny_tokenizer)
    deltas = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text == decode(tiny_tokenizer, ids)
    assert not any(FFFD in d for d in deltas)
    for emoji in ("😞", "🧠", "💬"):  # each arrives whole, in one delta
        assert any(emoji in d for d in deltas)


def test_leading_space_without_prompt_is_dropped_like_decode(tiny_tokenizer: Any) -> None:
    ids = tiny_tokenizer.encode("Hello world", add_special_tokens=False)  # ▁Hello ▁world
    detok = IncrementalDetokenizer(tiny_tokenizer)
    assert [detok.add([i]) for i in ids] == ["Hello", " world"]


def test_leading_space_after_prompt_is_kept(tiny_tokenizer: Any) -> None:
    prompt = tiny_tokenizer.encode("I feel")
    output = tiny_tokenizer.encode("fine today", add_special_tokens=False)  # ▁fine ▁today
    detok = IncrementalDetokenizer(tiny_tokenizer, prompt)
    assert detok.add(output[:1]) == " fine"
    assert detok.add(output[1:]) + detok.flush() == " today"
    assert decode(tiny_tokenizer, prompt + output) == "I feel fine today"


def test_prompt_of_only_special_tokens_counts_as_no_text(tiny_tokenizer: Any) -> None:
    output = tiny_tokenizer.encode("Hi there", add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tokenizer, [tiny_tokenizer.bos_token_id])
    assert detok.add(output) + detok.flush() == "Hi there" == decode(tiny_tokenizer, [1, *output])


def test_partial_character_is_held_until_complete(tiny_tokenizer: Any) -> None:
    euro = byte_ids(tiny_tokenizer, "€".encode())  # 3 byte tokens
    word = word_id(tiny_tokenizer)
    detok = IncrementalDetokenizer(tiny_tokenizer, tiny_tokenizer.encode("Price"))
    assert detok.add(euro[:1]) == ""
    assert detok.add(euro[1:2]) == ""
    assert detok.add(euro[2:]) == ""  # complete, but a later invalid byte of the run could still spoil it
    assert detok.add([word]) == "€ the"


def test_invalid_byte_run_matches_decode(tiny_tokenizer: Any) -> None:
    """ByteFallback turns a whole invalid run into U+FFFD, even the characters that were complete in it."""
    run = byte_ids(tiny_tokenizer, "€".encode() + b"\xff")
    word = word_id(tiny_tokenizer)
    detok = IncrementalDetokenizer(tiny_tokenizer)
    assert [detok.add([i]) for i in run] == ["", "", "", ""]
    assert detok.add([word]) == FFFD * 4 + " the" == decode(tiny_tokenizer, [*run, word])


def test_dangling_sequence_at_flush_decodes_like_decode(tiny_tokenizer: Any) -> None:
    half = byte_ids(tiny_tokenizer, "€".encode()[:2])
    prompt = tiny_tokenizer.encode("Cost:")
    detok = IncrementalDetokenizer(tiny_tokenizer, prompt)
    assert detok.add(half) == ""
    tail = detok.flush()
    assert tail == FFFD * 2
    assert decode(tiny_tokenizer, prompt) + tail == decode(tiny_tokenizer, prompt + half)


class DecodeCounter:
    """Wraps the real tokenizer and records how many ids each `decode` call receives."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.sizes: list[int] = []

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.sizes.append(len(ids))
        return self._tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def test_each_call_decodes_a_small_window(tiny_tokenizer: Any) -> None:
    text = "I keep thinking about the exam and I can't sleep at night. " * 40
    ids = tiny_tokenizer.encode(text)
    counter = DecodeCounter(tiny_tokenizer)
    detok = IncrementalDetokenizer(counter, ids[:50])
    counter.sizes.clear()
    out = "".join(detok.add([i]) for i in ids[50:]) + detok.flush()
    assert decode(tiny_tokenizer, ids[:50]) + out == decode(tiny_tokenizer, ids)
    assert len(ids) > 400 and max(counter.sizes) <= 3  # anchor + one token, never the whole sequence


def test_safe_boundary_holds_trailing_byte_run(tiny_tokenizer: Any) -> None:
    table = byte_token_map(tiny_tokenizer)
    word = word_id(tiny_tokenizer)
    euro = byte_ids(tiny_tokenizer, "€".encode())
    assert len(table) == 256
    assert utf8_safe_boundary([word, *euro, word, *euro[:2]], table) == 5
    assert utf8_safe_boundary([word, *euro], table) == 1
    assert utf8_safe_boundary([word, *euro[:1]], table, final=True) == 2
    assert utf8_safe_boundary([word, word], table) == 2


def test_safe_boundary_caps_long_runs_at_a_character_boundary(tiny_tokenizer: Any) -> None:
    table = byte_token_map(tiny_tokenizer)
    run = byte_ids(tiny_tokenizer, "€€€".encode() + "€".encode()[:2])  # 11 byte tokens, last char unfinished
    assert utf8_safe_boundary(run, table, max_held=32) == 0
    assert utf8_safe_boundary(run, table, max_held=4) == 9


@pytest.mark.parametrize(
    ("anchor_text", "text"),
    [("I feel", " tired today"), ("", "Hello there"), ("Price:", " 5€ 😀 ok")],
)
def test_decode_continuation_is_the_text_added_after_the_anchor(
    tiny_tokenizer: Any, anchor_text: str, text: str
) -> None:
    anchor = tiny_tokenizer.encode(anchor_text) if anchor_text else []
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    full = decode(tiny_tokenizer, anchor + ids)
    assert decode_continuation(tiny_tokenizer, ids, anchor) == full[len(decode(tiny_tokenizer, anchor)) :]
