"""The `mentallama` front model without a server: its call logic (`front_model`) with the tiny checkpoint's real
tokenizer, and its model.py against the stubbed `triton_python_backend_utils`, with `EngineDouble` answering its
BLS requests as the `tensorrt_llm` engine model would (streams, errors, `stop`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mentallama_server.models.front_model import (
    INPUT_NAMES,
    BatchSender,
    EngineChunk,
    FrontCall,
    FrontCalls,
    FrontRequest,
    Reply,
    TextDecoding,
    client_request_id,
)
from mentallama_server.models.request_errors import RequestError
from tests.support import triton_stub
from tests.support.triton_stub import TRITONSERVER_RESPONSE_COMPLETE_FINAL as FINAL_FLAG
from tests.support.triton_stub import (
    CountingSender,
    EngineDouble,
    InferenceResponse,
    ResponseSender,
    TritonError,
    make_request,
)

# Byte-fallback tokens: "😀" is four of them in the tiny vocabulary, "è" and "€" pieces of their own.
OUTPUT_TEXT = "Je suis très 😀 fatigué €"
PROMPT_TEXT = "hello world"


@pytest.fixture(scope="module")
def decoding(tokenizer: Any) -> TextDecoding:
    return TextDecoding.of(tokenizer)


@pytest.fixture(scope="module")
def output_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer.encode(OUTPUT_TEXT, add_special_tokens=False)
    assert sum(1 for i in ids if "\ufffd" in tokenizer.decode([i])) == 4, "the emoji should be four byte tokens"
    return ids


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[int]:
    return tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)


def front_request(prompt_ids: Sequence[int], **flags: Any) -> FrontRequest:
    values: dict[str, Any] = dict(stream=True, exclude_input_in_output=True, return_log_probs=False)
    values |= dict(return_num_input_tokens=False, return_num_output_tokens=False) | flags
    return FrontRequest(list(prompt_ids), 64, 2, 2, [], [], **values)


@dataclass
class RecordingChannel:
    """A client's channel: records replies; `cancelled` as a client that went away."""

    replies: list[Reply] = field(default_factory=list)
    cancelled: bool = False

    def send(self, reply: Reply) -> None:
        assert not self.replies or not self.replies[-1].final, "a reply after the final one"
        self.replies.append(reply)

    def is_cancelled(self) -> bool:
        return self.cancelled


@dataclass
class ScriptedEngine:
    """A `front_model.Engine` whose responses are the engine chunks themselves."""

    chunks: Sequence[EngineChunk]
    pb_lock: Any = field(default_factory=threading.RLock)
    issued: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    stops: list[tuple[str, bool]] = field(default_factory=list)
    retired: list[Any] = field(default_factory=list)

    def issue(self, engine_id: str, tensors: Mapping[str, np.ndarray]) -> Iterator[EngineChunk]:
        self.issued.append((engine_id, dict(tensors)))
        return iter(self.chunks)

    def read(self, response: EngineChunk, log_probs: bool) -> EngineChunk:
        return response

    def stop(self, engine_id: str, wait: bool) -> None:
        self.stops.append((engine_id, wait))

    def retire(self, responses: Iterator[Any]) -> None:
        self.retired.append(responses)

    def log(self, message: str, error: bool = False) -> None:
        pass


def run_call(call: FrontCall, chunks: Sequence[EngineChunk]) -> list[Reply]:
    """A call's whole walk (`FrontCall.run`) over an engine that answers with `chunks`."""
    engine = ScriptedEngine(chunks)
    call.run(engine)
    assert len(engine.retired) == (1 if engine.issued else 0)
    assert isinstance(call.sender, RecordingChannel)
    return call.sender.replies


def new_call(decoding: TextDecoding, front: FrontRequest, sender: Any = None, engine_id: str = "r#1") -> FrontCall:
    return FrontCall(front, engine_id.split("#")[0], sender or RecordingChannel(), decoding, engine_id)


