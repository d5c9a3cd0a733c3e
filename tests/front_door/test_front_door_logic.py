"""The front door's logic without sockets: admission, the JSON mapping, and one client stream driven by hand
against a scripted upstream (the real-server tests are in the other files of this folder)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from mentallama._transport import build_request
from mentallama_server.front_door.admission import Admission, Refused
from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.front_door.grpc_front import GrpcFront
from mentallama_server.front_door.tensors import check_sequences, generate_request, load_json, response_json
from mentallama_server.front_door.upstream import FINAL, is_final

INPUTS = {"text_input": ("BYTES", [1]), "max_tokens": ("INT32", [1]), "stop_words": ("BYTES", [-1]),
          "seed": ("UINT64", [1]), "stream": ("BOOL", [1])}  # fmt: skip


class ScriptedPool:
    """Upstream double: each request's responses are ready at once (the fastest upstream there can be)."""

    def __init__(self, answers: list[service_pb2.ModelStreamInferResponse]) -> None:
        self.answers = answers
        self.submitted: list[service_pb2.ModelInferRequest] = []
        self.stopped: list[str] = []

    def submit(self, request: service_pb2.ModelInferRequest) -> asyncio.Queue:
        self.submitted.append(request)
        queue: asyncio.Queue = asyncio.Queue()
        for answer in self.answers:
            message = service_pb2.ModelStreamInferResponse()
            message.CopyFrom(answer)
            message.infer_response.id = request.id
            queue.put_nowait((message, is_final(message)))
        return queue

    def stop_later(self, ticket: Any) -> None:
        self.stopped.append(ticket.upstream_id)

    async def stop_for(self, admission: Admission, client: str, client_id: str, model: str) -> None:
        self.stopped += [ticket.upstream_id for ticket in admission.to_stop(client, client_id)]


class Context:
    def invocation_metadata(self) -> tuple:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def _one_stream(pool: ScriptedPool, *requests: service_pb2.ModelInferRequest) -> list:
    front = GrpcFront(FrontDoorConfig(upstream_grpc="unused"), pool, Admission(8, 8))  # type: ignore[arg-type]

    async def incoming():
        for request in requests:
            yield request

    return [message async for message in front.stream_infer(incoming(), Context())]


def test_an_answer_that_comes_before_the_stream_is_read_to_its_end_is_still_sent() -> None:
    """The stream ended with no response when the upstream answered before the client's half-close was seen
    (~1 in 30 refused requests on the real server): the last wake-up came with the answer still queued."""
    error = service_pb2.ModelStreamInferResponse(error_message="[request id: x] max_tokens must be positive")
    pool = ScriptedPool([error])
    request = build_request("mentallama", "mine", {"text_input": "Hi", "max_tokens": 0})
    (answer,) = asyncio.run(_one_stream(pool, request))
    assert answer.error_message.startswith("[request id: x]") and answer.infer_response.id == "mine"
    assert pool.submitted[0].id != "mine" and pool.submitted[0].id.endswith(".0")  # namespaced upstream


def test_the_empty_final_response_reaches_only_clients_that_asked_for_it() -> None:
    text = service_pb2.ModelStreamInferResponse()
    text.infer_response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    text.infer_response.parameters[FINAL].bool_param = False
    empty_final = service_pb2.ModelStreamInferResponse()
    empty_final.infer_response.parameters[FINAL].bool_param = True
    asked = build_request("mentallama", "a", {"text_input": "Hi", "max_tokens": 2})  # the SDK asks for it
    not_asked = build_request("mentallama", "b", {"text_input": "Hi", "max_tokens": 2})
    del not_asked.parameters["triton_enable_empty_final_response"]
    assert len(asyncio.run(_one_stream(ScriptedPool([text, empty_final]), asked))) == 2
    assert len(asyncio.run(_one_stream(ScriptedPool([text, empty_final]), not_asked))) == 1


def test_a_stop_with_no_running_request_is_answered_at_the_door() -> None:
    pool = ScriptedPool([])
    stop = build_request("mentallama", "nothing-running", {"text_input": "", "max_tokens": 1, "stop": True})
    (answer,) = asyncio.run(_one_stream(pool, stop))
    assert not answer.error_message and answer.infer_response.parameters[FINAL].bool_param
    assert pool.submitted == []  # nothing went upstream


def test_admission_limits_per_client_and_in_all_and_gives_places_back() -> None:
    admission = Admission(max_in_flight=3, max_per_client=2)
    a1, _ = admission.admit("a", "1", "mentallama"), admission.admit("a", "1", "mentallama")
    with pytest.raises(Refused, match="per client") as per_client:
        admission.admit("a", "2", "mentallama")
    assert per_client.value.status == 429
    admission.admit("b", "1", "mentallama")
    with pytest.raises(Refused, match="limit 3") as in_all:
        admission.admit("c", "1", "mentallama")
    assert in_all.value.status == 503
    assert len(admission.to_stop("a", "1")) == 2 and admission.to_stop("b", "2") == []
    admission.release(a1)
    assert len(admission.to_stop("a", "1")) == 1 and admission.in_flight == 2
    assert Admission.client_of("ipv4:1.2.3.4:1", None) != Admission.client_of("ipv4:1.2.3.4:2", None)


