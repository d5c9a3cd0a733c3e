"""The CPU engine step's model.py against the stubbed `triton_python_backend_utils` and the REAL OpenVINO engine of
the tiny checkpoint (no server): streamed responses, final flags, cancellation, `stop`, `errors_in_band`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mentallama_server.models.tensorrt_llm_cpu import INPUTS
from tests.support import triton_stub
from tests.support.triton_stub import TRITONSERVER_RESPONSE_COMPLETE_FINAL as FINAL_FLAG
from tests.support.triton_stub import CountingSender, InferenceResponse, ResponseSender, TritonError, make_request

MAX_OUTPUT_LEN = 2048
LONG = MAX_OUTPUT_LEN  # the tiny engine streams ~2000 tokens/s: a request that lasts about a second
PROMPT = [1, 450, 396, 1701, 17]  # ids of the tiny vocabulary (4000)
# Small on purpose (2 shared CPU cores), f32 as tests/server/conftest.py's engine.
SETTINGS: dict[str, Any] = dict(
    engine_max_batch_size=16,
    max_queue_size=16,
    cache_num_blocks=256,
    max_batch_tokens=256,
    kv_cache_precision="f32",
    inference_precision="f32",
    max_input_len=256,
    max_output_len=MAX_OUTPUT_LEN,
)
MAX_PENDING = SETTINGS["engine_max_batch_size"] + SETTINGS["max_queue_size"]


@pytest.fixture(scope="module")
def repository(tiny_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return triton_stub.render_cpu_repository(tiny_engine, tmp_path_factory.mktemp("cpu-step") / "models", **SETTINGS)


@pytest.fixture(scope="module")
def loaded(repository: Path) -> Iterator[tuple[Any, Any]]:
    with triton_stub.install():
        module = triton_stub.load_model(repository / "tensorrt_llm")
        model = module.TritonPythonModel()
        model.initialize(triton_stub.model_args(repository / "tensorrt_llm"))
        try:
            yield module, model
        finally:
            model.finalize()


@pytest.fixture()
def model(loaded: tuple[Any, Any]) -> Iterator[Any]:
    _, model = loaded
    yield model
    # Every test leaves the engine idle: nothing tracked, so the next one starts clean.
    deadline = time.monotonic() + 10
    while model.step.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.step.active == {}, "a test left generations running"


def engine_inputs(max_tokens: int, prompts: int = 1, **extra: Any) -> dict[str, np.ndarray]:
    """`[N, ...]` tensors as the ensemble sends them; end_id -1 so the output is always `max_tokens` long."""
    values: dict[str, Any] = {
        "input_ids": np.tile(np.array([PROMPT], dtype=np.int32), (prompts, 1)),
        "input_lengths": np.full((prompts, 1), len(PROMPT), dtype=np.int32),
        "request_output_len": np.full((prompts, 1), max_tokens, dtype=np.int32),
        "end_id": np.full((prompts, 1), -1, dtype=np.int32),
    }
    for name, value in extra.items():
        values[name] = np.full((prompts, 1), value)
    return values


def run(model: Any, *requests: Any) -> list[ResponseSender]:
    model.execute(list(requests))
    return [request.get_response_sender() for request in requests]


def flags(sent: list[tuple[InferenceResponse | None, int]]) -> list[int]:
    return [f for _, f in sent]


def tokens(sent: list[tuple[InferenceResponse | None, int]]) -> list[int]:
    return [t for out in triton_stub.outputs_of(r for r, _ in sent) for t in out["output_ids"].reshape(-1).tolist()]


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_reads_the_inputs_its_config_declares(loaded: tuple[Any, Any], repository: Path) -> None:
    module, model = loaded
    config = triton_stub.model_config(repository / "tensorrt_llm" / "config.pbtxt")
    assert list(model.input_names) == [spec["name"] for spec in config["input"]]
    assert set(model.input_names) == set(INPUTS)

    def edit(config: dict[str, Any]) -> None:
        config["input"].append({"name": "guidance_scale", "data_type": "TYPE_FP32", "dims": ["1"]})

    # Refused before the engine loads: an input nobody reads would be ignored silently.
    with pytest.raises(ValueError, match="guidance_scale"):
        module.TritonPythonModel().initialize(triton_stub.model_args(repository / "tensorrt_llm", edit))


def test_non_streaming_answers_once_with_prompt_and_output(model: Any) -> None:
    request = make_request(engine_inputs(8, return_num_input_tokens=True, return_num_output_tokens=True))
    sent = run(model, request)[0].wait_final()
    assert flags(sent) == [FINAL_FLAG]
    (out,) = triton_stub.outputs_of(r for r, _ in sent)
    assert out["output_ids"].shape == (1, 1, len(PROMPT) + 8)
    assert out["output_ids"][0, 0, : len(PROMPT)].tolist() == PROMPT
    assert out["sequence_length"].tolist() == [[len(PROMPT) + 8]]
    assert out["batch_index"].tolist() == [[0]]
    assert out["num_input_tokens"].tolist() == [[len(PROMPT)]] and out["num_output_tokens"].tolist() == [[8]]


def test_streaming_sends_chunks_and_the_final_flag_with_the_last(model: Any) -> None:
    whole = run(model, make_request(engine_inputs(64)))[0].wait_final()
    streamed = run(model, make_request(engine_inputs(64, streaming=True)))[0].wait_final()
    assert len(streamed) > 1
    assert flags(streamed) == [0] * (len(streamed) - 1) + [FINAL_FLAG]
    assert tokens(streamed) == tokens(whole)[len(PROMPT) :]  # greedy: the same tokens, without the prompt
    assert len(tokens(streamed)) == 64


def test_bad_requests_in_a_batch_are_refused_and_the_others_answered(model: Any) -> None:
    bad_max = engine_inputs(4)
    bad_max["request_output_len"][:] = 0
    senders = run(
        model,
        make_request(engine_inputs(4)),
        make_request(bad_max),
        make_request(engine_inputs(4, runtime_top_p=np.float32(2.0))),
        make_request(engine_inputs(4, streaming=True)),
    )
    for sender, field in ((senders[1], "max_tokens"), (senders[2], "top_p")):
        (response, flag) = sender.wait_final()[0]
        assert flag == FINAL_FLAG and len(sender.sent) == 1
        assert response.error().code() == TritonError.INVALID_ARG and field in response.error().message()
    assert len(tokens(senders[0].wait_final())) == len(PROMPT) + 4
    assert len(tokens(senders[3].wait_final())) == 4


def test_a_request_of_several_prompts_answers_each_and_ends_once(model: Any) -> None:
    sent = run(model, make_request(engine_inputs(16, prompts=3, streaming=True)))[0].wait_final()
    assert flags(sent).count(FINAL_FLAG) == 1 and flags(sent)[-1] == FINAL_FLAG
    per_prompt: dict[int, list[int]] = {}
    for out in triton_stub.outputs_of(r for r, _ in sent):
        per_prompt.setdefault(int(out["batch_index"][0, 0]), []).extend(out["output_ids"].reshape(-1).tolist())
    assert sorted(per_prompt) == [0, 1, 2]
    assert per_prompt[0] == per_prompt[1] == per_prompt[2] and len(per_prompt[0]) == 16


def test_more_prompts_than_max_pending_are_refused_as_unavailable(model: Any) -> None:
    (response, flag) = run(model, make_request(engine_inputs(4, prompts=MAX_PENDING + 1)))[0].wait_final()[0]
    assert flag == FINAL_FLAG and response.error().code() == TritonError.UNAVAILABLE
    assert "server overloaded" in response.error().message()


def test_a_cancelled_client_stops_its_generation(model: Any) -> None:
    request = make_request(engine_inputs(LONG, streaming=True))
    (sender,) = run(model, request)
    wait_for(lambda: sender.sent)
    sender.cancel()  # the watcher polls is_cancelled and cancels the engine request
    sent = sender.wait_final(timeout=5)
    assert flags(sent)[-1] == FINAL_FLAG and flags(sent).count(FINAL_FLAG) == 1
    assert len(tokens(sent)) < LONG


def test_a_caller_that_stops_in_band_is_never_asked_about_cancellation(model: Any) -> None:
    polled, in_band = CountingSender(), CountingSender()
    run(model, make_request(engine_inputs(LONG, streaming=True), sender=polled),
        make_request(engine_inputs(LONG, streaming=True), request_id="in-band-1", sender=in_band,
                     parameters={"stops_in_band": True}))  # fmt: skip
    wait_for(lambda: polled.asked >= 3 and in_band.sent)  # several watcher rounds with both running
    assert in_band.asked == 0
    # Such a caller ends its request with a `stop` (the front model, the front door), which still works.
    run(model, make_request(engine_inputs(1, stop=True), request_id="in-band-1"))
    assert len(tokens(in_band.wait_final(timeout=5))) < LONG
    polled.cancel()
    assert len(tokens(polled.wait_final(timeout=5))) < LONG
    assert in_band.asked == 0


def test_stop_request_ends_the_request_with_its_id(model: Any) -> None:
    victim = make_request(engine_inputs(LONG, streaming=True), request_id="victim-1")
    bystander = make_request(engine_inputs(64, streaming=True), request_id="bystander-1")
    victim_sender, bystander_sender = run(model, victim, bystander)
    wait_for(lambda: victim_sender.sent)
    stop = make_request(engine_inputs(1, stop=True), request_id="victim-1")
    (stop_sender,) = run(model, stop)
    assert stop_sender.wait_final(timeout=5) == [(None, FINAL_FLAG)]  # the stop request itself: a bare final
    assert len(tokens(victim_sender.wait_final(timeout=5))) < LONG
    assert len(tokens(bystander_sender.wait_final())) == 64

    anonymous = make_request(engine_inputs(1, stop=True))
    (response, flag) = run(model, anonymous)[0].wait_final()[0]
    assert flag == FINAL_FLAG and "request id" in response.error().message()


@pytest.mark.parametrize("in_band", [True, False])
def test_a_failure_after_output_reaches_the_caller(model: Any, in_band: bool) -> None:
    # The second send fails: the engine ends the request with the callback's error, which must reach the
    # caller as it asked (in-band for the front model, whose BLS stream would lose an error response).
    sender = ResponseSender(fail_at=1)
    parameters = {"errors_in_band": True} if in_band else {}
    request = make_request(engine_inputs(LONG, streaming=True), parameters=parameters, sender=sender)
    sent = run(model, request)[0].wait_final()
    # Chunks already published may still arrive before the engine applies the failure; then the final one.
    assert len(sent) >= 2 and flags(sent) == [0] * (len(sent) - 1) + [FINAL_FLAG]
    assert all(not r.has_error() and "output_ids" in r.as_dict() for r, _ in sent[:-1])
    last = sent[-1][0]
    if in_band:
        assert not last.has_error()
        (message,) = last.as_dict()["error_message"].reshape(-1).tolist()
        assert b"event callback failed" in message
    else:
        assert last.error().code() == TritonError.INTERNAL and "event callback failed" in last.error().message()


def test_the_watcher_survives_an_error_and_logs_it(model: Any) -> None:
    class Flaky(ResponseSender):
        calls = 0

        def is_cancelled(self) -> bool:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("stub is gone")
            return super().is_cancelled()

    sender = Flaky()
    run(model, make_request(engine_inputs(LONG, streaming=True), sender=sender))
    wait_for(lambda: Flaky.calls >= 2)  # polled again after the failure
    sender.cancel()
    assert len(tokens(sender.wait_final(timeout=5))) < LONG
    errors = triton_stub.Logger.messages(triton_stub.LogLevel.ERROR)
    assert "cancel watcher: RuntimeError: stub is gone" in errors


def test_metrics_publish_the_engine_counters(model: Any) -> None:
    wait_for(lambda: triton_stub.metric_value("mentallama_engine_kv_cache_blocks", {"state": "total"}) > 0)
    assert triton_stub.metric_value("mentallama_engine_kv_cache_blocks", {"state": "total"}) == 256
    (sender,) = run(model, make_request(engine_inputs(LONG, streaming=True)))
    wait_for(lambda: triton_stub.metric_value("mentallama_engine_tracked_requests") == 1)
    sender.cancel()
    sender.wait_final(timeout=5)
    wait_for(lambda: triton_stub.metric_value("mentallama_engine_tracked_requests") == 0)


def test_metrics_are_sent_only_when_they_change(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each metric update is a round trip to tritonserver: an idle engine step sends none, a busy one what moved.
    updates: list[tuple[str, float]] = []
    for name in ("metric_active", "metric_waiting", "metric_blocks_used", "metric_blocks_total", "metric_tracked"):
        metric = getattr(model, name)
        monkeypatch.setattr(metric, "set", lambda value, name=name, set_=metric.set: (updates.append((name, value)),
                                                                                       set_(value)))  # fmt: skip
    time.sleep(0.3)  # six watcher rounds of an idle engine
    assert updates == []
    (sender,) = run(model, make_request(engine_inputs(LONG, streaming=True)))
    wait_for(lambda: ("metric_tracked", 1) in updates)
    sender.cancel()
    sender.wait_final(timeout=5)
    wait_for(lambda: ("metric_tracked", 0) in updates)
    assert ("metric_blocks_total", 256) not in updates  # unchanged since the model started: never sent again

