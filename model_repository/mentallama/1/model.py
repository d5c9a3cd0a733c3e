"""Front model with the ensemble's interface: tokenise -> `tensorrt_llm` (BLS, streaming) -> text.

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
import threading
import time
import uuid

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_interface import ENGINE_ERROR_OUTPUT, ERRORS_IN_BAND
from mentallama_server.models.detokenize import AnchoredDecoder, IncrementalDetokenizer, byte_token_map
from mentallama_server.models.front import (
    INPUT_NAMES,
    FrontRequest,
    engine_declares_output,
    engine_inputs,
    is_stop_request,
    parse_front_batch,
)
from mentallama_server.models.preprocess import Limits, Preprocessor, RequestError
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import get_parameter, parse_model_config

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ENGINE_OUTPUTS = ["output_ids", "sequence_length", "cum_log_probs", "output_log_probs"]
WATCH_INTERVAL_S = 0.05
RETIRE_AFTER_S = 5.0  # far longer than the stub takes to forget a finished iterator (milliseconds)
# Seconds without an engine response, after the first one, before a streamed call is ended as failed. An
# engine step sends a chunk per decoding step once a request runs; 30 s is far above a step of the 7B model
# on CPU at full batch. Set `engine_stall_timeout_s` in the model config to change it.
ENGINE_STALL_TIMEOUT_S = 30.0


def _error(message: str, code=None):
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _engine_error(error):
    """Re-raise an engine error to the client. BLS responses of Triton 2.51 report every error as
    INTERNAL, so the engine's overload refusal is recognised by its message to stay retryable."""
    message = error.message()
    if message.startswith("server overloaded"):
        return _error(message, pb_utils.TritonError.UNAVAILABLE)
    return _error(message, error.code())


class _BatchSender:
    """The response sender of a request of N prompts, shared by its N calls (one per prompt, as TensorRT-LLM
    serves `[N, 1]` requests): a call's final response goes out without the final flag until the last call
    ends; an error ends the whole request, and the watcher then stops the other calls (`is_cancelled`)."""

    def __init__(self, sender, prompts: int) -> None:
        self.sender = sender
        self.remaining = prompts
        self.closed = False
        self.lock = threading.Lock()

    def send(self, response=None, flags=0):
        with self.lock:
            if self.closed:
                return
            if flags & FINAL:
                self.remaining -= 1
                if self.remaining == 0 or (response is not None and response.has_error()):
                    self.closed = True
                else:
                    flags = 0
            if response is not None:
                self.sender.send(response, flags=flags)
            elif flags:
                self.sender.send(flags=flags)

    def is_cancelled(self):
        return self.closed or self.sender.is_cancelled()


