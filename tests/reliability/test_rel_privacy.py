"""Posts are sensitive: neither the server (default log level) nor the SDK writes request or response text
anywhere. A canary post (a unique random string) goes through the SDK; then no log may contain it."""

from __future__ import annotations

import logging
import uuid

import pytest

from mentallama import InvalidRequestError, MentaLLaMAClient
from tests.reliability.rel_grpc import live_and_ready

pytestmark = pytest.mark.server


def _files_containing(root, needle: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_canary_post_appears_in_no_log(cpu_server, caplog):
    canary = f"canary-{uuid.uuid4().hex}"
    post = f"I keep thinking about {canary} and I cannot sleep at night."
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's ("mentallama") and grpc's included
    logging.getLogger("mentallama").debug("capture check")
    errors: list[Exception] = []
    with MentaLLaMAClient(cpu_server.grpc_url, timeout=60, max_retries=0) as client:
        answer = client.analyze(post, "depression", max_tokens=8)
        with client.analyze_stream(post, "stress", max_tokens=8) as stream:
            streamed = "".join(stream)
        generated = client.generate(post, max_tokens=8)
        for call in (
            lambda: client.analyze(post, "depression", max_tokens=10**6),  # refused by the server
            lambda: client.generate(post + "\x00", max_tokens=8),  # refused by the server (NUL byte)
            lambda: client.analyze(post, "irf"),  # refused by the SDK: irf needs an aspect
        ):
            with pytest.raises(InvalidRequestError) as info:
                call()
            errors.append(info.value)
    assert answer.num_output_tokens == 8 and streamed and generated.num_input_tokens > 10
    assert live_and_ready(cpu_server.grpc_url, "mentallama")

    assert "capture check" in caplog.text  # the SDK's DEBUG records are captured
    assert canary not in caplog.text
    for error in errors:
        assert canary not in str(error) and canary not in repr(error)
    needle = canary.encode()
    assert needle not in cpu_server.log_path.read_bytes()
    assert _files_containing(cpu_server.run_dir, needle) == []
    # The model's text is no more logged than the post: the answers' text appears nowhere either.
    for text in {answer.raw.strip(), streamed.strip(), generated.text.strip()}:
        if len(text) >= 12:
            assert text.encode() not in cpu_server.log_path.read_bytes()
            assert text not in caplog.text