def test_generate_json_maps_to_tensors_with_checked_values() -> None:
    body = {"id": "r1", "text_input": "Hi", "max_tokens": 4, "stop_words": ["a", "b"], "seed": 2**64 - 1,
            "parameters": {"priority": 1}, "accumulate_tokens": True}  # fmt: skip
    request = generate_request("mentallama", body, INPUTS)
    shapes = {t.name: list(t.shape) for t in request.inputs}
    assert shapes == {"text_input": [1, 1], "max_tokens": [1, 1], "stop_words": [1, 2], "seed": [1, 1]}
    assert request.id == "r1" and request.parameters["accumulate_tokens"].bool_param  # kept, as Triton does
    batch = generate_request("mentallama", {"text_input": ["a", "b"], "max_tokens": [[2], [3]]}, INPUTS)
    assert [list(t.shape) for t in batch.inputs] == [[2, 1], [2, 1]]
    for bad, match in (({"max_tokens": 2**31}, "outside the range of INT32"), ({"stream": 1}, "true or false"),
                       ({"text_input": None}, "must be a string"), ({"id": 5}, "id must be a string"),
                       ({"parameters": {"x": [1]}}, "parameter x")):  # fmt: skip
        with pytest.raises(Refused, match=match):
            generate_request("mentallama", bad, INPUTS)


def test_json_nesting_is_measured_without_recursion() -> None:
    with pytest.raises(Refused, match="nested 200001 levels"):
        load_json(b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", 16)
    assert load_json(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[["}', 16) == {"a": "[" * 24}  # brackets inside strings


def test_outputs_come_back_as_generate_returns_them() -> None:
    response = service_pb2.ModelInferResponse(model_name="mentallama", model_version="1")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(len(b"ok").to_bytes(4, "little") + b"ok")
    response.outputs.add(name="batch_index", datatype="INT32", shape=[1, 1])
    response.raw_output_contents.append((0).to_bytes(4, "little"))
    assert response_json(response, "r") == {"id": "r", "model_name": "mentallama", "model_version": "1",
                                            "text_output": "ok", "batch_index": 0}  # fmt: skip


def test_a_lost_upstream_ends_the_client_rpc_unavailable_as_a_dead_triton_would() -> None:
    """Not an in-band error (which the SDK and tritonclient read as a bad request): the RPC status UNAVAILABLE,
    which clients retry elsewhere (tests/reliability/test_rel_engine_crash.py kills the engine for real)."""
    lost = service_pb2.ModelStreamInferResponse(
        error_message="the inference server is not reachable: it closed the stream (UNAVAILABLE); retry later"
    )
    request = build_request("mentallama", "mine", {"text_input": "Hi", "max_tokens": 4})
    with pytest.raises(AssertionError, match="aborted: StatusCode.UNAVAILABLE the inference server is not reachable"):
        asyncio.run(_one_stream(ScriptedPool([lost]), request))


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("Stub process 'tensorrt_llm_0_0' is not healthy.", 503),  # Triton's words when a model's process died
        ("in ensemble 'ensemble', Stub process 'tensorrt_llm_0_0' is not healthy.", 503),
        ("server overloaded: 512 requests in flight; retry later", 503),
        ("engine step failed: KeyError: 'x'", 500),
        ("max_tokens must be at least 1", 400),
    ],
)
def test_upstream_errors_map_to_http_statuses_a_client_can_act_on(message: str, status: int) -> None:
    from mentallama_server.front_door.http_front import status_of

    assert status_of(message) == status


# ---- beams and sequences per prompt: capped at the door (the GPU path has no cap of its own on samples) ------


def _with_sequences(name: str, values: list[int], raw: bool, datatype: str = "INT32") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="ensemble")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=[len(values), 1])
    if raw:
        dtype = {"INT32": "<i4", "INT64": "<i8", "UINT8": "u1"}[datatype]
        request.raw_input_contents.append(np.array(values, dtype=dtype).tobytes())
    elif datatype == "INT64":
        tensor.contents.int64_contents.extend(values)
    else:
        tensor.contents.int_contents.extend(values)
    return request


@pytest.mark.parametrize("raw", [False, True], ids=["contents", "raw"])
@pytest.mark.parametrize("name", ["beam_width", "num_return_sequences"])
def test_beams_and_sequences_above_the_cap_are_refused_naming_the_input(name: str, raw: bool) -> None:
    check_sequences(_with_sequences(name, [4, 1, 3], raw), 4)
    for values, words in (([5], f"{name} is 5; this server serves at most 4"), ([1, 2**31 - 1], "2147483647"),
                          ([0], f"{name} must be >= 1, got 0"), ([-7], "got -7")):  # fmt: skip
        with pytest.raises(Refused, match=re.escape(words)) as caught:
            check_sequences(_with_sequences(name, values, raw), 4)
        assert caught.value.status == 400 and caught.value.grpc_code == "INVALID_ARGUMENT"
    with pytest.raises(Refused, match="10000000000"):  # a wider type (Triton would refuse it; we never pass it on)
        check_sequences(_with_sequences(name, [10**10], raw, "INT64"), 4)


def test_a_sequence_input_that_is_not_an_integer_is_refused() -> None:
    request = service_pb2.ModelInferRequest(model_name="ensemble")
    request.inputs.add(name="beam_width", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1e9)
    with pytest.raises(Refused, match="beam_width must be an integer input"):
        check_sequences(request, 4)


def test_the_grpc_door_refuses_a_huge_beam_width_before_anything_goes_upstream() -> None:
    pool = ScriptedPool([])
    request = build_request("ensemble", "wide", {"text_input": "Hi", "max_tokens": 2, "beam_width": 10**6})
    (answer,) = asyncio.run(_one_stream(pool, request))
    assert "beam_width is 1000000; this server serves at most 4" in answer.error_message
    assert answer.infer_response.id == "wide" and pool.submitted == []
