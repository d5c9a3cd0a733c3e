"""Test double of `triton_python_backend_utils`: Triton's Python backend utils exist only inside the stub process
(`triton_python_backend_stub`), so model.py files are imported here against this stand-in instead.

It keeps the real module's names, signatures and constants and the checks that catch model bugs: a response
sent after the final flag, a `send()` without a response and without the final flag, a counter that is set.
It simulates no server: no tensor type conversion, no batching, and BLS (`InferenceRequest.exec`) reaches only
the test double registered for the called model (`bls_model`; `EngineDouble` stands for `tensorrt_llm`).

`install()` puts it in `sys.modules`; `load_model(model_dir)` imports `<model_dir>/1/model.py` against it (with the
model's own `_bootstrap`, as Triton's stub would) and `model_args(model_dir)` builds the `initialize` arguments
from the model's (rendered) config.pbtxt.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

MODULE_NAME = "triton_python_backend_utils"

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


class TritonModelException(Exception):  # noqa: N818  (the real name)
    """What the real stub raises when a model misuses its API (e.g. sends after the final flag)."""


class Tensor:
    def __init__(self, name: str, array: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"tensor name must be a str, got {type(name).__name__}")
        self._name = name
        self._array = np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class TritonError:
    # TRITONSERVER_Error_Code values (tritonserver.h)
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class InferenceResponse:
    def __init__(self, output_tensors: Sequence[Tensor] = (), error: TritonError | None = None) -> None:
        output_tensors = list(output_tensors)
        for tensor in output_tensors:
            if not isinstance(tensor, Tensor):
                raise TypeError(f"output_tensors must hold Tensor objects, got {type(tensor).__name__}")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"error must be a TritonError, got {type(error).__name__}")
        self._tensors = output_tensors
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    # Test helper, not in the real API.
    def as_dict(self) -> dict[str, np.ndarray]:
        return {t.name(): t.as_numpy() for t in self._tensors}


class ResponseSender:
    """Records what a decoupled model sends. `cancel()` makes `is_cancelled()` true, as a client that went away;
    `fail_at` makes the send with that index (0-based) raise, as a failing `send` of the real stub."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[InferenceResponse | None, int]] = []
        self.final = threading.Event()
        self.fail_at = fail_at
        self._cancelled = False
        self._lock = threading.Lock()
        self._sends = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        with self._lock:
            index, self._sends = self._sends, self._sends + 1
            if self.final.is_set():
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                raise TritonModelException(
                    "Inference Response object must be provided when the response flags is not equal to "
                    "TRITONSERVER_RESPONSE_COMPLETE_FINAL."
                )
            if response is not None and not isinstance(response, InferenceResponse):
                raise TypeError(f"response must be an InferenceResponse, got {type(response).__name__}")
            if index == self.fail_at:
                raise TritonModelException(f"test double: send #{index} fails")
            self.sent.append((response, flags))
            if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self.final.set()

    def is_cancelled(self) -> bool:
        return self._cancelled

    # Test helpers, not in the real API.
    def cancel(self) -> None:
        self._cancelled = True

    def wait_final(self, timeout: float = 60.0) -> list[tuple[InferenceResponse | None, int]]:
        if not self.final.wait(timeout):
            raise AssertionError(f"no final flag within {timeout} s; sent so far: {self.sent}")
        with self._lock:
            return list(self.sent)

    @property
    def responses(self) -> list[InferenceResponse]:
        with self._lock:
            return [response for response, _ in self.sent if response is not None]