def chunks_of(ids: Sequence[int], size: int, log_probs: Sequence[float] | None = None) -> list[EngineChunk]:
    chunks = []
    for start in range(0, len(ids), size):
        lp = [] if log_probs is None else list(log_probs[: start + size])
        cum = float(sum(lp))
        chunks.append(EngineChunk(ids[start : start + size], cum, lp[start:]))
    return chunks


# ------------------------------------------------------------------------------------------------ front_model


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_streamed_text_never_splits_a_character_and_concatenates_to_the_whole(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int], size: int
) -> None:
    streamed = run_call(new_call(decoding, front_request(prompt_ids)), chunks_of(output_ids, size))
    assert all("\ufffd" not in r.text for r in streamed if r.text is not None)
    assert [r.final for r in streamed] == [False] * (len(streamed) - 1) + [True]
    (whole,) = run_call(new_call(decoding, front_request(prompt_ids, stream=False)), chunks_of(output_ids, size))
    assert whole.final and "".join(r.text or "" for r in streamed) == whole.text
    # After the prompt's text, the output keeps its leading space: exactly decode(prompt + output) minus the prompt.
    full = decoding.tokenizer.decode([*prompt_ids, *output_ids], skip_special_tokens=True)
    assert whole.text == full[len(PROMPT_TEXT) :] == " " + OUTPUT_TEXT


def test_the_whole_text_starts_with_the_prompt_unless_excluded(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int]
) -> None:
    front = front_request(prompt_ids, stream=False, exclude_input_in_output=False)
    (whole,) = run_call(new_call(decoding, front), chunks_of(output_ids, 4))
    assert whole.text == f"{PROMPT_TEXT} {OUTPUT_TEXT}"


def test_log_probs_are_held_back_with_their_characters(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int]
) -> None:
    lps = [-0.125 * (i + 1) for i in range(len(output_ids))]
    front = front_request(prompt_ids, return_log_probs=True)
    streamed = run_call(new_call(decoding, front), chunks_of(output_ids, 1, lps))
    emoji = next(r for r in streamed if r.text is not None and "😀" in r.text)
    # Its four byte tokens are sent together, with the token that closed their run ("▁f").
    assert emoji.text == "😀 f" and emoji.log_probs is not None and len(emoji.log_probs) == 5
    position = 0
    for reply in streamed:  # each piece of text comes with the log probs of exactly its tokens
        assert reply.log_probs is not None
        tokens = output_ids[position : position + len(reply.log_probs)]
        assert reply.text == decoding.decoder.raw(tokens) and reply.log_probs == pytest.approx(
            lps[position:][: len(tokens)]
        )
        position += len(tokens)
    assert position == len(output_ids)
    assert "".join(r.text or "" for r in streamed) == " " + OUTPUT_TEXT
    sent_so_far = 0.0
    for reply in streamed:  # a piece's cumulative log prob covers exactly the log probs sent up to it
        sent_so_far += sum(reply.log_probs or [])
        assert reply.cum_log_prob == pytest.approx(sent_so_far)
    (whole,) = run_call(
        new_call(decoding, front_request(prompt_ids, stream=False, return_log_probs=True)),
        chunks_of(output_ids, 3, lps),
    )
    assert whole.log_probs == pytest.approx(lps) and whole.cum_log_prob == pytest.approx(sum(lps))


def test_counts_come_with_the_final_reply_only_when_asked(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int]
) -> None:
    front = front_request(prompt_ids, return_num_input_tokens=True, return_num_output_tokens=True)
    streamed = run_call(new_call(decoding, front), chunks_of(output_ids, 2))
    assert all(r.num_input_tokens is None and r.num_output_tokens is None for r in streamed[:-1])
    outputs = streamed[-1].tensors()
    assert outputs["num_input_tokens"].tolist() == [[len(prompt_ids)]]
    assert outputs["num_output_tokens"].tolist() == [[len(output_ids)]]
    assert "num_input_tokens" not in run_call(new_call(decoding, front_request(prompt_ids)), [])[-1].tensors()


