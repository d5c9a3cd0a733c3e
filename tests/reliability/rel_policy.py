"""A retry policy that records what the SDK asked of it (a subclass of the real one, not a mock)."""

from __future__ import annotations

import threading
from typing import Any

from mentallama import RetryPolicy


class RecordingPolicy(RetryPolicy):
    """The SDK's `RetryPolicy`, recording each backoff asked for and each request sent again whole.

    `delay_scale` shortens (or lengthens) the real backoff; the numbers recorded are `retries_done`.
    """

    def __init__(self, delay_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "delay_scale", delay_scale)  # frozen dataclass
        object.__setattr__(self, "delays", [])
        object.__setattr__(self, "resent", [])
        object.__setattr__(self, "_lock", threading.Lock())

    def delay(self, retries_done: int) -> float:
        with self._lock:
            self.delays.append(retries_done)
        return super().delay(retries_done) * self.delay_scale

    def resendable(self, error: BaseException) -> bool:
        decision = super().resendable(error)
        if decision:
            with self._lock:
                self.resent.append(getattr(error, "request_id", None))
        return decision
