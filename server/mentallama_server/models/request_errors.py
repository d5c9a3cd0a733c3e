"""What every model refuses a request with, and how it reads a request's fields: `RequestError` (its message
names the field; the Triton adapters turn it into INVALID_ARGUMENT), the request `Limits`, `scalar` (the one value
of a request tensor) and `decode_text` (a STRING element as text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class RequestError(ValueError):
    """A request the server refuses; the message names the field."""


@dataclass(frozen=True)
class Limits:
    """Request limits, rendered from the model's context length and the profile."""

    max_input_len: int
    max_output_len: int



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

