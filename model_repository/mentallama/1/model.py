"""Front model with the ensemble's interface: tokenise -> `tensorrt_llm` (BLS, streaming) -> text.

Thin adapter: the calls' logic (engine chunks -> client replies, `[N, 1]` batches, `stop`, stall detection)
lives in `mentallama_server.models.front_model`; this file reads and builds the `pb_utils` objects, issues
the BLS requests and runs the threads and the locks.

Each request runs in a worker thread that streams the engine's chunks (a request of N prompts runs N, one
per prompt, sharing the client's sender). Each call decodes its chunks incrementally behind an anchor
(`detokenize.IncrementalDetokenizer`): the C++ engine ends chunks anywhere, even inside the byte-fallback
tokens of one character, so a character's bytes are held back until it is complete; streamed text never
carries a partial character and concatenates to exactly the non-streamed text. A watcher thread notices
cancelled clients and sends the engine a `stop` request for them, which Triton 2.51 would not forward by itself.
A client can also stop a request in band, with a request carrying `stop` and the same request id (the SDK
does, instead of cancelling the gRPC call: Triton 2.51 aborts under many stream cancellations).

Every call into `pb_utils` (building, sending and reading tensors and responses, `is_cancelled`) holds one
lock; issuing a BLS request and waiting for the engine's next response do not (both wait on the engine).
The Python-backend stub of Triton 2.51 crashed when threads used it at once (docs/RELIABILITY.md).

An engine failure after the engine's first response never reaches a BLS caller in Triton 2.51: the
Python backend does not carry the request's id with an error response, so the stub files the error under
no iterator and `next()` waits forever (the `ensemble` gets the same error at once). Three defences:
requests whose client does not stream ask the engine for one response (an error then is the first
response, and arrives with its cause); an engine whose config declares the output `error_message` is asked
(request parameter `errors_in_band`) to end a failed request with a final response carrying its error
there, which arrives; and the watcher ends a call whose engine has sent nothing for
`engine_stall_timeout_s` after its first response with an error, and stops the engine request.
The worker thread blocked in that `next()` cannot be woken: it is abandoned (counted, logged, and each
call runs on its own daemon thread so abandoned ones never hold back others).

Finished BLS response iterators are kept for a few seconds before they are let go. The stub holds its
own reference to each iterator and drops it from a C++ thread that does not hold the GIL; when that is the
last reference, the responses inside (numpy arrays) are freed without the GIL. Kept here, the last
reference is always released by a Python thread. Since this and a shared-memory pool that never has to
grow (the launcher's `--shm-pool-mib`), the heap corruptions seen under many cancelled streams have not
recurred in the soaks (docs/RELIABILITY.md).
"""

import collections
import queue
import threading
import time
from pathlib import Path

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_interface import ENGINE_ERROR_OUTPUT, ERRORS_IN_BAND
from mentallama_server.models.front_model import (
    INPUT_NAMES,
    EngineChunk,
    FrontCall,
    FrontCalls,
    Reply,
    TextDecoding,
    client_request_id,
    engine_declares_output,
    engine_inputs,
    is_stop_request,
    parse_front_batch,
)
from mentallama_server.models.preprocessing import Preprocessor
from mentallama_server.models.request_errors import Limits, RequestError
from mentallama_server.models.stop_channel import StopSender, socket_path
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import check_inputs, get_parameter, input_names, parse_model_config

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ENGINE_OUTPUTS = ["output_ids", "sequence_length", "cum_log_probs", "output_log_probs"]
WATCH_INTERVAL_S = 0.05
RETIRE_AFTER_S = 5.0  # far longer than the stub takes to forget a finished iterator (milliseconds)
# Seconds without an engine response, after the first one, before a streamed call is ended as failed. An
# engine step sends a chunk per decoding step once a request runs; 30 s is far above a step of the 7B model
# on CPU at full batch. Set `engine_stall_timeout_s` in the model config to change it.
ENGINE_STALL_TIMEOUT_S = 30.0


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class _Tally:
    """Responses sent to clients, counted under `pb_lock` (the channels' senders hold it)."""

    def __init__(self) -> None:
        self.count = 0


