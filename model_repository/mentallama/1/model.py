"""Front model with the ensemble's interface: tokenise -> `tensorrt_llm` (BLS, streaming) -> text.

Thin adapter: the calls' logic (a call's walk from its engine request to its final reply, engine chunks ->
client replies, `[N, 1]` batches, `stop`, stall detection) lives in `mentallama_server.models.front_model`, the
intake and watcher threads and the response channels in `_glue.DecoupledModel`; this file reads and builds the
`pb_utils` objects and issues the BLS requests (it is the `front_model.Engine` of the calls).

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
from pathlib import Path

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils
from _glue import DecoupledModel, model_config, read_inputs

from mentallama_interface import ENGINE_ERROR_OUTPUT, ERRORS_IN_BAND, STOPS_IN_BAND
from mentallama_server.models.front_model import (
    INPUT_NAMES,
    EngineChunk,
    FrontCalls,
    Reply,
    TextDecoding,
    client_request_id,
    engine_declares_output,
    is_stop_request,
    parse_front_batch,
)
from mentallama_server.models.preprocessing import Preprocessor
from mentallama_server.models.stop_channel import StopSender, socket_path
from mentallama_server.models.text_tokenizer import load_tokenizer
from mentallama_server.models.triton_params import get_parameter, input_names, request_limits

ENGINE_OUTPUTS = ["output_ids", "sequence_length", "cum_log_probs", "output_log_probs", "sequence_index"]
RETIRE_AFTER_S = 5.0  # far longer than the stub takes to forget a finished iterator (milliseconds)
# Seconds without an engine response, after the first one, before a streamed call is ended as failed. An
# engine step sends a chunk per decoding step once a request runs; 30 s is far above a step of the 7B model
# on CPU at full batch. Set `engine_stall_timeout_s` in the model config to change it.
ENGINE_STALL_TIMEOUT_S = 30.0


class TritonPythonModel(DecoupledModel):
    INTAKE = "front intake"
    WATCHER = "front watcher"

    def initialize(self, args):
        config = model_config(args, INPUT_NAMES)
        self.input_names = input_names(config)
        tokenizer = load_tokenizer(get_parameter(config, "tokenizer_dir", str))
        self.preprocessor = Preprocessor(tokenizer, request_limits(config))
        self.calls = FrontCalls(TextDecoding.of(tokenizer), get_parameter(config, "max_concurrent_requests", int))
        self.stall_timeout_s = get_parameter(config, "engine_stall_timeout_s", float, ENGINE_STALL_TIMEOUT_S)
        self.errors_in_band = engine_declares_output(args.get("model_repository", ""), ENGINE_ERROR_OUTPUT)
        self.stop_sender = StopSender(socket_path(Path(args.get("model_repository", "")).parent / "tensorrt_llm"))
        self.engine_outputs = ENGINE_OUTPUTS + ([ENGINE_ERROR_OUTPUT] if self.errors_in_band else [])
        self.retired: collections.deque[tuple[float, object]] = collections.deque()
        # A counter of responses sent to clients: the launcher's sign of a busy, not wedged, server
        # (launch/stall_watch.py). Published by the watcher under pb_lock, so a stub blocked in `send` stops it.
        self.responses_published = 0
        self.responses_family = pb_utils.MetricFamily(
            name="mentallama_front_responses_total",
            description="Responses the mentallama front model sent to its clients",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metric_responses = self.responses_family.Metric(labels={})
        self.start()

    # ------------------------------------------------------------------------------------- DecoupledModel

    def accept(self, request, channel):
        request_id = client_request_id(request.request_id)
        inputs = read_inputs(request, self.input_names)
        if is_stop_request(inputs):
            # End the running calls of the request with the same id (their clients get their final response, as
            # after a cancellation) and reply with an empty final response.
            for call in self.calls.stop(request_id):  # RequestError without a request id
                self.stop(call.engine_id, wait=False)  # the engine's answer waits on the engine: not here
            channel.send(Reply(final=True))
            return
        fronts = parse_front_batch(inputs, self.preprocessor)  # one per prompt of [N, 1]
        for call in self.calls.open(request_id, fronts, channel):
            threading.Thread(target=self.calls.run, args=(call, self), name="front-call", daemon=True).start()

    def watch_once(self):
        self._release_retired()
        with self.pb_lock:
            if self.responses_sent > self.responses_published:
                self.metric_responses.increment(self.responses_sent - self.responses_published)
                self.responses_published = self.responses_sent
        self.calls.watch_once(self, self.stall_timeout_s)

    def finalize(self):
        super().finalize()
        deadline = time.monotonic() + 5
        while self.calls and time.monotonic() < deadline:
            time.sleep(0.05)

    # --------------------------------------------------------------------------------- front_model.Engine

    def issue(self, engine_id, tensors):
        with self.pb_lock:
            options = dict(
                model_name="tensorrt_llm",
                inputs=[pb_utils.Tensor(name, value) for name, value in tensors.items()],
                requested_output_names=self.engine_outputs,
                request_id=engine_id,
            )
            if self.errors_in_band:
                # The CPU engine step (it declares `error_message`) reads both. This model stops every engine
                # request it abandons (`stop`), so the engine step need not poll Triton for cancellations.
                options["parameters"] = {ERRORS_IN_BAND: True, STOPS_IN_BAND: True}
            infer = pb_utils.InferenceRequest(**options)
        # exec() waits until the engine answers: holding the lock there would stall every other request.
        return iter(infer.exec(decoupled=True))

    def read(self, response, log_probs):
        if response.has_error():
            error = response.error()
            return EngineChunk.failed(error.message(), error.code())
        if self.errors_in_band:
            failure = pb_utils.get_output_tensor_by_name(response, ENGINE_ERROR_OUTPUT)
            message = "" if failure is None else failure.as_numpy().reshape(-1)[0]
            if message:
                return EngineChunk.failed_in_band(message)

        def output(name):
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            return None if tensor is None else tensor.as_numpy()

        return EngineChunk.of_outputs(output, log_probs)

    def stop(self, engine_id, wait):
        """The CPU engine's side channel first: one datagram, no BLS call (stop_channel). The BLS fallback waits
        on the engine: without `wait`, it runs on a thread of its own."""
        if self.stop_sender.send(engine_id):
            return
        if wait:
            self._stop_by_bls(engine_id)
        else:
            threading.Thread(target=self._stop_by_bls, args=(engine_id,), name="front-stop", daemon=True).start()

    def retire(self, responses):
        """Keep a finished BLS iterator until the watcher releases it (see the module docstring)."""
        self.retired.append((time.monotonic(), responses))  # deque appends are atomic

    def _release_retired(self):
        cutoff = time.monotonic() - RETIRE_AFTER_S
        while self.retired and self.retired[0][0] < cutoff:
            self.retired.popleft()

    def _stop_by_bls(self, engine_id):
        with self.pb_lock:
            stop = pb_utils.InferenceRequest(
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
        responses = stop.exec(decoupled=True)
        for _ in responses:
            pass
        self.retire(responses)