class CountingSender(ResponseSender):
    """Counts the `is_cancelled` questions: each is a round trip to tritonserver in the real stub."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def is_cancelled(self) -> bool:
        self.asked += 1
        return super().is_cancelled()


class InferenceRequest:
    """A request as `execute` receives it (build one with `make_request`), or a BLS request a model builds."""

    def __init__(
        self,
        *,
        inputs: Sequence[Tensor] = (),
        request_id: str = "",
        parameters: Mapping[str, Any] | str | None = None,
        model_name: str = "",
        requested_output_names: Sequence[str] = (),
        sender: ResponseSender | None = None,
        **_: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._request_id = request_id
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(dict(parameters or {}))
        self.model_name = model_name
        self._requested_output_names = list(requested_output_names)
        self._sender = sender or ResponseSender()

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def request_id(self) -> str:
        return self._request_id

    def parameters(self) -> str:
        return self._parameters

    def requested_output_names(self) -> list[str]:
        return list(self._requested_output_names)

    def get_response_sender(self) -> ResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()

    def exec(self, decoupled: bool = False) -> Any:
        model = BLS_MODELS.get(self.model_name)
        if model is None:
            raise NotImplementedError(f"test double: no model {self.model_name!r} for BLS; register one with bls_model")
        return model.exec(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> Any:
        raise NotImplementedError("test double: BLS is not simulated; patch InferenceRequest.async_exec in the test")


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in inference_request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in inference_response.output_tensors() if t.name() == name), None)


class LogLevel:
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Records every line in `records` as (level, message)."""

    records: list[tuple[int, str]] = []

    @classmethod
    def log(cls, message: str, level: int = LogLevel.INFO) -> None:
        cls.records.append((level, str(message)))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, LogLevel.INFO)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, LogLevel.WARNING)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, LogLevel.ERROR)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, LogLevel.VERBOSE)

    # Test helper, not in the real API.
    @classmethod
    def messages(cls, level: int | None = None) -> list[str]:
        return [message for lvl, message in list(cls.records) if level is None or lvl == level]


class Metric:
    def __init__(self, family: MetricFamily, labels: Mapping[str, str], buckets: Sequence[float] | None) -> None:
        if family.kind == MetricFamily.HISTOGRAM and buckets is None:
            raise TritonModelException("histogram metrics need buckets")
        self.family = family
        self.labels = dict(labels)
        self._value = 0.0
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if self.family.kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("a counter cannot decrease")
        if self.family.kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("increment is not supported on a histogram")
        self._value += value

    def set(self, value: float) -> None:
        if self.family.kind != MetricFamily.GAUGE:
            raise TritonModelException("set is supported on gauges only")
        self._value = value

    def observe(self, value: float) -> None:
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("observe is supported on histograms only")
        self.observations.append(value)

    def value(self) -> float:
        return self._value


class MetricFamily:
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    families: dict[str, MetricFamily] = {}

    def __init__(self, name: str, description: str, kind: int) -> None:
        known = MetricFamily.families.get(name)
        if known is not None and (known.description, known.kind) != (description, kind):
            raise TritonModelException(f"metric family {name!r} already exists with another description or kind")
        self.name = name
        self.description = description
        self.kind = kind
        self.metrics: list[Metric] = []
        MetricFamily.families[name] = self

    def Metric(self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None) -> Metric:  # noqa: N802
        metric = Metric(self, labels or {}, buckets)
        self.metrics.append(metric)
        return metric


# ------------------------------------------------------------------------------------------------------ BLS


class BlsModel(Protocol):
    """A test double of a model called through BLS: `exec` returns what the real `InferenceRequest.exec` would."""

    def exec(self, request: InferenceRequest, decoupled: bool) -> Any: ...


BLS_MODELS: dict[str, BlsModel] = {}


@contextmanager
def bls_model(name: str, model: BlsModel) -> Iterator[BlsModel]:
    """BLS requests for the model `name` reach `model` for the duration of the block."""
    BLS_MODELS[name] = model
    try:
        yield model
    finally:
        BLS_MODELS.pop(name, None)


