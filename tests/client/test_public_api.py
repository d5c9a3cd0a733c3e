"""The public API of ``mentallama``: ``__all__`` complete, importable, and the error tree as documented."""

from __future__ import annotations

import pickle

import grpc
import pytest

import mentallama
from mentallama import _constants, _exceptions


def test_all_names_are_importable_and_unique():
    assert len(mentallama.__all__) == len(set(mentallama.__all__))
    namespace: dict[str, object] = {}
    exec("from mentallama import *", namespace)  # noqa: S102 - the star import is what is tested
    assert set(mentallama.__all__) <= set(namespace)


def test_every_public_member_is_exported():
    """No public name lives in the package namespace without being in ``__all__`` (httpx's test)."""
    public_modules = {"cli", "evaluation", "evaluation_run", "label_model", "locations", "parsing", "prompts",
                      "tasks", "types"}  # fmt: skip
    modules = public_modules
    public = {name for name in vars(mentallama) if not name.startswith("_") and name not in modules}
    assert public - set(mentallama.__all__) == set()


def test_defaults_and_errors_are_all_exported():
    defaults = {name for name in _constants.__all__ if name.startswith("DEFAULT_")}
    assert defaults <= set(mentallama.__all__)
    assert set(_exceptions.__all__) <= set(mentallama.__all__)
    for name in ("MentaLLaMAClient", "AsyncMentaLLaMAClient", "build_prompt", "parse_response", "Analysis",
                 "Generation", "MentaLLaMAError", "APIConnectionError", "APITimeoutError",
                 "InvalidRequestError", "ServerError"):  # fmt: skip
        assert name in mentallama.__all__
    assert mentallama.MentaLLaMAClient.__module__ == "mentallama"


def test_error_tree_matches_the_docstring():
    m = mentallama
    assert issubclass(m.APITimeoutError, m.APIConnectionError)
    assert issubclass(m.ServerOverloadedError, m.ServerError)
    for cls in (m.APIConnectionError, m.InvalidRequestError, m.AuthenticationError, m.ServerError):
        assert cls.__bases__[0] is m.MentaLLaMAError
    assert issubclass(m.InvalidRequestError, ValueError)
    assert "APITimeoutError" in _exceptions.__doc__ and "ServerOverloadedError" in _exceptions.__doc__


def test_errors_carry_request_id_and_status_and_pickle():
    error = mentallama.APITimeoutError("too slow", request_id="r-1", status=grpc.StatusCode.DEADLINE_EXCEEDED)
    assert str(error) == "too slow (status=DEADLINE_EXCEEDED, request_id=r-1)"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is mentallama.APITimeoutError
    assert (copy.message, copy.request_id) == ("too slow", "r-1")
    assert copy.status is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be positive", "InvalidRequestError"),
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'x' is not found", "InvalidRequestError"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "APITimeoutError"),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", "APIConnectionError"),
        (grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size", "ServerOverloadedError"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests", "ServerOverloadedError"),
        (grpc.StatusCode.UNAUTHENTICATED, "no token", "AuthenticationError"),
        (grpc.StatusCode.INTERNAL, "generation failed", "ServerError"),
        (grpc.StatusCode.UNIMPLEMENTED, "unary inference on a decoupled model", "ServerError"),
        (None, "in ensemble 'ensemble', top_p must be in (0, 1]", "InvalidRequestError"),  # in-band, no code
    ],
)
def test_grpc_status_mapping_in_one_place(status, details, expected):
    from mentallama._transport import error_from_status

    error = error_from_status(status, details, "req")
    assert type(error).__name__ == expected
    assert error.request_id == "req" and error.status is not None


def test_client_methods_documented():
    for cls in (mentallama.MentaLLaMAClient, mentallama.AsyncMentaLLaMAClient):
        for name in ("analyze", "analyze_stream", "analyze_many", "generate", "generate_stream",
                     "generate_many", "health", "close", "with_options"):  # fmt: skip
            assert getattr(cls, name).__doc__, f"{cls.__name__}.{name}"
