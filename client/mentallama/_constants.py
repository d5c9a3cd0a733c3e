"""Default values of the SDK, in one place (the clients, the retry policy and the CLI read them)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_ENDPOINT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "ENDPOINT_COOLDOWN",
    "ENV_ENDPOINTS",
    "ENV_MODEL",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_DELAY",
]

DEFAULT_ENDPOINT = "localhost:8001"
"""Triton's default gRPC port on this machine."""

DEFAULT_MODEL = "mentallama"
"""The server's front model: the ensemble interface, and it stops the engine when a client cancels."""

DEFAULT_TIMEOUT = 120.0
"""Seconds allowed for one call, retries included (a 256-token answer takes a few seconds on a GPU)."""

DEFAULT_MAX_TOKENS = 256
"""Enough for MentaLLaMA's label sentence plus its explanation (IMHI answers are ~50-200 tokens)."""

DEFAULT_MAX_RETRIES = 2
"""Retries of a request that failed before any response arrived, on a retryable status only."""

INITIAL_RETRY_DELAY = 0.5
"""Seconds before the first retry; doubles with every further retry."""

MAX_RETRY_DELAY = 8.0
"""Upper bound of one backoff sleep."""

ENDPOINT_COOLDOWN = 5.0
"""Seconds an endpoint that could not be reached is skipped before it is tried again."""

DEFAULT_CONCURRENCY = 8
"""Requests in flight at once in ``analyze_many``."""

ENV_ENDPOINTS = "MENTALLAMA_ENDPOINTS"
"""Comma-separated ``host:port`` list used when the client is given no endpoint."""

ENV_MODEL = "MENTALLAMA_MODEL"
"""Model name used when the client is given none."""