class EngineDouble:
    """Test double of the `tensorrt_llm` engine model as a decoupled BLS caller sees it. Each generation request
    gets the responses `script(request)` returns, in order; with `hold`, its stream then stays open, as an engine
    still generating, until a `stop` request with its id arrives (unless `stop_ends_stream` is false: a lost
    response, whose iterator never ends) or `release()`. A `stop` request is recorded in `stops` and answered
    with an empty stream."""

    def __init__(
        self,
        script: Callable[[InferenceRequest], Iterable[InferenceResponse]] | None = None,
        hold: bool = False,
        stop_ends_stream: bool = True,
    ) -> None:
        self.script = script or (lambda request: [])
        self.hold = hold
        self.stop_ends_stream = stop_ends_stream
        self.requests: list[InferenceRequest] = []
        self.stops: list[str] = []
        self._stopped: dict[str, threading.Event] = {}
        self._released = threading.Event()
        self._lock = threading.Lock()

    def exec(self, request: InferenceRequest, decoupled: bool) -> Iterator[InferenceResponse]:
        if not decoupled:
            raise TritonModelException("test double: the engine model is decoupled; exec(decoupled=True)")
        stop = get_input_tensor_by_name(request, "stop")
        with self._lock:
            stopped = self._stopped.setdefault(request.request_id(), threading.Event())
            if stop is not None and bool(stop.as_numpy().reshape(-1)[0]):
                self.stops.append(request.request_id())
                stopped.set()
                return iter(())
            self.requests.append(request)
        return self._stream(request, stopped)

    def _stream(self, request: InferenceRequest, stopped: threading.Event) -> Iterator[InferenceResponse]:
        yield from self.script(request)
        while self.hold and not self._released.is_set():
            if stopped.wait(0.01) and self.stop_ends_stream:
                return

    def release(self) -> None:
        """End every held stream (a test's teardown: no thread is left waiting)."""
        self._released.set()

    def inputs(self, index: int = -1) -> dict[str, np.ndarray]:
        """The tensors of the `index`-th generation request."""
        return {t.name(): t.as_numpy() for t in self.requests[index].inputs()}

    @staticmethod
    def chunk(
        ids: Sequence[int], log_probs: Sequence[float] | None = None, cum_log_prob: float | None = None
    ) -> InferenceResponse:
        """A response of new tokens, as the engine streams them (`exclude_input_in_output`); with log probs,
        `cum_log_probs` defaults to their sum."""
        tensors = [
            Tensor("output_ids", np.array(ids, dtype=np.int32).reshape(1, 1, -1)),
            Tensor("sequence_length", np.array([[len(ids)]], dtype=np.int32)),
        ]
        if log_probs is not None:
            cum = sum(log_probs) if cum_log_prob is None else cum_log_prob
            tensors.append(Tensor("cum_log_probs", np.array([[cum]], dtype=np.float32)))
            tensors.append(Tensor("output_log_probs", np.array(log_probs, dtype=np.float32).reshape(1, 1, -1)))
        return InferenceResponse(tensors)

    @staticmethod
    def error(message: str, code: int = TritonError.INTERNAL) -> InferenceResponse:
        return InferenceResponse(error=TritonError(message, code))

    @staticmethod
    def error_in_band(message: str) -> InferenceResponse:
        """A final response carrying the engine's error in `error_message` (what `errors_in_band` asks for)."""
        return InferenceResponse([Tensor("error_message", np.array([[message.encode("utf-8")]], dtype=object))])


# ------------------------------------------------------------------------------------------- test helpers


def reset() -> None:
    """Forget recorded log lines and metric families (class-level state, as in the one real stub process)."""
    Logger.records = []
    MetricFamily.families = {}