def test_reply_tensors_have_the_ensembles_shapes() -> None:
    reply = Reply("é", 3, [-0.5, -0.25], -0.75, num_input_tokens=4, num_output_tokens=2, final=True)
    outputs = reply.tensors()
    assert list(outputs) == [
        "text_output",
        "batch_index",
        "output_log_probs",
        "cum_log_probs",
        "num_input_tokens",
        "num_output_tokens",
    ]
    assert outputs["text_output"].tolist() == ["é".encode()] and outputs["text_output"].dtype == object
    assert outputs["batch_index"].tolist() == [[3]] and outputs["batch_index"].dtype == np.int32
    assert outputs["output_log_probs"].shape == (1, 1, 2) and outputs["output_log_probs"].dtype == np.float32
    assert outputs["cum_log_probs"].tolist() == [[-0.75]]
    assert Reply.failure("no", "INVALID_ARG").tensors() == {} and Reply(final=True).bare


def test_an_engine_error_ends_the_call_and_the_overload_refusal_stays_retryable(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int]
) -> None:
    failed = EngineChunk.failed("every token is banned", TritonError.INTERNAL)
    sent = run_call(new_call(decoding, front_request(prompt_ids)), [*chunks_of(output_ids[:2], 1), failed])
    assert sent[-1] == Reply.failure("every token is banned", TritonError.INTERNAL)
    assert EngineChunk.failed("server overloaded: 32 requests", TritonError.INTERNAL).code == "UNAVAILABLE"
    assert EngineChunk.failed_in_band(b"caf\xc3\xa9 \xff").error == "café \ufffd"


def test_a_bare_final_flag_from_the_engine_ends_the_call_normally(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int]
) -> None:
    (whole,) = run_call(
        new_call(decoding, front_request(prompt_ids, stream=False)), [*chunks_of(output_ids, 4), EngineChunk()]
    )
    assert whole.final and whole.text == " " + OUTPUT_TEXT


def test_a_cancelled_call_sends_nothing_more_than_a_bare_final(
    decoding: TextDecoding, prompt_ids: list[int], output_ids: list[int]
) -> None:
    call = new_call(decoding, front_request(prompt_ids))
    chunks = chunks_of(output_ids, 2)
    call.begin()
    assert call.add(chunks[0]) is not None
    assert call.cancel() and not call.cancel()  # only the first cancellation stops the engine request
    assert all(call.add(chunk) is None for chunk in chunks[1:])
    assert call.complete() == Reply(final=True)


def test_a_stop_that_may_have_missed_the_engine_request_is_repeated_on_the_first_response(
    decoding: TextDecoding, prompt_ids: list[int]
) -> None:
    call = new_call(decoding, front_request(prompt_ids))
    assert not call.received(1.0)
    stopped = new_call(decoding, front_request(prompt_ids))
    stopped.cancel()
    assert stopped.received(1.0) and not stopped.received(2.0)


def test_a_batch_ends_once_with_the_last_call(decoding: TextDecoding, prompt_ids: list[int]) -> None:
    channel = RecordingChannel()
    batch = BatchSender(channel, 3)
    calls = [new_call(decoding, front_request(prompt_ids, batch_index=i), batch, f"r#{i}") for i in range(3)]
    calls[1].send(Reply("b", 1, final=True))
    calls[0].send(Reply(final=True))  # a bare final of a call that is not the last one says nothing
    assert [r.final for r in channel.replies] == [False] and not batch.is_cancelled()
    calls[2].send(Reply("c", 2, final=True))
    assert [(r.text, r.final) for r in channel.replies] == [("b", False), ("c", True)]
    assert batch.is_cancelled()


