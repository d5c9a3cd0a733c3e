"""Errors raised by the SDK: one root, transport failures apart from server answers.

Hierarchy::

    MentaLLaMAError                 root of everything the SDK raises on purpose
    ├── APIConnectionError          no complete answer: endpoint unreachable, TLS failure, stream cut
    │   └── APITimeoutError         the call's deadline passed (DEADLINE_EXCEEDED)
    ├── InvalidRequestError         refused as sent (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE, ...),
    │                               or caught by the SDK before sending; also a ``ValueError``
    ├── AuthenticationError         UNAUTHENTICATED / PERMISSION_DENIED (a proxy in front of Triton)
    └── ServerError                 the server failed (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)
        └── ServerOverloadedError   RESOURCE_EXHAUSTED, or UNAVAILABLE sent by a reachable server
                                    (queue full, model not ready)

Every error carries the ``request_id`` the request was sent with (match it with server logs) and
the gRPC ``status`` (``None`` when the SDK raised it without asking the server). Messages never
contain the request text: posts are sensitive.
"""

from __future__ import annotations

import grpc

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "InvalidRequestError",
    "MentaLLaMAError",
    "ServerError",
    "ServerOverloadedError",
]


class MentaLLaMAError(Exception):
    """Root of the SDK's errors."""

    def __init__(
        self, message: str, *, request_id: str | None = None, status: grpc.StatusCode | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        """Id the request was sent with (``None`` for calls that are not requests, e.g. health)."""
        self.status = status
        """gRPC status code of the failure; ``None`` when raised by the SDK itself."""

    def __str__(self) -> str:
        details = [f"status={self.status.name}"] if self.status is not None else []
        if self.request_id is not None:
            details.append(f"request_id={self.request_id}")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __reduce__(self):  # keyword-only arguments: keep errors picklable (process pools, pytest-xdist)
        return _rebuild, (type(self), self.message, self.request_id, self.status)


def _rebuild(
    cls: type[MentaLLaMAError], message: str, request_id: str | None, status: grpc.StatusCode | None
) -> MentaLLaMAError:
    return cls(message, request_id=request_id, status=status)


class APIConnectionError(MentaLLaMAError):
    """The server could not be reached, or the stream broke before the final response."""


class APITimeoutError(APIConnectionError):
    """The call's deadline passed; the server was told to cancel the request."""


class InvalidRequestError(MentaLLaMAError, ValueError):
    """The request is invalid as sent; retrying it unchanged fails the same way."""


class AuthenticationError(MentaLLaMAError):
    """Credentials were missing or refused."""


class ServerError(MentaLLaMAError):
    """The server accepted the request but failed to answer it."""


class ServerOverloadedError(ServerError):
    """The server is reachable but cannot take the request now; retried with backoff."""