class _Call:
    def __init__(self, sender, engine_id: str) -> None:
        self.sender = sender
        self.engine_id = engine_id
        self.detokenizer = None  # IncrementalDetokenizer of this call's output, set when it starts
        self.pending_log_probs: list[float] = []  # of tokens whose text is held back (partial character)
        self.cancelled = False
        self.done = False
        self.stalled = False
        self.lock = threading.Lock()
        self.responses = 0  # engine responses seen
        self.last_response = time.monotonic()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        tokenizer = load_tokenizer(get_parameter(config, "tokenizer_dir", str))
        limits = Limits(get_parameter(config, "max_input_len", int), get_parameter(config, "max_output_len", int))
        self.preprocessor = Preprocessor(tokenizer, limits)
        # Engine chunks are decoded incrementally per call: the C++ engine ends chunks anywhere, even inside
        # the byte-fallback tokens of one character; held back until the character is complete.
        self.decoder = AnchoredDecoder(tokenizer, skip_special_tokens=True)
        self.byte_of = byte_token_map(tokenizer)
        self.max_calls = get_parameter(config, "max_concurrent_requests", int)
        self.stall_timeout_s = get_parameter(config, "engine_stall_timeout_s", float, ENGINE_STALL_TIMEOUT_S)
        self.abandoned = 0  # worker threads left blocked on an engine response that was lost
        self.errors_in_band = engine_declares_output(args.get("model_repository", ""), ENGINE_ERROR_OUTPUT)
        self.engine_outputs = ENGINE_OUTPUTS + ([ENGINE_ERROR_OUTPUT] if self.errors_in_band else [])
        self.calls: dict[str, _Call] = {}
        self.calls_lock = threading.Lock()
        self.pb_lock = threading.RLock()
        self.stopping = threading.Event()
        self.retired: collections.deque[tuple[float, object]] = collections.deque()
        threading.Thread(target=self._watch, name="cancel-watcher", daemon=True).start()

    def execute(self, requests):
        with self.pb_lock:
            self._accept(requests)
        return None

    def _accept(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = {}
                for name in INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    inputs[name] = None if tensor is None else tensor.as_numpy()
                if is_stop_request(inputs):
                    self._stop_calls(request.request_id(), sender)
                    continue
                fronts = parse_front_batch(inputs, self.preprocessor)  # one per prompt of [N, 1]
            except RequestError as exc:
                sender.send(_error(str(exc)), flags=FINAL)
                continue
            if len(fronts) > 1:
                sender = _BatchSender(sender, len(fronts))
            for front in fronts:
                call = _Call(sender, f"{request.request_id()}#{uuid.uuid4().hex}")
                with self.calls_lock:
                    busy = len(self.calls) >= self.max_calls
                    if not busy:
                        self.calls[call.engine_id] = call
                if busy:  # ends the request; calls of its earlier prompts are stopped by the watcher
                    message = f"server overloaded: {self.max_calls} requests in flight; retry later"
                    sender.send(_error(message, pb_utils.TritonError.UNAVAILABLE), flags=FINAL)
                    break
                threading.Thread(target=self._run, args=(call, front), name="front-call", daemon=True).start()

    def _stop_calls(self, request_id: str, sender) -> None:
        """Answer a `stop` request: end the running calls of the request with the same id (their clients get
        their final response, as after a cancellation) and reply with an empty final response. Stopping a
        request that already ended, or is unknown, is not an error: the two can cross on the wire."""
        if not request_id:
            sender.send(_error("stop: give the request id of the request to stop"), flags=FINAL)
            return
        prefix = f"{request_id}#"
        with self.calls_lock:
            calls = [call for engine_id, call in self.calls.items() if engine_id.startswith(prefix)]
        for call in calls:
            with call.lock:
                newly = not call.done and not call.cancelled
                call.cancelled = True
            if newly:  # the engine's answer to a stop waits on the engine: not on the execute thread
                self._stop_engine_later(call.engine_id)
        sender.send(flags=FINAL)

    def _stop_engine_later(self, engine_id: str) -> None:
        threading.Thread(target=self._stop_engine, args=(engine_id,), name="front-stop", daemon=True).start()

    def _run(self, call: _Call, front: FrontRequest):
        try:
            self._generate(call, front)
        except Exception as exc:  # the client must always get a final response
            with self.pb_lock:
                self._finish(call, _error(f"generation failed: {exc}", pb_utils.TritonError.INTERNAL))
        finally:
            with self.calls_lock:
                self.calls.pop(call.engine_id, None)
        if call.stalled:
            pb_utils.Logger.log_warn(f"request {call.engine_id}: the engine answered after the stall timeout")

    def _generate(self, call: _Call, front: FrontRequest):
        with self.pb_lock:
            if call.cancelled:  # stopped before it reached the engine
                self._finish(call, None)
                return
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
            self._stream(call, front, responses)
        finally:
            self._retire(responses)

    def _retire(self, iterator) -> None:
        """Keep a finished BLS iterator until the watcher releases it (see the module docstring)."""
        self.retired.append((time.monotonic(), iterator))  # deque appends are atomic

    def _release_retired(self) -> None:
        cutoff = time.monotonic() - RETIRE_AFTER_S
        while self.retired and self.retired[0][0] < cutoff:
            self.retired.popleft()

    def _stream(self, call: _Call, front: FrontRequest, responses):
        call.detokenizer = IncrementalDetokenizer(
            self.preprocessor.tokenizer, front.input_ids, byte_of=self.byte_of, decoder=self.decoder
        )
        texts: list[str] = []
        log_probs: list[float] = []
        cum_log_prob = 0.0
        num_output = 0
        while True:
            try:
                response = next(responses)  # the only pb_utils wait outside the lock
            except StopIteration:
                break
            call.responses += 1
            call.last_response = time.monotonic()
            if call.cancelled and call.responses == 1:
                # A stop that came while the engine request was being issued may have missed it: repeat it.
                self._stop_engine_later(call.engine_id)
            with self.pb_lock:
                step = self._on_response(call, front, response, texts, log_probs)
            if step is None:
                return
            cum_log_prob = step[0] if front.return_log_probs else cum_log_prob
            num_output += step[1]
        with self.pb_lock:
            self._complete(call, front, texts, log_probs, cum_log_prob, num_output)

    def _on_response(self, call: _Call, front: FrontRequest, response, texts: list[str], log_probs: list[float]):
        """Forward one engine response: (cum_log_prob, tokens), or None when the call ended with an error."""
        if response.has_error():
            self._finish(call, _engine_error(response.error()))
            return None
        if self.errors_in_band:
            failure = pb_utils.get_output_tensor_by_name(response, ENGINE_ERROR_OUTPUT)
            message = "" if failure is None else failure.as_numpy().reshape(-1)[0]
            if message:
                text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
                self._finish(call, _error(text, pb_utils.TritonError.INTERNAL))
                return None
        ids_tensor = pb_utils.get_output_tensor_by_name(response, "output_ids")
        if ids_tensor is None:  # the engine's bare final flag
            return 0.0, 0
        lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
        ids = ids_tensor.as_numpy()[0, 0, : int(lengths.reshape(-1)[0])]
        text = call.detokenizer.add([int(i) for i in ids])  # "" while a character's bytes are incomplete
        cum_log_prob, chunk_lp = 0.0, None
        if front.return_log_probs:
            cum_log_prob = float(
                pb_utils.get_output_tensor_by_name(response, "cum_log_probs").as_numpy().reshape(-1)[0]
            )
            chunk_lp = pb_utils.get_output_tensor_by_name(response, "output_log_probs").as_numpy().reshape(-1)
            log_probs.extend(chunk_lp.tolist())
            call.pending_log_probs.extend(chunk_lp.tolist())
        if front.stream and text and not call.cancelled:
            chunk_lp = call.pending_log_probs if front.return_log_probs else None
            call.pending_log_probs = []
            self._send(call, self._response(front, text, chunk_lp, cum_log_prob, None), 0)
        else:
            texts.append(text)
        return cum_log_prob, len(ids)

    def _complete(self, call: _Call, front: FrontRequest, texts, log_probs, cum_log_prob: float, num_output: int):
        if call.cancelled:
            self._finish(call, None)
            return
        rest = call.detokenizer.flush() if call.detokenizer is not None else ""
        if front.stream:
            lp = call.pending_log_probs if front.return_log_probs else None
            final = self._response(front, rest, lp, cum_log_prob, num_output)
        else:
            text = "".join(texts) + rest
            if not front.exclude_input_in_output:
                text = self.decoder.first([self.preprocessor.tokenizer.bos_token_id, *front.input_ids]) + text
            final = self._response(front, text, log_probs if front.return_log_probs else None, cum_log_prob, num_output)
        self._finish(call, final)

    def _response(self, front: FrontRequest, text: str, log_probs, cum_log_prob: float, num_output: int | None):
        tensors = [
            # flat, one string per (prompt, sequence): [1], as TensorRT-LLM's postprocessing returns it
            pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object)),
            pb_utils.Tensor("batch_index", np.array([[front.batch_index]], dtype=np.int32)),
        ]
        if log_probs is not None:
            lp = np.asarray(log_probs, dtype=np.float32).reshape(1, 1, -1)
            tensors.append(pb_utils.Tensor("output_log_probs", lp))
            tensors.append(pb_utils.Tensor("cum_log_probs", np.array([[cum_log_prob]], dtype=np.float32)))
        if num_output is not None and front.return_num_input_tokens:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[len(front.input_ids)]], dtype=np.int32)))
        if num_output is not None and front.return_num_output_tokens:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[num_output]], dtype=np.int32)))
        return pb_utils.InferenceResponse(tensors)

    def _send(self, call: _Call, response, flags: int):
        with call.lock:
            if not call.done:
                call.sender.send(response, flags=flags)

    def _finish(self, call: _Call, response):
        with call.lock:
            if call.done:
                return
            call.done = True
            if response is None:
                call.sender.send(flags=FINAL)
            else:
                call.sender.send(response, flags=FINAL)

    def _watch(self):
        while not self.stopping.wait(WATCH_INTERVAL_S):
            try:
                self._watch_once()
            except Exception as exc:  # the watcher must survive: it ends cancelled and stalled calls
                pb_utils.Logger.log_error(f"front watcher: {type(exc).__name__}: {exc}")

    def _watch_once(self):
        self._release_retired()
        with self.calls_lock:
            calls = list(self.calls.values())
        now = time.monotonic()
        for call in calls:
            if call.responses and not call.done and now - call.last_response > self.stall_timeout_s:
                self._end_stalled(call)
        for call in calls:
            with self.pb_lock, call.lock:
                newly = not call.done and not call.cancelled and call.sender.is_cancelled()
                if newly:
                    call.cancelled = True
            if newly:
                self._stop_engine(call.engine_id)

    def _end_stalled(self, call: _Call):
        """Answer a call whose engine went silent (a lost engine error, see the module docstring)."""
        message = (
            f"the engine failed or stopped answering: no response for {self.stall_timeout_s:g} s after "
            f"{call.responses} response(s) (an engine error after the first response is not forwarded by "
            "Triton 2.51's BLS; the server log names it)"
        )
        call.stalled = True
        with self.pb_lock:
            self._finish(call, _error(message, pb_utils.TritonError.INTERNAL))
        with self.calls_lock:
            self.calls.pop(call.engine_id, None)
            self.abandoned += 1
            abandoned = self.abandoned
        pb_utils.Logger.log_error(f"request {call.engine_id}: {message}; {abandoned} call thread(s) abandoned")
        self._stop_engine(call.engine_id)  # frees the engine if the request is still there

    def _stop_engine(self, engine_id: str):
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
        deadline = time.monotonic() + 5
        while self.calls and time.monotonic() < deadline:
            time.sleep(0.05)