def test_an_error_ends_the_whole_batch(decoding: TextDecoding, prompt_ids: list[int]) -> None:
    channel = RecordingChannel()
    batch = BatchSender(channel, 3)
    calls = [new_call(decoding, front_request(prompt_ids, batch_index=i), batch, f"r#{i}") for i in range(3)]
    calls[0].send(Reply("a", 0))
    calls[1].send(Reply.failure("boom", "INTERNAL"))
    calls[2].send(Reply("c", 2, final=True))  # dropped: the request has ended
    assert [(r.error, r.final) for r in channel.replies] == [(None, False), ("boom", True)]
    # The watcher stops the other calls: their batch counts as a cancelled client.
    assert calls[0].cancel_if_client_gone() and not calls[1].cancel_if_client_gone()


def test_calls_past_the_limit_refuse_the_request_as_unavailable(decoding: TextDecoding, prompt_ids: list[int]) -> None:
    calls = FrontCalls(decoding, max_calls=3)
    assert len(calls.open("a", [front_request(prompt_ids)], RecordingChannel())) == 1
    channel = RecordingChannel()
    fronts = [front_request(prompt_ids, batch_index=i) for i in range(3)]
    opened = calls.open("b", fronts, channel)
    assert len(opened) == 2 and len(calls) == 3
    (refusal,) = channel.replies
    assert refusal == Reply.failure("server overloaded: 3 requests in flight; retry later", "UNAVAILABLE")
    assert all(call.cancel_if_client_gone() for call in opened)  # the watcher stops them
    assert all(call.engine_id.startswith("b#") for call in opened)


def test_stop_ends_only_the_calls_of_its_request_id(decoding: TextDecoding, prompt_ids: list[int]) -> None:
    calls = FrontCalls(decoding, max_calls=8)
    victims = calls.open("victim", [front_request(prompt_ids, batch_index=i) for i in range(2)], RecordingChannel())
    (bystander,) = calls.open("victim-2", [front_request(prompt_ids)], RecordingChannel())
    victims[1].send(Reply(final=True))  # already answered: nothing to stop
    assert calls.stop("victim") == [victims[0]]
    assert victims[0].cancelled and not bystander.cancelled
    assert calls.stop("victim") == [] and calls.stop("unknown") == []  # stops can cross the request's end
    with pytest.raises(RequestError, match="request id"):
        calls.stop("")


def test_stop_matches_the_request_id_exactly_not_as_a_prefix(decoding: TextDecoding, prompt_ids: list[int]) -> None:
    calls = FrontCalls(decoding, max_calls=8)
    (job,) = calls.open("user7#job3", [front_request(prompt_ids)], RecordingChannel())
    assert calls.stop("user7") == [] and not job.cancelled  # issue 18, finding 6: was a prefix match
    assert calls.stop("user7#job3") == [job]


def test_request_ids_that_are_not_utf8_or_too_long_are_request_errors() -> None:
    def undecodable() -> str:
        return b"ab\xff\xfecd".decode("utf-8")

    with pytest.raises(RequestError, match="not valid UTF-8"):
        client_request_id(undecodable)
    with pytest.raises(RequestError, match="limit is 256"):
        client_request_id(lambda: "x" * 257)
    assert client_request_id(lambda: "x" * 256) == "x" * 256


def test_a_call_is_stalled_only_after_a_first_response_and_the_timeout(
    decoding: TextDecoding, prompt_ids: list[int]
) -> None:
    calls = FrontCalls(decoding, max_calls=8)
    (call,) = calls.open("r", [front_request(prompt_ids)], RecordingChannel())
    assert not call.is_stalled(time.monotonic() + 100, 30)  # the engine may take long to start
    call.received(10.0)
    assert not call.is_stalled(40.0, 30) and call.is_stalled(40.5, 30)
    reply = call.stall(30)
    assert call.stalled and reply.final and reply.code == "INTERNAL"
    assert reply.error is not None and "no response for 30 s after 1 response(s)" in reply.error
    call.send(reply)
    assert not call.is_stalled(100.0, 30)  # answered
    assert calls.abandon(call) == 1 and len(calls) == 0


# ------------------------------------------------------------------------------------- model.py, stubbed


@pytest.fixture(scope="module")
def repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("front") / "models"
    return triton_stub.render_cpu_repository(tiny_checkpoint, out, max_input_len=64, max_output_len=64)