def metric_value(family: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of the metric of `family` with exactly `labels`."""
    for metric in MetricFamily.families[family].metrics:
        if metric.labels == dict(labels or {}):
            return metric.value()
    raise KeyError(f"no metric {family}{dict(labels or {})}")


def make_request(
    inputs: Mapping[str, Any],
    request_id: str = "",
    parameters: Mapping[str, Any] | None = None,
    sender: ResponseSender | None = None,
) -> InferenceRequest:
    """A received request: `inputs` maps names to arrays (already `[N, ...]`); None values are left out."""
    tensors = [Tensor(name, value) for name, value in inputs.items() if value is not None]
    return InferenceRequest(inputs=tensors, request_id=request_id, parameters=parameters, sender=sender)


def this_module() -> ModuleType:
    return sys.modules[__name__]


@contextmanager
def install() -> Iterator[ModuleType]:
    """This module as `triton_python_backend_utils` (fresh recorded state) for the duration of the block."""
    reset()
    previous = sys.modules.get(MODULE_NAME)
    sys.modules[MODULE_NAME] = this_module()
    try:
        yield this_module()
    finally:
        if previous is None:
            sys.modules.pop(MODULE_NAME, None)
        else:
            sys.modules[MODULE_NAME] = previous


# The modules rendering copies beside each model.py (mentallama_server.launch.render.MODEL_GLUE).
MODEL_FOLDER_MODULES = ("_bootstrap", "_glue")


def load_model(model_dir: Path, name: str | None = None) -> ModuleType:
    """Import `<model_dir>/1/model.py` as Triton's stub does: its folder first on sys.path, so its `_bootstrap`
    (copied there by rendering) runs first and reads `python_path` from the model's config.pbtxt, and its `_glue`
    is the one beside it. sys.path, `_bootstrap` and `_glue` are restored afterwards: each real model has a process
    of its own, these tests share one. Call inside `install()`."""
    if sys.modules.get(MODULE_NAME) is not this_module():
        raise RuntimeError("load_model needs the stub installed: call it inside `with triton_stub.install():`")
    model_py = Path(model_dir) / "1" / "model.py"
    saved_path = list(sys.path)
    saved = {name: sys.modules.pop(name, None) for name in MODEL_FOLDER_MODULES}
    sys.path.insert(0, str(model_py.parent))
    try:
        spec = importlib.util.spec_from_file_location(name or f"model_under_test_{Path(model_dir).name}", model_py)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved_path
        for module_name, previous in saved.items():
            sys.modules.pop(module_name, None)
            if previous is not None:
                sys.modules[module_name] = previous


def model_config(config_pbtxt: Path) -> dict[str, Any]:
    """A config.pbtxt as the Python backend hands it to `initialize` (JSON of Triton's ModelConfig protobuf,
    proto field names); parsing it with Triton's own protobuf also fails on any field Triton would refuse."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(Path(config_pbtxt).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def model_args(model_dir: Path, overrides: Callable[[dict[str, Any]], None] | None = None) -> dict[str, str]:
    """The `args` of `TritonPythonModel.initialize` for the model in `model_dir` (a rendered repository's
    folder); `overrides` may edit the parsed config first."""
    model_dir = Path(model_dir)
    config = model_config(model_dir / "config.pbtxt")
    if overrides is not None:
        overrides(config)
    return {
        "model_config": json.dumps(config),
        "model_instance_kind": "CPU",
        "model_instance_name": f"{config['name']}_0_0",
        "model_instance_device_id": "0",
        "model_repository": str(model_dir),
        "model_version": "1",
        "model_name": config["name"],
    }


def start_model(module: ModuleType, model_dir: Path, **parameters: str) -> Any:
    """`module.TritonPythonModel()` initialised as Triton would for the model in `model_dir`, with the config's
    `parameters` set to (or added as) the given values."""

    def edit(config: dict[str, Any]) -> None:
        for name, value in parameters.items():
            config.setdefault("parameters", {})[name] = {"string_value": value}

    model = module.TritonPythonModel()
    model.initialize(model_args(model_dir, edit))
    return model


def render_cpu_repository(engine_dir: Path, output: Path, **settings: Any) -> Path:
    """The CPU profile's model repository rendered as `mentallama-serve` renders it, for `engine_dir` (an engine
    folder, or a checkpoint where only the tokenizer is needed) and `CpuSettings` fields `settings`."""
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.render import render_repository
    from mentallama_server.launch.serve_cpu import cpu_values

    return render_repository("cpu", cpu_values(Path(engine_dir), CpuSettings(**settings)), Path(output))


def outputs_of(responses: Iterable[InferenceResponse | None]) -> list[dict[str, np.ndarray]]:
    """The output tensors of each response that carries some."""
    return [r.as_dict() for r in responses if r is not None and not r.has_error()]
