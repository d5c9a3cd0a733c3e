"""CPU engine step: the `tensorrt_llm` tensor interface over an OpenVINO engine (in-flight batching).

Thin adapter: the request life cycle, parsing and assembly live in `mentallama_server.models.tensorrt_llm_cpu`,
generation in `mentallama_server.engine.ov_engine` (OpenVINO GenAI's ContinuousBatchingPipeline). Requests are
decoupled: `execute` only hands them to an intake thread that submits them; the engine's dispatcher thread sends
responses as tokens are produced. A watcher thread forwards client cancellations to the engine and publishes the
engine's counters as Prometheus metrics.

Every `pb_utils` call (reading requests, sending responses, `is_cancelled`, metrics) holds one lock:
the Python-backend stub of Triton 2.51 crashed (segfault in `send`) when the execute thread and the
dispatcher thread sent responses at the same moment.
"""

import queue
import threading

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import triton_python_backend_utils as pb_utils

from mentallama_server.engine.ov_engine import OpenVinoEngine
from mentallama_server.models.request_errors import Limits
from mentallama_server.models.stop_channel import StopListener, socket_path
from mentallama_server.models.tensorrt_llm_cpu import INPUTS, CpuStep, Reply, Utf8Boundary, asks_errors_in_band
from mentallama_server.models.text_tokenizer import TextTokenizer
from mentallama_server.models.triton_params import check_inputs, get_parameter, input_names, parse_model_config

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WATCH_INTERVAL_S = 0.05


class _Channel:
    """A request's response sender, behind the model's `pb_utils` lock."""

    def __init__(self, sender, lock: threading.RLock) -> None:
        self.sender = sender
        self.lock = lock

    def send(self, reply: Reply) -> None:
        flags = FINAL if reply.final else 0
        with self.lock:
            if reply.error is not None:
                error = pb_utils.TritonError(reply.error, getattr(pb_utils.TritonError, reply.code))
                self.sender.send(pb_utils.InferenceResponse(error=error), flags=flags)
            elif reply.outputs is not None:
                outputs = [pb_utils.Tensor(name, value) for name, value in reply.outputs.items()]
                self.sender.send(pb_utils.InferenceResponse(outputs), flags=flags)
            else:
                self.sender.send(flags=flags)

    def is_cancelled(self) -> bool:
        with self.lock:
            return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        check_inputs(config, INPUTS)
        self.input_names = input_names(config)
        engine_dir = get_parameter(config, "engine_dir", str)
        limits = Limits(get_parameter(config, "max_input_len", int), get_parameter(config, "max_output_len", int))
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
        self.step = CpuStep(
            self.engine,
            Utf8Boundary(TextTokenizer.from_folder(engine_dir)),
            limits,
            max_pending=get_parameter(config, "max_pending_requests", int),
        )
        self.pb_lock = threading.RLock()  # taken last: never acquire another lock while holding it
        self.stop_listener = self._listen_for_stops(args.get("model_repository", ""))
        self._init_metrics()
        self.stopping = threading.Event()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._intake, name="request-intake", daemon=True).start()
        self.watcher = threading.Thread(target=self._watch, name="cancel-watcher", daemon=True)
        self.watcher.start()

    def _listen_for_stops(self, model_dir: str):
        """The front model's side channel for stops (stop_channel); without it the front falls back to BLS."""
        try:
            return StopListener(socket_path(model_dir), self.step.stop, self._log_error)
        except (OSError, ValueError) as exc:
            self._log_error(f"no stop channel ({exc}); the front model stops requests through Triton")
            return None

    def _log_error(self, message: str):
        with self.pb_lock:
            pb_utils.Logger.log_error(message)

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
        # A counter that moves while the engine produces tokens: the launcher's sign of a busy, not wedged,
        # server (launch/stall_watch.py). Published from here, under pb_lock, so a stub blocked in `send` stops it.
        self.tokens_family = pb_utils.MetricFamily(
            name="mentallama_engine_tokens_total",
            description="Output tokens the CPU engine produced, counted at each step",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metric_tokens = self.tokens_family.Metric(labels={})
        self.tokens_published = 0

    def execute(self, requests):
        # Handed to the intake thread, never waiting on pb_lock here: Triton waits for execute to return
        # before it takes this stub's next message, and the thread holding pb_lock may be in a send that
        # waits for Triton; that cycle wedged a soak (docs/RELIABILITY.md). Decoupled requests stay valid
        # after execute returns.
        self.inbox.put(requests)
        return None

    def _intake(self):
        while (requests := self.inbox.get()) is not None:
            self._submit_all(requests)
            del requests  # not held until the next request comes: a large one's memory is returned now

    def _submit_all(self, requests):
        for request in requests:
            with self.pb_lock:
                try:
                    self._submit(request)
                except Exception as exc:  # the intake must survive; the request gets its error
                    self._refuse(request, exc)

    def _refuse(self, request, exc):
        pb_utils.Logger.log_error(f"engine step intake: {type(exc).__name__}: {exc}")
        error = pb_utils.TritonError(f"engine step failed: {exc}", pb_utils.TritonError.INTERNAL)
        try:
            request.get_response_sender().send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        except Exception as send_exc:  # the intake must survive even a request it cannot answer
            pb_utils.Logger.log_error(f"engine step intake: could not send an error ({type(send_exc).__name__})")

    def _submit(self, request):
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            inputs[name] = None if tensor is None else tensor.as_numpy()
        channel = _Channel(request.get_response_sender(), self.pb_lock)
        self.step.submit(inputs, request.request_id(), channel, asks_errors_in_band(request.parameters()))

    def _watch(self):
        while not self.stopping.wait(WATCH_INTERVAL_S):
            try:
                tracked = self.step.watch_once()
                stats = self.engine.stats()
                with self.pb_lock:
                    self.metric_active.set(stats.active_requests)
                    self.metric_waiting.set(stats.waiting_requests)
                    self.metric_blocks_used.set(stats.cache_blocks_used)
                    self.metric_blocks_total.set(stats.cache_blocks_total)
                    self.metric_tracked.set(tracked)
                    if stats.tokens_produced > self.tokens_published:
                        self.metric_tokens.increment(stats.tokens_produced - self.tokens_published)
                        self.tokens_published = stats.tokens_produced
            except Exception as exc:  # the watcher must survive: it is what frees cancelled requests
                pb_utils.Logger.log_error(f"cancel watcher: {type(exc).__name__}: {exc}")

    def finalize(self):
        self.stopping.set()
        self.inbox.put(None)
        if self.stop_listener is not None:
            self.stop_listener.close()
        self.engine.shutdown()
