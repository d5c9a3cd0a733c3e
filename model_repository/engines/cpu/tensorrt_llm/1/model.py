"""CPU engine step: the `tensorrt_llm` tensor interface over an OpenVINO engine (in-flight batching).

Thin adapter: parsing/assembly live in `mentallama_server.engine_step`, generation in
`mentallama_server.ov_engine` (OpenVINO GenAI's ContinuousBatchingPipeline). Requests are decoupled:
`execute` only submits them; the engine's dispatcher thread sends responses as tokens are produced. A
watcher thread forwards client cancellations to the engine and publishes the engine's counters as
Prometheus metrics.

Every `pb_utils` call (reading requests, sending responses, `is_cancelled`, metrics) holds one lock:
the Python-backend stub of Triton 2.51 crashed (segfault in `send`) when the execute thread and the
dispatcher thread sent responses at the same moment.
"""

import json
import threading
import uuid

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_server.engine_step import ResponseAssembler, Utf8Boundary, parse_batch, parse_stop
from mentallama_server.front import ENGINE_ERROR_OUTPUT as ERROR_OUTPUT
from mentallama_server.front import ERRORS_IN_BAND
from mentallama_server.ov_engine import OpenVinoEngine
from mentallama_server.preprocess import Limits, RequestError
from mentallama_server.text_tokenizer import TextTokenizer
from mentallama_server.triton_params import get_parameter, parse_model_config

INPUT_NAMES = (
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "pad_id",
    "streaming",
    "runtime_top_k",
    "runtime_top_p",
    "temperature",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "seed",
    "stop_words_list",
    "bad_words_list",
    "beam_width",
    "return_log_probs",
    "exclude_input_in_output",
    "stop",
    "return_num_input_tokens",
    "return_num_output_tokens",
    "num_return_sequences",
    "len_penalty",
    "return_perf_metrics",
)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WATCH_INTERVAL_S = 0.05


def _asks_errors_in_band(request) -> bool:
    """The front model's request parameter: end a failure after output with an `error_message` response."""
    try:
        return json.loads(request.parameters() or "{}").get(ERRORS_IN_BAND) is True
    except ValueError:
        return False


class _Request:
    """One Triton request of N prompts (N generations) and its sender; `done` guards the sender, which must
    not be touched after the final flag, sent with the last prompt's last response."""

    def __init__(self, sender, prompts: int, errors_in_band: bool) -> None:
        self.sender = sender
        self.remaining = prompts
        self.done = False
        self.errors_in_band = errors_in_band
        self.sent_output = False
        self.lock = threading.Lock()