@pytest.fixture(scope="module")
def module(repository: Path) -> Iterator[ModuleType]:
    with triton_stub.install():
        yield triton_stub.load_model(repository / "mentallama")


@pytest.fixture()
def model(module: ModuleType, repository: Path) -> Iterator[Any]:
    model = triton_stub.start_model(module, repository / "mentallama")
    yield model
    model.finalize()
    assert len(model.calls) == 0, "a test left calls running"


@pytest.fixture()
def engine_model() -> Iterator[Callable[..., EngineDouble]]:
    """Makes an `EngineDouble` the `tensorrt_llm` model of the test; its held streams end at teardown (before
    the `model` fixture's, which waits for the calls to end)."""
    with ExitStack() as stack:

        def make(*args: Any, **kwargs: Any) -> EngineDouble:
            double = stack.enter_context(triton_stub.bls_model("tensorrt_llm", EngineDouble(*args, **kwargs)))
            stack.callback(double.release)
            return double

        yield make


def query(*texts: str, max_tokens: int = 8, **extra: Any) -> dict[str, np.ndarray]:
    """Inputs of one request of len(texts) prompts, `[N, 1]` as a client sends them."""
    n = len(texts)
    inputs = {
        "text_input": np.array([[t.encode()] for t in texts], dtype=object),
        "max_tokens": np.full((n, 1), max_tokens, dtype=np.int32),
    }
    for name, value in extra.items():
        inputs[name] = np.full((n, 1), value)
    return inputs


def send(model: Any, inputs: dict[str, np.ndarray], request_id: str = "") -> ResponseSender:
    request = make_request(inputs, request_id=request_id)
    model.execute([request])
    return request.get_response_sender()


def texts_of(sent: list[tuple[InferenceResponse | None, int]]) -> list[str]:
    return [out["text_output"][0].decode() for out in triton_stub.outputs_of(r for r, _ in sent)]


def flags(sent: list[tuple[InferenceResponse | None, int]]) -> list[int]:
    return [f for _, f in sent]


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def streamed_output(output_ids: list[int]) -> Callable[[Any], list[InferenceResponse]]:
    """An engine script: the output one token per response, as the C++ engine may cut it; log prob -0.5 each."""
    return lambda request: [EngineDouble.chunk([i], [-0.5], -0.5 * (k + 1)) for k, i in enumerate(output_ids)]


def test_reads_the_inputs_its_config_declares(model: Any, module: ModuleType, repository: Path) -> None:
    config = triton_stub.model_config(repository / "mentallama" / "config.pbtxt")
    assert list(model.input_names) == [spec["name"] for spec in config["input"]]
    assert set(model.input_names) == set(INPUT_NAMES)

    def edit(config: dict[str, Any]) -> None:
        config["input"].append({"name": "guidance_scale", "data_type": "TYPE_FP32", "dims": ["1"]})

    with pytest.raises(ValueError, match="guidance_scale"):  # an input nobody reads would be ignored silently
        module.TritonPythonModel().initialize(triton_stub.model_args(repository / "mentallama", edit))


def test_a_streamed_request(model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int]) -> None:
    engine = engine_model(streamed_output(output_ids))
    sent = send(model, query(PROMPT_TEXT, stream=True, return_num_output_tokens=True), "req-1").wait_final()
    assert flags(sent) == [0] * (len(sent) - 1) + [FINAL_FLAG]
    assert all("\ufffd" not in text for text in texts_of(sent))
    assert "".join(texts_of(sent)) == " " + OUTPUT_TEXT
    assert triton_stub.outputs_of([sent[-1][0]])[0]["num_output_tokens"].tolist() == [[len(output_ids)]]
    (request,) = engine.requests
    assert request.model_name == "tensorrt_llm" and request.request_id().startswith("req-1#")
    assert bool(engine.inputs()["streaming"].reshape(-1)[0]) is True
    # The CPU engine declares error_message; this model stops what it abandons, so the engine need not poll.
    assert json.loads(request.parameters()) == {"errors_in_band": True, "stops_in_band": True}
    assert "error_message" in request.requested_output_names()


