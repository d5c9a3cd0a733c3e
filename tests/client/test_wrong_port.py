"""Pointing the SDK or the CLI at an HTTP port (issue 22): a hint naming the gRPC port, not "no server at ..."."""

from __future__ import annotations

import grpc
import pytest
from typer.testing import CliRunner

from mentallama import APIConnectionError, MentaLLaMAClient
from mentallama._transport import HTTP_PORT_HINT, error_from_status
from mentallama.cli import app

HTTP1 = ("failed to connect to all addresses; last error: INTERNAL: ipv4:127.0.0.1:8000: Failed parsing HTTP/2 "
         "(Expected SETTINGS frame as the first frame, got frame type 80) (Trying to connect an http1.x server "
         "(HTTP status 400))")  # fmt: skip


def test_an_http1_answer_becomes_the_hint() -> None:
    error = error_from_status(grpc.StatusCode.UNAVAILABLE, HTTP1, "r1")
    assert isinstance(error, APIConnectionError) and error.message.startswith(HTTP_PORT_HINT)
    assert "8001" in error.message and error.status is grpc.StatusCode.UNAVAILABLE
    refused = error_from_status(grpc.StatusCode.UNAVAILABLE, "failed to connect: Connection refused", "r2")
    assert HTTP_PORT_HINT not in refused.message


@pytest.mark.server
def test_sdk_and_cli_at_the_http_port_say_which_port_to_use(cpu_server) -> None:
    http = f"{cpu_server.opts.host}:{cpu_server.opts.http_port}"
    with MentaLLaMAClient(http, max_retries=0, timeout=20) as client, pytest.raises(APIConnectionError) as caught:
        client.analyze("I cannot sleep.", "DR", max_tokens=4)
    assert HTTP_PORT_HINT in str(caught.value)
    result = CliRunner().invoke(app, ["analyze", "-e", http, "--max-tokens", "4", "I cannot sleep."])
    assert result.exit_code == 1
    assert f"{http}: {HTTP_PORT_HINT}" in result.stderr and "no server at" not in result.stderr