class _Active:
    """Per-generation state (one prompt of a request)."""

    def __init__(self, request: _Request, assembler: ResponseAssembler, client_id: str) -> None:
        self.request = request
        self.sender = request.sender
        self.assembler = assembler
        self.client_id = client_id


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        engine_dir = get_parameter(config, "engine_dir", str)
        self.limits = Limits(get_parameter(config, "max_input_len", int), get_parameter(config, "max_output_len", int))
        self.boundary = Utf8Boundary(TextTokenizer.from_folder(engine_dir))
        # Requests held at once (running + waiting); beyond it new ones are refused at once instead of
        # queueing without bound, so clients back off or go to another replica.
        self.max_pending = get_parameter(config, "max_pending_requests", int)
        self.engine = OpenVinoEngine(
            engine_dir,
            max_num_seqs=get_parameter(config, "engine_max_batch_size", int),
            max_num_batched_tokens=get_parameter(config, "max_batch_tokens", int),
            num_kv_blocks=get_parameter(config, "cache_num_blocks", int),
            dynamic_split_fuse=get_parameter(config, "dynamic_split_fuse", bool, True),
            enable_prefix_caching=get_parameter(config, "prefix_caching", bool, False),
            kv_cache_precision=get_parameter(config, "kv_cache_precision", str, ""),
            inference_precision=get_parameter(config, "inference_precision", str, "f32"),
            num_threads=get_parameter(config, "num_threads", int, 0),
        )
        self.engine.start()
        self.active: dict[str, _Active] = {}
        self.active_lock = threading.Lock()
        self.pb_lock = threading.RLock()  # taken last: never acquire another lock while holding it
        self._init_metrics()
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="cancel-watcher", daemon=True)
        self.watcher.start()

    def _init_metrics(self):
        # The families must outlive their metrics: Triton refuses to set a metric whose family is gone.
        self.metric_families = {
            name: pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
            for name, description in (
                ("mentallama_engine_requests", "CPU engine requests by state (active: in the running batch)"),
                ("mentallama_engine_kv_cache_blocks", "CPU engine KV-cache blocks by state"),
                (
                    "mentallama_engine_tracked_requests",
                    "Requests the CPU engine step holds a response sender for",
                ),
            )
        }
        requests = self.metric_families["mentallama_engine_requests"]
        blocks = self.metric_families["mentallama_engine_kv_cache_blocks"]
        self.metric_active = requests.Metric(labels={"state": "active"})
        self.metric_waiting = requests.Metric(labels={"state": "waiting"})
        self.metric_blocks_used = blocks.Metric(labels={"state": "used"})
        self.metric_blocks_total = blocks.Metric(labels={"state": "total"})
        self.metric_tracked = self.metric_families["mentallama_engine_tracked_requests"].Metric(labels={})

    def execute(self, requests):
        with self.pb_lock:
            for request in requests:
                self._submit(request)
        return None

    def _submit(self, request):
        sender = request.get_response_sender()
        inputs = {}
        for name in INPUT_NAMES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            inputs[name] = None if tensor is None else tensor.as_numpy()
        client_id = request.request_id()
        try:
            if parse_stop(inputs):
                self._stop(client_id)
                sender.send(flags=FINAL)
                return
            steps = parse_batch(inputs, f"{client_id}#{uuid.uuid4().hex}", self.limits)
            with self.active_lock:
                pending = len(self.active)
            if pending + len(steps) > self.max_pending:
                error = pb_utils.TritonError(
                    f"server overloaded: {pending} requests in flight (limit {self.max_pending}); retry later",
                    pb_utils.TritonError.UNAVAILABLE,
                )
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                return
            group = _Request(sender, len(steps), _asks_errors_in_band(request))
            states = [_Active(group, ResponseAssembler(step, self.boundary), client_id) for step in steps]
            with self.active_lock:
                for step, state in zip(steps, states, strict=True):
                    self.active[step.generation.request_id] = state
            for step, state in zip(steps, states, strict=True):
                self.engine.submit(step.generation, lambda event, s=state: self._on_event(s, event))
        except (RequestError, ValueError) as exc:
            with self.active_lock:
                mine = [k for k, v in self.active.items() if v.sender is sender]
                self.active = {k: v for k, v in self.active.items() if v.sender is not sender}
            for rid in mine:  # prompts of this request already submitted
                self.engine.cancel(rid)
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)),
                flags=FINAL,
            )

    def _stop(self, client_id: str):
        """TensorRT-LLM semantics: a request with `stop` set ends the running request with the same id."""
        if not client_id:
            raise RequestError("a stop request needs the request id of the request to stop")
        with self.active_lock:
            targets = [rid for rid, s in self.active.items() if s.client_id == client_id]
        for rid in targets:
            self.engine.cancel(rid)

    def _on_event(self, state: _Active, event):
        request = state.request
        siblings = []
        with request.lock:
            if request.done:
                return
            if event.error:
                # An error ends the whole request (the final flag): its other prompts are stopped.
                request.done = True
                with self.active_lock:
                    siblings = [rid for rid, s in self.active.items() if s.request is request]
                with self.pb_lock:
                    if request.errors_in_band and request.sent_output:
                        # Triton 2.51 loses an error response that follows a normal one on a BLS stream: the
                        # front model asked for the cause as an output of a final response instead.
                        message = np.array([[event.error.encode("utf-8")]], dtype=object)
                        response = pb_utils.InferenceResponse([pb_utils.Tensor(ERROR_OUTPUT, message)])
                    else:
                        response = pb_utils.InferenceResponse(error=pb_utils.TritonError(event.error))
                    state.sender.send(response, flags=FINAL)
            else:
                tensors = state.assembler.add(list(event.new_token_ids), event.log_probs, event.finished)
                last = event.finished and request.remaining == 1
                flags = FINAL if last else 0
                with self.pb_lock:
                    if tensors is not None:
                        outputs = [pb_utils.Tensor(k, v) for k, v in tensors.items()]
                        state.sender.send(pb_utils.InferenceResponse(outputs), flags=flags)
                        request.sent_output = True
                    elif last:
                        state.sender.send(flags=FINAL)
                if event.finished:
                    request.remaining -= 1
                request.done = last
        for rid in siblings:
            if rid != event.request_id:
                self.engine.cancel(rid)
        if event.finished or event.error:
            with self.active_lock:
                for rid in siblings or [event.request_id]:
                    self.active.pop(rid, None)

    def _watch(self):
        while not self.stopping.wait(WATCH_INTERVAL_S):
            try:
                self._watch_once()
            except Exception as exc:  # the watcher must survive: it is what frees cancelled requests
                pb_utils.Logger.log_error(f"cancel watcher: {type(exc).__name__}: {exc}")

    def _watch_once(self):
        with self.active_lock:
            items = list(self.active.items())
        for rid, state in items:
            with state.request.lock, self.pb_lock:
                cancelled = not state.request.done and state.sender.is_cancelled()
            if cancelled:
                self.engine.cancel(rid)
        stats = self.engine.stats()
        with self.pb_lock:
            self.metric_active.set(stats.active_requests)
            self.metric_waiting.set(stats.waiting_requests)
            self.metric_blocks_used.set(stats.cache_blocks_used)
            self.metric_blocks_total.set(stats.cache_blocks_total)
            self.metric_tracked.set(len(items))

    def finalize(self):
        self.stopping.set()
        self.engine.shutdown()
