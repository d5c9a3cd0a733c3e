"""A missing or wrong admin key comes back from Triton as UNAVAILABLE: the SDK raises a non-retryable
AuthenticationError for it, not a retried connection error (issue 15, finding 6)."""

from __future__ import annotations

import grpc
import pytest

from mentallama import AuthenticationError, MentaLLaMAClient, RetryPolicy
from mentallama._transport import error_from_status
from tests.support.fake_transport import Fail, ScriptedTransport

TRITON_REFUSAL = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"


def test_restricted_refusal_is_an_authentication_error_and_not_retried():
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, TRITON_REFUSAL, "r1")
    assert isinstance(error, AuthenticationError)
    assert error.status is grpc.StatusCode.PERMISSION_DENIED and error.request_id == "r1"
    assert not RetryPolicy(max_retries=3).should_retry(error, responses_received=0, retries_done=0)


def test_other_unavailable_stays_retryable():
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", None)
    assert not isinstance(error, AuthenticationError)
    assert RetryPolicy(max_retries=3).should_retry(error, responses_received=0, retries_done=0)


def test_the_client_raises_the_refusal_at_once_and_keeps_the_endpoint():
    transport = ScriptedTransport(default=[Fail(grpc.StatusCode.UNAVAILABLE, TRITON_REFUSAL)])
    with MentaLLaMAClient(["a:1", "b:2"], transport=transport, max_retries=3) as client:
        with pytest.raises(AuthenticationError) as info:
            client.generate("Hello", request_id="r2")
        assert info.value.request_id == "r2"
        assert len(transport.requests) == 1  # neither retried nor failed over: the key is wrong everywhere
        assert client._pool.is_up("a:1")  # the endpoint is reachable: it is not skipped
