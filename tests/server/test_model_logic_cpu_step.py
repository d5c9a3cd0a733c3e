"""`tensorrt_llm_cpu.CpuStep`, the CPU engine step's request life cycle, driven by a scripted engine (no OpenVINO, no
server): which replies a request gets, in which order, with the final flag once, whatever the engine does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mentallama_interface import ENGINE_ERROR_OUTPUT
from mentallama_server.engine.types import GenerationRequest, TokenEvent
from mentallama_server.models.request_errors import Limits
from mentallama_server.models.tensorrt_llm_cpu import (
    INPUTS,
    CpuStep,
    Reply,
    asks_errors_in_band,
    parse_request,
    parse_stop,
)
from mentallama_server.models.triton_params import check_inputs, parse_model_config
from tests.support import triton_stub


class WholeChunks:
    """A `Utf8Boundary` for a vocabulary without byte tokens: every chunk may end anywhere."""

    def safe_length(self, ids: list[int]) -> int:
        return len(ids)


class ScriptedEngine:
    """Holds submitted generations; the test emits their events. `refuse` names request ids it refuses."""

    def __init__(self, refuse: Callable[[str], bool] = lambda rid: False) -> None:
        self.callbacks: dict[str, Callable[[TokenEvent], None]] = {}
        self.requests: dict[str, GenerationRequest] = {}
        self.cancelled: list[str] = []
        self.refuse = refuse

    def submit(self, request: GenerationRequest, on_event: Callable[[TokenEvent], None]) -> None:
        if self.refuse(request.request_id):
            raise ValueError(f"engine refused {request.request_id}: input_ids out of vocabulary")
        self.requests[request.request_id] = request
        self.callbacks[request.request_id] = on_event

    def cancel(self, request_id: str) -> bool:
        self.cancelled.append(request_id)
        return request_id in self.callbacks

    def ids(self) -> list[str]:
        return list(self.callbacks)

    def emit(self, rid: str, tokens: list[int], finished: bool = False, error: str | None = None) -> None:
        self.callbacks[rid](TokenEvent(rid, tokens, None, finished or error is not None, None, error))


class Channel:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.cancelled = False

    def send(self, reply: Reply) -> None:
        assert not any(r.final for r in self.replies), "a reply after the final one"
        self.replies.append(reply)

    def is_cancelled(self) -> bool:
        return self.cancelled


def inputs(prompts: int = 1, max_tokens: int = 4, **extra: Any) -> dict[str, np.ndarray]:
    values = {
        "input_ids": np.tile(np.array([[1, 5, 6]], dtype=np.int32), (prompts, 1)),
        "input_lengths": np.full((prompts, 1), 3, dtype=np.int32),
        "request_output_len": np.full((prompts, 1), max_tokens, dtype=np.int32),
        "streaming": np.ones((prompts, 1), dtype=bool),
    }
    values.update({name: np.full((prompts, 1), value) for name, value in extra.items()})
    return values


def make_step(engine: ScriptedEngine, max_pending: int = 8) -> CpuStep:
    return CpuStep(engine, WholeChunks(), Limits(max_input_len=16, max_output_len=16), max_pending)  # type: ignore[arg-type]


def tokens_of(replies: list[Reply]) -> list[int]:
    return [t for r in replies if r.outputs is not None for t in r.outputs["output_ids"].reshape(-1).tolist()]


def test_streamed_tokens_then_the_final_flag_once() -> None:
    engine, channel = ScriptedEngine(), Channel()
    step = make_step(engine)
    step.submit(inputs(), "client", channel)
    (rid,) = engine.ids()
    assert rid.startswith("client#") and rid.endswith("/0")
    engine.emit(rid, [7, 8])
    engine.emit(rid, [9], finished=True)
    assert [r.final for r in channel.replies] == [False, True]
    assert tokens_of(channel.replies) == [7, 8, 9]
    assert step.active == {}


def test_a_request_of_two_prompts_ends_with_its_last_generation() -> None:
    engine, channel = ScriptedEngine(), Channel()
    step = make_step(engine)
    step.submit(inputs(prompts=2), "c", channel)
    first, second = engine.ids()
    engine.emit(second, [4], finished=True)  # one prompt done: the request is not
    assert [r.final for r in channel.replies] == [False]
    engine.emit(first, [3], finished=True)
    assert [r.final for r in channel.replies] == [False, True]
    assert [int(r.outputs["batch_index"][0, 0]) for r in channel.replies] == [1, 0]


@pytest.mark.parametrize("in_band", [True, False])
def test_an_error_after_output_is_sent_as_the_caller_asked(in_band: bool) -> None:
    engine, channel = ScriptedEngine(), Channel()
    step = make_step(engine)
    step.submit(inputs(), "c", channel, errors_in_band=in_band)
    (rid,) = engine.ids()
    engine.emit(rid, [7])
    engine.emit(rid, [], error="engine step failed: boom")
    last = channel.replies[-1]
    assert len(channel.replies) == 2 and last.final
    if in_band:  # Triton 2.51's BLS loses an error response after a normal one: the cause travels as an output
        assert last.error is None and last.outputs is not None
        assert last.outputs[ENGINE_ERROR_OUTPUT].tolist() == [[b"engine step failed: boom"]]
    else:
        assert last.outputs is None and last.error == "engine step failed: boom" and last.code == "INTERNAL"


def test_an_error_before_any_output_is_an_error_response_even_in_band() -> None:
    engine, channel = ScriptedEngine(), Channel()
    make_step(engine).submit(inputs(), "c", channel, errors_in_band=True)
    engine.emit(engine.ids()[0], [], error="the engine dropped the request")
    assert [(r.error, r.final) for r in channel.replies] == [("the engine dropped the request", True)]


def test_an_error_in_one_prompt_stops_the_others_and_ends_the_request() -> None:
    engine, channel = ScriptedEngine(), Channel()
    step = make_step(engine)
    step.submit(inputs(prompts=3), "c", channel)
    a, b, c = engine.ids()
    engine.emit(b, [], error="boom")
    assert sorted(engine.cancelled) == sorted([a, c])
    engine.emit(a, [5], finished=True)  # the cancelled siblings' last events are dropped
    assert [(r.error, r.final) for r in channel.replies] == [("boom", True)]
    assert step.active == {}


def test_a_bad_request_is_refused_naming_the_field_and_submits_nothing() -> None:
    engine, channel = ScriptedEngine(), Channel()
    make_step(engine).submit(inputs(max_tokens=0), "c", channel)
    assert engine.ids() == []
    (reply,) = channel.replies
    assert reply.final and reply.code == "INVALID_ARG" and "max_tokens" in reply.error


def test_an_engine_refusal_withdraws_the_prompts_already_submitted() -> None:
    engine, channel = ScriptedEngine(refuse=lambda rid: rid.endswith("/1")), Channel()
    step = make_step(engine)
    step.submit(inputs(prompts=2), "c", channel)
    (submitted,) = engine.ids()
    assert submitted in engine.cancelled and step.active == {}
    (reply,) = channel.replies
    assert reply.final and reply.code == "INVALID_ARG" and "out of vocabulary" in reply.error


def test_beyond_max_pending_a_request_is_refused_as_unavailable() -> None:
    engine = ScriptedEngine()
    step = make_step(engine, max_pending=2)
    step.submit(inputs(), "a", Channel())
    refused = Channel()
    step.submit(inputs(prompts=2), "b", refused)
    (reply,) = refused.replies
    assert reply.final and reply.code == "UNAVAILABLE"
    assert reply.error == "server overloaded: 1 requests in flight (limit 2); retry later"
    assert len(engine.ids()) == 1


def test_watch_once_stops_the_generations_of_a_cancelled_client() -> None:
    engine = ScriptedEngine()
    step = make_step(engine)
    gone, staying = Channel(), Channel()
    step.submit(inputs(prompts=2), "gone", gone)
    step.submit(inputs(), "staying", staying)
    gone.cancelled = True
    assert step.watch_once() == 3
    assert sorted(engine.cancelled) == sorted(rid for rid in engine.ids() if rid.startswith("gone#"))


def test_stop_ends_the_running_requests_with_that_id_only() -> None:
    engine = ScriptedEngine()
    step = make_step(engine)
    step.submit(inputs(), "victim", Channel())
    step.submit(inputs(), "bystander", Channel())
    stopper = Channel()
    step.submit({"stop": np.array([[True]])}, "victim", stopper)
    assert [r for r in stopper.replies] == [Reply(final=True)]
    assert [rid.split("#")[0] for rid in engine.cancelled] == ["victim"]

    anonymous = Channel()
    step.submit({"stop": np.array([[True]])}, "", anonymous)
    assert anonymous.replies[0].code == "INVALID_ARG" and "request id" in anonymous.replies[0].error


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ('{"errors_in_band": true}', True),
        ('{"errors_in_band": 1}', False),
        ("{}", False),
        ("", False),
        (None, False),
        ("not json", False),
        ("[1]", False),
    ],
)
def test_errors_in_band_is_asked_only_by_a_true_parameter(parameters: str | None, expected: bool) -> None:
    assert asks_errors_in_band(parameters) is expected


class Reads(dict):
    """A request's inputs that records which names the parser asks for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def test_engine_step_inputs_are_exactly_what_the_parsers_read() -> None:
    request = Reads(inputs(max_tokens=4, runtime_top_p=0.5, runtime_top_k=2))
    parse_stop(request)
    parse_request(request, "r", Limits(max_input_len=16, max_output_len=16))
    assert request.read == set(INPUTS)


def test_the_cpu_config_declares_exactly_the_engine_step_inputs(tmp_path: Path) -> None:
    repository = triton_stub.render_cpu_repository(tmp_path / "engine", tmp_path / "models")
    config = parse_model_config(triton_stub.model_args(repository / "tensorrt_llm"))
    check_inputs(config, INPUTS)
