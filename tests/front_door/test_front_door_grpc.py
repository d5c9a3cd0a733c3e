"""The front door's gRPC endpoint on the real server (issue 18): ids namespaced per client, only the entry models
reachable, admin APIs closed, limits per client and in all, no cancellation reaching Triton."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mentallama._transport import build_request
from tests.server.test_bad_input import assert_still_serving
from tests.support.metrics import wait_engine

pytestmark = pytest.mark.server
LONG = {"text_input": "Tell me a story", "stream": True, "max_tokens": 1000, "min_tokens": 1000}
STOP = {"text_input": "", "max_tokens": 1, "stop": True}


def connection(url: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    """A stub on a TCP connection of its own (grpc shares connections between channels by default): another
    client, as another process or host would be."""
    channel = grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)])
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def stop(stub, request_id: str, model: str = "mentallama") -> list:
    return list(stub.ModelStreamInfer(iter([build_request(model, request_id, STOP)]), timeout=10))


def test_another_client_cannot_stop_my_request_even_with_the_same_id(cpu_server) -> None:
    mine, other = connection(cpu_server.grpc_url), connection(cpu_server.grpc_url)
    stream = mine.ModelStreamInfer(iter([build_request("mentallama", "1", LONG)]), timeout=60)
    next(stream)
    assert [m.infer_response.parameters["triton_final_response"].bool_param for m in stop(other, "1")] == [True]
    later = [next(stream) for _ in range(5)]  # still producing: the other client's "1" is not mine
    assert all(m.infer_response.id == "1" and not m.error_message for m in later)  # my own id back
    assert not any(m.infer_response.parameters["triton_final_response"].bool_param for m in later)
    stop(mine, "1")  # my own stop, on another stream of my connection (as the SDK sends it)
    rest = list(stream)
    assert rest and rest[-1].infer_response.parameters["triton_final_response"].bool_param
    wait_engine(cpu_server.metrics_url, busy=False, within_s=5)


def test_two_clients_numbering_their_requests_alike_do_not_collide(cpu_server) -> None:
    a, b = connection(cpu_server.grpc_url), connection(cpu_server.grpc_url)
    inputs = {"text_input": "Hello", "max_tokens": 6, "stream": True}
    results = {}

    def run(name: str, stub) -> None:
        results[name] = list(stub.ModelStreamInfer(iter([build_request("mentallama", "1", inputs)]), timeout=60))

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for messages in results.values():
        assert not any(m.error_message for m in messages)
        assert messages[-1].infer_response.parameters["triton_final_response"].bool_param


def test_internal_models_are_not_reachable(cpu_server) -> None:
    stub = connection(cpu_server.grpc_url)
    for model in ("tensorrt_llm", "preprocessing", "postprocessing"):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert not stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=10).ready
    # A stop sent to the engine step would cut `ensemble` streams (finding 6): refused.
    (answer,) = list(stub.ModelStreamInfer(iter([build_request("tensorrt_llm", "x", STOP)]), timeout=10))
    assert "unknown model" in answer.error_message
    assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="ensemble"), timeout=10).name == "ensemble"


def test_admin_apis_are_closed_without_the_admin_key(cpu_server) -> None:
    stub = connection(cpu_server.grpc_url)
    calls = [
        lambda: stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=""), timeout=10),
        lambda: stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest(), timeout=10),
        lambda: stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10),
        lambda: stub.ModelConfig(service_pb2.ModelConfigRequest(name="mentallama"), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_unary_infer_on_the_decoupled_models_answers_as_triton_does(cpu_server) -> None:
    with pytest.raises(grpc.RpcError) as info:
        connection(cpu_server.grpc_url).ModelInfer(build_request("mentallama", "u", {"text_input": "Hi",
                                                                                     "max_tokens": 2}))  # fmt: skip
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and "decoupled" in info.value.details()


def test_requests_past_the_limits_are_refused_as_unavailable_and_capacity_returns(cpu_server, front_door_with):
    door = front_door_with(max_in_flight=3, max_in_flight_per_client=2)
    # The tiny engine makes the held requests' 1,000 tokens in about a second: on a busy machine one can end
    # before the refusals are asked for, so up to three tries must show both limits.
    for attempt in range(3):
        refusals = _fill_and_overflow(cpu_server, door, attempt)
        if refusals is not None:
            break
    assert refusals is not None, "the held requests ended before the limits could be reached, three times"
    per_client, in_all = refusals
    assert per_client.startswith("server overloaded") and "per client" in per_client
    assert in_all.startswith("server overloaded") and "limit 3" in in_all
    # The places come back once the stopped requests' final responses reach the door (just after the engine
    # went idle): within seconds.
    a = connection(door.grpc_url)
    again = build_request("mentallama", "again", {"text_input": "Hi", "max_tokens": 2})
    deadline = time.monotonic() + 5
    while True:
        messages = list(a.ModelStreamInfer(iter([again]), timeout=30))
        if not any(m.error_message for m in messages) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(m.error_message for m in messages), messages


def _fill_and_overflow(cpu_server, door, attempt: int) -> tuple[str, str] | None:
    """Hold 2 requests on one client and 1 on another, ask for one more on each: the two refusals, or None when
    a held request ended first (then the limits were not full)."""
    a, b = connection(door.grpc_url), connection(door.grpc_url)
    streams = []
    try:
        for index in range(2):
            stream = a.ModelStreamInfer(iter([build_request("mentallama", f"a{attempt}-{index}", LONG)]), timeout=60)
            next(stream)
            streams.append(stream)
        per_client = list(a.ModelStreamInfer(iter([build_request("mentallama", "a-over", LONG)]), timeout=30))
        streams.append(b.ModelStreamInfer(iter([build_request("mentallama", f"b{attempt}", LONG)]), timeout=60))
        next(streams[-1])
        in_all = list(b.ModelStreamInfer(iter([build_request("mentallama", "b-over", LONG)]), timeout=30))
    finally:
        for stream in streams:
            stream.cancel()  # cancelled at the door: it stops them in band upstream and frees their places
        wait_engine(cpu_server.metrics_url, busy=False, within_s=10)
    if len(per_client) != 1 or len(in_all) != 1:
        return None
    return per_client[0].error_message, in_all[0].error_message


def _rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def _tritonserver_pid(cpu_server) -> int:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("tritonserver") and any(str(cpu_server.run_dir) in a for a in cmdline):
            return process.pid
    raise AssertionError("tritonserver not found")


def test_a_cancellation_storm_from_plain_clients_never_reaches_triton(cpu_server) -> None:
    """Finding 3: plain tritonclient workers that read one chunk and cancel. Through the door every cancel is an
    in-band stop; tritonserver stays up, answers, and the engine is idle after."""
    pid = _tritonserver_pid(cpu_server)
    deadline = time.monotonic() + 12
    done = [0]
    failures: list[str] = []

    def worker() -> None:
        while time.monotonic() < deadline:
            client = grpcclient.InferenceServerClient(cpu_server.grpc_url)
            first = threading.Event()
            client.start_stream(callback=lambda result, error, first=first: first.set())
            text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[b"Tell me a story"]], dtype=object))
            tokens = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
            tokens.set_data_from_numpy(np.array([[1000]], dtype=np.int32))
            streaming = grpcclient.InferInput("stream", [1, 1], "BOOL")
            streaming.set_data_from_numpy(np.array([[True]], dtype=bool))
            client.async_stream_infer("mentallama", [text, tokens, streaming], request_id="storm")
            if not first.wait(10):
                failures.append("no first chunk")
            client.stop_stream(cancel_requests=True)
            client.close()
            done[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert done[0] > 50 and not failures
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    wait_engine(cpu_server.metrics_url, busy=False, within_s=10)
    assert_still_serving(cpu_server.grpc_url, "mentallama")
    assert "Signal (6)" not in cpu_server.log_path.read_text(errors="replace")


def test_a_flood_of_tiny_requests_and_stops_leaves_memory_where_it_was(cpu_server) -> None:
    """Finding 4: pipelined tiny requests and stops on 4 streams. The door bounds what is in flight (the rest
    is refused at once), so memory returns to its level."""
    pid = _tritonserver_pid(cpu_server)
    front_pid = next(p.pid for p in psutil.process_iter(["cmdline"])
                     if "mentallama_server.front_door" in " ".join(p.info["cmdline"] or [])
                     and str(cpu_server.run_dir) in " ".join(p.info["cmdline"] or []))  # fmt: skip
    before = _rss_mib(pid) + _rss_mib(front_pid)
    tiny = {"text_input": "Hi", "max_tokens": 1}

    def flood(index: int) -> None:
        stub = connection(cpu_server.grpc_url)
        requests = (build_request("mentallama", f"f{index}-{n}", STOP if n % 2 else tiny) for n in range(5000))
        for _ in stub.ModelStreamInfer(requests, timeout=300):
            pass

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    wait_engine(cpu_server.metrics_url, busy=False, within_s=10)
    time.sleep(1)
    after = _rss_mib(pid) + _rss_mib(front_pid)
    assert after - before < 100, f"RSS {before:.0f} MiB before, {after:.0f} MiB after 20,000 requests"
    assert_still_serving(cpu_server.grpc_url, "mentallama")


def test_a_request_stopped_by_its_client_says_so_in_the_sdk(cpu_server) -> None:
    """A stop from another stream of the same client ends the request; the SDK calls it "stopped", not a
    complete answer (it was a bare final, shown as if nothing were missing)."""
    from mentallama import MentaLLaMAClient

    for attempt in range(3):  # the tiny engine can finish its 1,000 tokens before the stop on a busy machine
        with MentaLLaMAClient(cpu_server.grpc_url, max_retries=0, timeout=60) as client:
            request_id = f"job-{attempt}"
            with client.generate_stream("Tell me a story", max_tokens=1000, min_tokens=1000,
                                        request_id=request_id) as stream:  # fmt: skip
                next(stream)
                stub = client._transport.stub(cpu_server.grpc_url)  # the client's own connection
                stop_messages = list(stub.ModelStreamInfer(iter([build_request("mentallama", request_id, STOP)]),
                                                           timeout=10))  # fmt: skip
                assert not any(m.error_message for m in stop_messages)
                list(stream)
            generation = stream.final()
        if generation.finish_reason == "stopped":
            break
        assert generation.finish_reason == "length" and generation.num_output_tokens == 1000  # finished first
    assert generation.finish_reason == "stopped"
    assert (generation.num_output_tokens or 0) < 1000