class _Channel:
    """A client's response sender. Callers hold the model's `pb_lock`, as for every `pb_utils` call."""

    def __init__(self, sender, tally: _Tally) -> None:
        self.sender = sender
        self.tally = tally

    def send(self, reply: Reply) -> None:
        flags = FINAL if reply.final else 0
        if reply.error is not None:
            code = getattr(pb_utils.TritonError, reply.code) if isinstance(reply.code, str) else reply.code
            self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(reply.error, code)), flags=flags)
        elif reply.text is not None:
            tensors = [pb_utils.Tensor(name, value) for name, value in reply.outputs().items()]
            self.sender.send(pb_utils.InferenceResponse(tensors), flags=flags)
        else:
            self.sender.send(flags=flags)
        self.tally.count += 1

    def is_cancelled(self) -> bool:
        return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        check_inputs(config, INPUT_NAMES)
        self.input_names = input_names(config)
        tokenizer = load_tokenizer(get_parameter(config, "tokenizer_dir", str))
        limits = Limits(get_parameter(config, "max_input_len", int), get_parameter(config, "max_output_len", int))
        self.preprocessor = Preprocessor(tokenizer, limits)
        self.calls = FrontCalls(TextDecoding.of(tokenizer), get_parameter(config, "max_concurrent_requests", int))
        self.stall_timeout_s = get_parameter(config, "engine_stall_timeout_s", float, ENGINE_STALL_TIMEOUT_S)
        self.errors_in_band = engine_declares_output(args.get("model_repository", ""), ENGINE_ERROR_OUTPUT)
        self.stop_sender = StopSender(socket_path(Path(args.get("model_repository", "")).parent / "tensorrt_llm"))
        self.engine_outputs = ENGINE_OUTPUTS + ([ENGINE_ERROR_OUTPUT] if self.errors_in_band else [])
        self.pb_lock = threading.RLock()
        self._init_metrics()
        self.stopping = threading.Event()
        self.retired: collections.deque[tuple[float, object]] = collections.deque()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._intake, name="request-intake", daemon=True).start()
        threading.Thread(target=self._watch, name="cancel-watcher", daemon=True).start()

    def _init_metrics(self):
        # A counter of responses sent to clients: the launcher's sign of a busy, not wedged, server
        # (launch/stall_watch.py). Published by the watcher under pb_lock, so a stub blocked in `send` stops it.
        self.tally = _Tally()
        self.responses_published = 0
        self.responses_family = pb_utils.MetricFamily(
            name="mentallama_front_responses_total",
            description="Responses the mentallama front model sent to its clients",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metric_responses = self.responses_family.Metric(labels={})

    def execute(self, requests):
        # Handed to the intake thread, never waiting on pb_lock here: Triton waits for execute to return
        # before it takes this stub's next message, and the thread holding pb_lock may be in a send that
        # waits for Triton; that cycle wedged a soak in the engine step (docs/RELIABILITY.md).
        self.inbox.put(requests)
        return None

    def _intake(self):
        while (requests := self.inbox.get()) is not None:
            for request in requests:
                with self.pb_lock:
                    self._accept_safely(request)
            del requests  # not held until the next request comes: a large one's memory is returned now

    def _accept_safely(self, request):
        """Accept one request; whatever goes wrong is that request's error. The intake thread must never
        end: a request id that was not UTF-8 once raised here, and every later request then waited forever
        while the server still reported ready (issue 18, finding 1)."""
        try:
            channel = _Channel(request.get_response_sender(), self.tally)
        except Exception as exc:
            pb_utils.Logger.log_error(f"front intake: no response sender ({type(exc).__name__})")
            return
        try:
            self._accept(request, channel)
        except RequestError as exc:
            self._refuse(channel, str(exc), "INVALID_ARG")
        except Exception as exc:
            pb_utils.Logger.log_error(f"front intake: {type(exc).__name__}: {exc}")
            self._refuse(channel, f"request refused: {type(exc).__name__}: {exc}", "INTERNAL")

    def _refuse(self, channel: _Channel, message: str, code: str) -> None:
        try:
            channel.send(Reply.failure(message, code))
        except Exception as exc:  # the client is gone or Triton refused the response: nothing left to tell
            pb_utils.Logger.log_error(f"front intake: could not send an error ({type(exc).__name__})")

    def _accept(self, request, channel: _Channel):
        request_id = client_request_id(request.request_id)
        inputs = {name: _input(request, name) for name in self.input_names}
        if is_stop_request(inputs):
            self._stop_calls(request_id, channel)
            return
        fronts = parse_front_batch(inputs, self.preprocessor)  # one per prompt of [N, 1]
        for call in self.calls.open(request_id, fronts, channel):
            threading.Thread(target=self._run, args=(call,), name="front-call", daemon=True).start()

    def _stop_calls(self, request_id: str, channel: _Channel) -> None:
        """Answer a `stop` request: end the running calls of the request with the same id (their clients get
        their final response, as after a cancellation) and reply with an empty final response."""
        for call in self.calls.stop(request_id):  # RequestError without a request id
            # The engine's answer to a stop waits on the engine: not on the execute thread.
            self._stop_engine_later(call.engine_id)
        channel.send(Reply(final=True))

    def _stop_engine_later(self, engine_id: str) -> None:
        """Stop without waiting: the side channel is one datagram; the BLS fallback waits on the engine, so
        it runs on its own thread."""
        if not self.stop_sender.send(engine_id):
            threading.Thread(target=self._stop_engine_by_bls, args=(engine_id,), name="front-stop", daemon=True).start()

    def _run(self, call: FrontCall):
        try:
            self._generate(call)
        except Exception as exc:  # the client must always get a final response
            with self.pb_lock:
                call.send(Reply.failure(f"generation failed: {exc}", "INTERNAL"))
        finally:
            self.calls.remove(call)
        if call.stalled:
            pb_utils.Logger.log_warn(f"request {call.engine_id}: the engine answered after the stall timeout")

    def _generate(self, call: FrontCall):
        with self.pb_lock:
            if call.cancelled:  # stopped before it reached the engine
                call.send(Reply(final=True))
                return
            front = call.front
            tensors = [pb_utils.Tensor(k, v) for k, v in engine_inputs(front, streaming=front.stream).items()]
            options = dict(
                model_name="tensorrt_llm",
                inputs=tensors,
                requested_output_names=self.engine_outputs,
                request_id=call.engine_id,
            )
            if self.errors_in_band:
                options["parameters"] = {ERRORS_IN_BAND: True}
            infer = pb_utils.InferenceRequest(**options)
        # exec() waits until the engine answers: holding the lock there would stall every other request.
        responses = iter(infer.exec(decoupled=True))
        try:
            self._stream(call, responses)
        finally:
            self._retire(responses)

    def _retire(self, iterator) -> None:
        """Keep a finished BLS iterator until the watcher releases it (see the module docstring)."""
        self.retired.append((time.monotonic(), iterator))  # deque appends are atomic

    def _release_retired(self) -> None:
        cutoff = time.monotonic() - RETIRE_AFTER_S
        while self.retired and self.retired[0][0] < cutoff:
            self.retired.popleft()

    def _stream(self, call: FrontCall, responses):
        call.begin()
        while True:
            try:
                response = next(responses)  # the only pb_utils wait outside the lock
            except StopIteration:
                break
            if call.received(time.monotonic()):
                self._stop_engine_later(call.engine_id)
            with self.pb_lock:
                reply = call.add(self._read_chunk(response, call.front.return_log_probs))
                if reply is not None:
                    call.send(reply)
            if reply is not None and reply.final:  # an engine error ended the call
                return
        with self.pb_lock:
            call.send(call.complete())

    def _read_chunk(self, response, log_probs: bool) -> EngineChunk:
        """One engine response's tensors (the caller holds `pb_lock`); log probs only when asked for."""
        if response.has_error():
            error = response.error()
            return EngineChunk.failed(error.message(), error.code())
        if self.errors_in_band:
            failure = pb_utils.get_output_tensor_by_name(response, ENGINE_ERROR_OUTPUT)
            message = "" if failure is None else failure.as_numpy().reshape(-1)[0]
            if message:
                return EngineChunk.failed_in_band(message)
        ids_tensor = pb_utils.get_output_tensor_by_name(response, "output_ids")
        if ids_tensor is None:  # the engine's bare final flag
            return EngineChunk()
        lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
        ids = [int(i) for i in ids_tensor.as_numpy()[0, 0, : int(lengths.reshape(-1)[0])]]
        if not log_probs:
            return EngineChunk(ids)
        cum_log_prob = pb_utils.get_output_tensor_by_name(response, "cum_log_probs").as_numpy().reshape(-1)[0]
        chunk_lp = pb_utils.get_output_tensor_by_name(response, "output_log_probs").as_numpy().reshape(-1)
        return EngineChunk(ids, float(cum_log_prob), chunk_lp.tolist())

    def _watch(self):
        while not self.stopping.wait(WATCH_INTERVAL_S):
            try:
                self._watch_once()
            except Exception as exc:  # the watcher must survive: it ends cancelled and stalled calls
                pb_utils.Logger.log_error(f"front watcher: {type(exc).__name__}: {exc}")

    def _watch_once(self):
        self._release_retired()
        self._publish_progress()
        calls = self.calls.snapshot()
        now = time.monotonic()
        for call in calls:
            if call.is_stalled(now, self.stall_timeout_s):
                self._end_stalled(call)
        for call in calls:
            with self.pb_lock:
                newly = call.cancel_if_client_gone()
            if newly:
                self._stop_engine(call.engine_id)

    def _publish_progress(self):
        with self.pb_lock:
            sent = self.tally.count
            if sent > self.responses_published:
                self.metric_responses.increment(sent - self.responses_published)
                self.responses_published = sent

    def _end_stalled(self, call: FrontCall):
        """Answer a call whose engine went silent (a lost engine error, see the module docstring)."""
        reply = call.stall(self.stall_timeout_s)
        with self.pb_lock:
            call.send(reply)
        abandoned = self.calls.abandon(call)
        pb_utils.Logger.log_error(f"request {call.engine_id}: {reply.error}; {abandoned} call thread(s) abandoned")
        self._stop_engine(call.engine_id)  # frees the engine if the request is still there

    def _stop_engine(self, engine_id: str):
        if not self.stop_sender.send(engine_id):  # the CPU engine's side channel: no BLS call (stop_channel)
            self._stop_engine_by_bls(engine_id)

    def _stop_engine_by_bls(self, engine_id: str):
        with self.pb_lock:
            stop = self._stop_request(engine_id)
        responses = stop.exec(decoupled=True)
        for _ in responses:
            pass
        self._retire(responses)

    def _stop_request(self, engine_id: str):
        return pb_utils.InferenceRequest(
            model_name="tensorrt_llm",
            inputs=[
                pb_utils.Tensor("input_ids", np.zeros((1, 1), dtype=np.int32)),
                pb_utils.Tensor("input_lengths", np.ones((1, 1), dtype=np.int32)),
                pb_utils.Tensor("request_output_len", np.ones((1, 1), dtype=np.int32)),
                pb_utils.Tensor("stop", np.ones((1, 1), dtype=bool)),
            ],
            requested_output_names=["output_ids"],
            request_id=engine_id,
        )

    def finalize(self):
        self.stopping.set()
        self.inbox.put(None)
        deadline = time.monotonic() + 5
        while self.calls and time.monotonic() < deadline:
            time.sleep(0.05)
