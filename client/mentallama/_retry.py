"""Which failures are retried, and how long to wait before the next try.

Only failures that happened before the server sent anything are retried: once a response has
arrived the server has done work (and, when streaming, the caller may have seen text), so a retry
would generate twice. The retryable statuses are the transient ones: UNAVAILABLE (endpoint down,
server starting or queue full) and RESOURCE_EXHAUSTED. A passed deadline is not retried: the
``timeout`` covers the whole call, retries included.

One exception, decided by :meth:`RetryPolicy.resendable`: a call that returns its answer whole
(``analyze``, ``generate``) drops a partial answer whose stream broke with a transient status (the
server died, the connection was cut) and sends the request again as a whole, so each call still gets
exactly one answer. Streams never do this: their caller has seen the text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import grpc

from ._constants import DEFAULT_MAX_RETRIES, INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from ._exceptions import APITimeoutError, MentaLLaMAError

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy"]

RETRYABLE_STATUSES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; subclass and override either method to change it.

    Parameters
    ----------
    max_retries: retries after the first try (0 disables retrying).
    initial_delay: seconds before the first retry; doubled for each further retry.
    max_delay: cap of one sleep.
    jitter: fraction of the delay drawn at random and subtracted, so that clients that failed
        together do not come back together.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = INITIAL_RETRY_DELAY
    max_delay: float = MAX_RETRY_DELAY
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def retryable(self, error: BaseException, *, responses_received: int) -> bool:
        """True when ``error`` is transient and struck before the server sent anything."""
        if responses_received > 0 or not isinstance(error, MentaLLaMAError):
            return False
        return not isinstance(error, APITimeoutError) and error.status in RETRYABLE_STATUSES

    def should_retry(self, error: BaseException, *, responses_received: int, retries_done: int) -> bool:
        """True when ``error`` is retryable and retries are left."""
        if retries_done >= self.max_retries:
            return False
        return self.retryable(error, responses_received=responses_received)

    def resendable(self, error: BaseException) -> bool:
        """True when a request whose stream broke with ``error`` after responses arrived may be sent
        again as a whole by a call that has handed none of them out (override to return False to turn
        this off)."""
        return self.retryable(error, responses_received=0)

    def delay(self, retries_done: int) -> float:
        """Seconds to sleep before retry number ``retries_done + 1``."""
        base = min(self.max_delay, self.initial_delay * (2.0**retries_done))
        return base * (1.0 - self.jitter * self.rng.random())