def test_a_request_that_does_not_stream(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int]
) -> None:
    engine = engine_model(streamed_output(output_ids))
    inputs = query(PROMPT_TEXT, return_log_probs=True, exclude_input_in_output=False)
    sent = send(model, inputs).wait_final()
    assert flags(sent) == [FINAL_FLAG]
    (out,) = triton_stub.outputs_of(r for r, _ in sent)
    assert out["text_output"].tolist() == [f"{PROMPT_TEXT} {OUTPUT_TEXT}".encode()]
    assert out["output_log_probs"].shape == (1, 1, len(output_ids))
    assert out["cum_log_probs"].tolist() == [[-0.5 * len(output_ids)]]  # the engine's last cumulative value
    assert bool(engine.inputs()["streaming"].reshape(-1)[0]) is False  # one response: an error is its first


def test_a_request_of_several_prompts_ends_once(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int]
) -> None:
    engine_model(streamed_output(output_ids))
    sent = send(model, query(PROMPT_TEXT, "other", stream=True)).wait_final()
    assert flags(sent).count(FINAL_FLAG) == 1 and flags(sent)[-1] == FINAL_FLAG
    per_prompt: dict[int, str] = {}
    for out in triton_stub.outputs_of(r for r, _ in sent):
        index = int(out["batch_index"][0, 0])
        per_prompt[index] = per_prompt.get(index, "") + out["text_output"][0].decode()
    assert per_prompt == {0: " " + OUTPUT_TEXT, 1: " " + OUTPUT_TEXT}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("in_band", [False, True])
def test_an_engine_error_ends_the_request_with_its_message(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int], in_band: bool, stream: bool
) -> None:
    message = "every token is banned"
    failure = EngineDouble.error_in_band(message) if in_band else EngineDouble.error(message)
    # Nothing after the error: the front model must not wait for more.
    engine_model(lambda request: [EngineDouble.chunk(output_ids[:2]), failure], hold=True, stop_ends_stream=False)
    sent = send(model, query(PROMPT_TEXT, stream=stream)).wait_final(timeout=5)
    response, flag = sent[-1]
    assert flag == FINAL_FLAG and response is not None
    assert response.error().message() == message and response.error().code() == TritonError.INTERNAL
    assert texts_of(sent) == ([" Je"] if stream else [])  # the text streamed before the error


def test_the_engines_overload_refusal_stays_retryable(model: Any, engine_model: Callable[..., EngineDouble]) -> None:
    engine_model(lambda request: [EngineDouble.error("server overloaded: 32 requests in flight; retry later")])
    (response, flag) = send(model, query(PROMPT_TEXT)).wait_final()[0]
    assert flag == FINAL_FLAG and response.error().code() == TritonError.UNAVAILABLE


def test_an_in_band_stop_ends_only_the_request_with_its_id(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int]
) -> None:
    engine = engine_model(lambda request: [EngineDouble.chunk(output_ids[:2])], hold=True)
    victim = send(model, query(PROMPT_TEXT, stream=True), "victim")
    bystander = send(model, query(PROMPT_TEXT, stream=True), "victim-2")
    wait_for(lambda: victim.sent and bystander.sent)
    stop = send(model, query("", stop=True), "victim")
    assert stop.wait_final() == [(None, FINAL_FLAG)]  # the stop request itself: a bare final at once
    assert victim.wait_final()[-1] == (None, FINAL_FLAG)  # as after a cancellation
    assert [s.split("#")[0] for s in engine.stops] == ["victim"]
    assert not bystander.final.is_set()
    engine.release()
    assert "".join(texts_of(bystander.wait_final())) == " Je"

    (response, flag) = send(model, query("", stop=True)).wait_final()[0]  # which request? refused
    assert flag == FINAL_FLAG and response.error().code() == TritonError.INVALID_ARG
    assert response.error().message() == "stop: give the request id of the request to stop"


