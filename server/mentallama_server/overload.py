"""Refusals for load, in the words every client retries on (issue 21).

Our own refusals (the front door's admission, the front model's, the CPU engine step's) say "server overloaded:
...; retry later": the SDK reads that as UNAVAILABLE and retries it, the front door answers it with HTTP 503 and
Retry-After. TensorRT-LLM's refusals say otherwise and reach a BLS caller as INTERNAL: its executor's "Maximum
queue size of N has been reached, please try again later" (tensorrt_llm/executor, a full executor queue) and
Triton's own "Exceeds maximum queue size" (a full model queue). `as_overload` puts those in the same words
wherever an engine's error passes on its way to a client (the front model, the front door). Standard library
only: Triton's Python models and the front door both import it.
"""

from __future__ import annotations

__all__ = ["OVERLOADED", "as_overload"]

OVERLOADED = "server overloaded"
"""The prefix of every refusal for load; clients retry it (UNAVAILABLE, HTTP 503)."""
_QUEUE_FULL = ("maximum queue size of", "exceeds maximum queue size")


def as_overload(message: str) -> str | None:
    """The retryable refusal an engine error means, or None when it is another error: our own refusals as they
    are, a full TensorRT-LLM or Triton queue as "server overloaded: the engine's queue is full (...)"."""
    lowered = message.lower()
    if lowered.startswith(OVERLOADED):
        return message
    if any(marker in lowered for marker in _QUEUE_FULL):
        return f"{OVERLOADED}: the engine's queue is full ({' '.join(message.split())}); retry later"
    return None
