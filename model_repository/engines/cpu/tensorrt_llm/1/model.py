"""CPU engine step: the `tensorrt_llm` tensor interface over an OpenVINO engine (in-flight batching).

Thin adapter: the request life cycle, parsing and assembly live in `mentallama_server.models.tensorrt_llm_cpu`,
generation in `mentallama_server.engine.ov_engine` (OpenVINO GenAI's ContinuousBatchingPipeline). Requests are
decoupled: `execute` only hands them to an intake thread that submits them; the engine's dispatcher thread sends
responses as tokens are produced. A watcher thread forwards client cancellations to the engine and publishes the
engine's counters as Prometheus metrics.

The intake and watcher threads and the response channels are `_glue.DecoupledModel`'s. Every `pb_utils` call
(reading requests, sending responses, `is_cancelled`, metrics) holds one lock: the Python-backend stub of Triton
2.51 crashed (segfault in `send`) when the execute thread and the dispatcher thread sent responses at the same
moment.
"""

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import triton_python_backend_utils as pb_utils
from _glue import DecoupledModel, model_config, read_inputs

from mentallama_server.engine.ov_engine import OpenVinoEngine
from mentallama_server.models.stop_channel import StopListener, socket_path
from mentallama_server.models.tensorrt_llm_cpu import (
    DEFAULT_MAX_SEQUENCES,
    INPUTS,
    CpuStep,
    Utf8Boundary,
    asks_errors_in_band,
)
from mentallama_server.models.text_tokenizer import TextTokenizer
from mentallama_server.models.triton_params import get_parameter, input_names, request_limits


class TritonPythonModel(DecoupledModel):
    INTAKE = "engine step intake"
    WATCHER = "cancel watcher"
    REFUSED = "engine step failed"

    def initialize(self, args):
        config = model_config(args, INPUTS)
        self.input_names = input_names(config)
        engine_dir = get_parameter(config, "engine_dir", str)
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
            stream_hold_ms=get_parameter(config, "stream_hold_ms", float, 0.0),
            release_gil=get_parameter(config, "release_gil", bool, True),
        )
        self.engine.start()
        if not self.engine.steps_release_gil:
            self.log(f"engine steps hold the GIL, so requests reach the engine only between steps: "
                     f"{self.engine.gil_held_reason}")  # fmt: skip
        self.step = CpuStep(
            self.engine,
            Utf8Boundary(TextTokenizer.from_folder(engine_dir)),
            request_limits(config),
            max_pending=get_parameter(config, "max_pending_requests", int),
            max_sequences=get_parameter(config, "max_sequences", int, DEFAULT_MAX_SEQUENCES),
        )
        self.stop_listener = self._listen_for_stops(args.get("model_repository", ""))
        self._init_metrics()
        self.start()

    def _listen_for_stops(self, model_dir: str):
        """The front model's side channel for stops (stop_channel); without it the front falls back to BLS."""
        try:
            return StopListener(socket_path(model_dir), self.step.stop, lambda message: self.log(message, error=True))
        except (OSError, ValueError) as exc:
            self.log(f"no stop channel ({exc}); the front model stops requests through Triton", error=True)
            return None

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
        self.gauges_published: dict[str, int] = {}

    def accept(self, request, channel):
        inputs = read_inputs(request, self.input_names)
        self.step.submit(inputs, request.request_id(), channel, asks_errors_in_band(request.parameters()))

    def watch_once(self):
        tracked = self.step.watch_once()
        stats = self.engine.stats()
        gauges = {
            "active": (self.metric_active, stats.active_requests),
            "waiting": (self.metric_waiting, stats.waiting_requests),
            "blocks_used": (self.metric_blocks_used, stats.cache_blocks_used),
            "blocks_total": (self.metric_blocks_total, stats.cache_blocks_total),
            "tracked": (self.metric_tracked, tracked),
        }
        with self.pb_lock:
            for name, (metric, value) in gauges.items():
                if self.gauges_published.get(name) != value:  # each update is a round trip to tritonserver
                    metric.set(value)
                    self.gauges_published[name] = value
            if stats.tokens_produced > self.tokens_published:
                self.metric_tokens.increment(stats.tokens_produced - self.tokens_published)
                self.tokens_published = stats.tokens_produced

    def finalize(self):
        super().finalize()
        if self.stop_listener is not None:
            self.stop_listener.close()
        self.engine.shutdown()