def test_a_cancelled_client_stops_its_engine_request(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int]
) -> None:
    engine = engine_model(lambda request: [EngineDouble.chunk(output_ids[:2])], hold=True)
    sender = send(model, query(PROMPT_TEXT, stream=True), "gone")
    wait_for(lambda: sender.sent)
    sender.cancel()  # the watcher polls is_cancelled and stops the engine request
    assert sender.wait_final()[-1] == (None, FINAL_FLAG)
    assert engine.stops == [engine.requests[0].request_id()]


def test_a_client_that_stops_in_band_is_never_asked_about_cancellation(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int]
) -> None:
    # The front door says `stops_in_band`: it never cancels upstream, so asking Triton would only cost.
    engine = engine_model(lambda request: [EngineDouble.chunk(output_ids[:2])], hold=True)
    polled, in_band = CountingSender(), CountingSender()
    model.execute([
        make_request(query(PROMPT_TEXT, stream=True), request_id="polled", sender=polled),
        make_request(query(PROMPT_TEXT, stream=True), request_id="in-band", sender=in_band,
                     parameters={"stops_in_band": True}),
    ])  # fmt: skip
    wait_for(lambda: polled.asked >= 3 and in_band.sent)  # several watcher rounds with both running
    assert in_band.asked == 0
    assert send(model, query("", stop=True), "in-band").wait_final() == [(None, FINAL_FLAG)]
    assert in_band.wait_final()[-1] == (None, FINAL_FLAG)
    polled.cancel()
    assert polled.wait_final()[-1] == (None, FINAL_FLAG)
    assert sorted(s.split("#")[0] for s in engine.stops) == ["in-band", "polled"] and in_band.asked == 0


def test_an_error_still_ends_the_whole_batch_of_a_client_that_stops_in_band(
    model: Any, engine_model: Callable[..., EngineDouble], output_ids: list[int], tokenizer: Any
) -> None:
    failing = tokenizer.encode("other")[-1]

    def script(request: Any) -> list[InferenceResponse]:
        ids = triton_stub.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
        return [EngineDouble.error("boom")] if failing in ids else [EngineDouble.chunk(output_ids[:2])]

    engine = engine_model(script, hold=True)
    sender = CountingSender()
    model.execute([make_request(query(PROMPT_TEXT, "other", stream=True), request_id="batch", sender=sender,
                                parameters={"stops_in_band": True})])  # fmt: skip
    assert sender.wait_final()[-1][0].error().message() == "boom"
    wait_for(lambda: len(engine.stops) == 1)  # the other prompt's engine request, stopped by the watcher
    assert sender.asked == 0


def test_bad_requests_are_refused_without_calling_the_engine(
    model: Any, engine_model: Callable[..., EngineDouble]
) -> None:
    engine = engine_model()
    (response, flag) = send(model, query(PROMPT_TEXT, max_tokens=0)).wait_final()[0]
    assert flag == FINAL_FLAG and response.error().code() == TritonError.INVALID_ARG
    assert "max_tokens" in response.error().message() and engine.requests == []


def test_requests_past_the_limit_are_refused_as_unavailable(
    module: ModuleType, repository: Path, engine_model: Callable[..., EngineDouble], output_ids: list[int]
) -> None:
    model = triton_stub.start_model(module, repository / "mentallama", max_concurrent_requests="1")
    try:
        engine = engine_model(lambda request: [EngineDouble.chunk(output_ids[:2])], hold=True)
        first = send(model, query(PROMPT_TEXT, stream=True), "first")
        (response, flag) = send(model, query(PROMPT_TEXT), "second").wait_final()[0]
        assert flag == FINAL_FLAG and response.error().code() == TritonError.UNAVAILABLE
        assert response.error().message() == "server overloaded: 1 requests in flight; retry later"
        engine.release()
        assert first.wait_final()[-1][1] == FINAL_FLAG
    finally:
        model.finalize()
