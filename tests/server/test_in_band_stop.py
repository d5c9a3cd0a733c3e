"""In-band stop on the real server: a `stop` request with a running request's id ends it, and the SDK
stops a stream it leaves early that way instead of cancelling the gRPC call (Triton 2.51 aborts under
many stream cancellations: docs/RELIABILITY.md)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mentallama import AsyncMentaLLaMAClient, InvalidRequestError, MentaLLaMAClient
from mentallama import _transport as transport_module
from mentallama._transport import SyncTransport, build_request, stop_request
from tests.support.metrics import wait_engine

pytestmark = pytest.mark.server

LONG = {"max_tokens": 1000, "min_tokens": 1000}  # far longer than any test waits


def _generation(request_id: str):
    inputs = {"text_input": "Tell me a story", "stream": True, "return_num_output_tokens": True, **LONG}
    return build_request("mentallama", request_id, inputs)


def _send_stop(transport: SyncTransport, endpoint: str, request_id: str) -> list:
    stop = build_request("mentallama", request_id, {"text_input": "", "max_tokens": 1, "stop": True})
    return list(transport.stream(endpoint, stop, timeout=10, headers={}))


def _stop_one_run(endpoint: str, request_id: str) -> tuple[list, list, float]:
    """Start a long generation, stop it after two chunks: (the stop's answer, the rest of the stream, seconds)."""
    transport = SyncTransport(None)
    try:
        events = transport.stream(endpoint, _generation(request_id), timeout=60, headers={})
        first = [next(events), next(events)]
        assert not any(e.final for e in first)
        stopped_at = time.monotonic()
        answer = _send_stop(transport, endpoint, request_id)
        rest = list(events)
        return answer, rest, time.monotonic() - stopped_at
    finally:
        transport.close()


def test_stop_request_ends_the_running_request_with_its_id(cpu_server) -> None:
    # The tiny engine makes 1,000 tokens in a fraction of a second: on a busy machine the whole generation can
    # end before the stop arrives (seen once), so up to three tries must show one stopped early.
    for attempt in range(3):
        answer, rest, elapsed = _stop_one_run(cpu_server.grpc_url, f"stop-me-{attempt}")
        # The stop request gets one empty final response; the stopped request ends with its final response.
        assert [(e.text, e.final) for e in answer] == [("", True)]
        assert rest and rest[-1].final
        assert elapsed < 5
        if (rest[-1].num_output_tokens or 0) < LONG["max_tokens"]:
            break
    assert (rest[-1].num_output_tokens or 0) < LONG["max_tokens"]
    wait_engine(cpu_server.metrics_url, busy=False, within_s=5)


def test_stop_of_an_unknown_or_finished_request_is_answered_without_error(cpu_server) -> None:
    transport = SyncTransport(None)
    try:
        answer = _send_stop(transport, cpu_server.grpc_url, "no-such-request")
    finally:
        transport.close()
    assert [(e.text, e.final) for e in answer] == [("", True)]


def test_stop_without_a_request_id_is_refused(cpu_server) -> None:
    transport = SyncTransport(None)
    stop = build_request("mentallama", "", {"text_input": "", "max_tokens": 1, "stop": True})
    try:
        with pytest.raises(InvalidRequestError, match="request id"):
            list(transport.stream(cpu_server.grpc_url, stop, timeout=10, headers={}))
    finally:
        transport.close()


def test_stop_request_is_built_from_the_generation() -> None:
    generation = _generation("abc")
    stop = stop_request(generation)
    assert (stop.model_name, stop.id) == ("mentallama", "abc")
    assert {t.name for t in stop.inputs} == {"text_input", "max_tokens", "stop"}


class _CallSpy:
    """Counts `cancel()` on the gRPC calls the SDK opens (real calls, observed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cancelled = 0
        spy = self

        def wrap(stub_factory):
            def make(channel):
                stub = stub_factory(channel)
                open_stream = stub.ModelStreamInfer

                def stream_infer(*args, **kwargs):
                    call = open_stream(*args, **kwargs)
                    cancel = call.cancel

                    def counted_cancel():
                        spy.cancelled += 1
                        return cancel()

                    call.cancel = counted_cancel
                    return call

                stub.ModelStreamInfer = stream_infer
                return stub

            return make

        grpc_module = transport_module.service_pb2_grpc
        monkeypatch.setattr(grpc_module, "GRPCInferenceServiceStub", wrap(grpc_module.GRPCInferenceServiceStub))


def test_sdk_stops_a_stream_left_early_without_cancelling_the_call(cpu_server, monkeypatch) -> None:
    spy = _CallSpy(monkeypatch)
    with MentaLLaMAClient(cpu_server.grpc_url, max_retries=0, timeout=60) as client:
        with client.generate_stream("Tell me a story", **LONG) as stream:
            next(stream)
            wait_engine(cpu_server.metrics_url, busy=True, within_s=2)
        assert stream.final().finish_reason == "cancelled"
        wait_engine(cpu_server.metrics_url, busy=False, within_s=5)

    async def leave_async_stream_and_cancel_a_task() -> None:
        async with AsyncMentaLLaMAClient(cpu_server.grpc_url, max_retries=0, timeout=60) as client:
            async with client.generate_stream("Tell me a story", **LONG) as stream:
                async for _ in stream:
                    break
            assert stream.generation.finish_reason == "cancelled"
            task = asyncio.create_task(client.generate("Tell me a story", **LONG))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(leave_async_stream_and_cancel_a_task())
    wait_engine(cpu_server.metrics_url, busy=False, within_s=5)
    assert spy.cancelled == 0
