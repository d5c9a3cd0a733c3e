"""The `pb_utils` side every Python model shares, so that each `model.py` only adapts its model's logic.

Copied beside each `model.py` at render time, as `_bootstrap.py` is, which a `model.py` still imports first.

- `model_config`: the model's config, refused at load when its inputs differ from those the code reads.
- `read_inputs`: a request's input tensors as arrays (None for one it does not carry).
- `respond`: the responses of a model that answers every request at once (`preprocessing`, `postprocessing`).
- `DecoupledModel`: the frame of a decoupled model (the `mentallama` front model, the CPU engine step). `execute`
  hands the requests to an intake thread, which accepts each one under the model's `pb_utils` lock with a
  `Channel` over its response sender; a watcher thread calls the model's `watch_once` every `WATCH_INTERVAL_S`.
  A request whose caller stops it in band (parameter `stops_in_band`: the front door, the front model) gets a
  `Channel` that never asks Triton `is_cancelled`: a round trip to tritonserver per request and watcher round.

Every call into `pb_utils` of a decoupled model (reading and sending tensors and responses, `is_cancelled`,
metrics, the log) holds `pb_lock`: the Python-backend stub of Triton 2.51 crashed when threads used it at once
(docs/RELIABILITY.md). The lock is re-entrant: model logic calls a `Channel` with it held or not.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import _bootstrap  # noqa: F401  (sets sys.path; must come first)
import numpy as np
import triton_python_backend_utils as pb_utils

from mentallama_interface import STOPS_IN_BAND
from mentallama_server.models.request_errors import RequestError
from mentallama_server.models.triton_params import check_inputs, parse_model_config, request_flag

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WATCH_INTERVAL_S = 0.05

Outputs = Mapping[str, np.ndarray]


def model_config(args: dict[str, Any], handled: Iterable[str]) -> dict[str, Any]:
    """The config Triton passes to `initialize`; a model whose config declares other inputs than `handled` (the
    ones its code reads) refuses to load."""
    config = parse_model_config(args)
    check_inputs(config, handled)
    return config


def read_inputs(request: Any, names: Iterable[str]) -> dict[str, np.ndarray | None]:
    """The request's input tensors `names` as arrays; None for an input it does not carry."""
    inputs = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    return inputs


def error_response(message: str, code: str | int) -> Any:
    """An error response; `code` is a `TritonError` code's name or value."""
    value = getattr(pb_utils.TritonError, code) if isinstance(code, str) else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, value))


def tensors_response(outputs: Outputs) -> Any:
    return pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])


def respond(requests: Iterable[Any], names: Iterable[str], handle: Callable[[dict], Outputs]) -> list[Any]:
    """One response per request: `handle(inputs)` gives the request's output tensors; a `RequestError` (naming the
    field) refuses that request alone with INVALID_ARGUMENT."""
    names = tuple(names)
    responses = []
    for request in requests:
        try:
            responses.append(tensors_response(handle(read_inputs(request, names))))
        except RequestError as exc:
            responses.append(error_response(str(exc), "INVALID_ARG"))
    return responses


def _stops_in_band(request: Any) -> bool:
    """Whether the request's caller stops it in band (`STOPS_IN_BAND`); parameters that cannot be read (a string
    that is not UTF-8) say no."""
    try:
        return request_flag(request.parameters(), STOPS_IN_BAND)
    except Exception:
        return False


class Channel:
    """A request's response sender, behind the model's `pb_utils` lock. `send` takes a reply of the model's logic:
    an `error` (with its `code`), the tensors `tensors()` returns, or neither (a bare flag); `final` ends the
    request's stream. Counts the responses it sends in the model's `responses_sent`. Without `polls`, the caller
    stops the request in band and `is_cancelled` is False without asking Triton."""

    def __init__(self, sender: Any, model: "DecoupledModel", polls: bool = True) -> None:
        self.sender = sender
        self.model = model
        self.polls = polls

    def send(self, reply: Any) -> None:
        flags = FINAL if reply.final else 0
        with self.model.pb_lock:
            if reply.error is not None:
                self.sender.send(error_response(reply.error, reply.code), flags=flags)
            elif tensors := reply.tensors():
                self.sender.send(tensors_response(tensors), flags=flags)
            else:
                self.sender.send(flags=flags)
            self.model.responses_sent += 1

    def fail(self, message: str, code: str) -> None:
        """End the request with an error; what cannot be sent (the client is gone, Triton refused) is logged."""
        try:
            with self.model.pb_lock:
                self.sender.send(error_response(message, code), flags=FINAL)
                self.model.responses_sent += 1
        except Exception as exc:
            self.model.log(f"{self.model.INTAKE}: could not send an error ({type(exc).__name__})", error=True)

    def is_cancelled(self) -> bool:
        if not self.polls:
            return False
        with self.model.pb_lock:
            return self.sender.is_cancelled()


class DecoupledModel:
    """The frame of a decoupled model. A subclass calls `start()` at the end of its `initialize` and defines
    `accept(request, channel)` (a `RequestError` it raises refuses the request with INVALID_ARGUMENT, any other
    exception with INTERNAL: the intake never ends) and `watch_once()` (an exception it raises is logged: the
    watcher never ends); its `finalize` calls this one's first. `INTAKE`, `WATCHER` and `REFUSED` name them in the
    log and in the errors clients get."""

    INTAKE = "intake"
    WATCHER = "watcher"
    REFUSED = "request refused"

    def __init__(self) -> None:
        self.pb_lock = threading.RLock()  # taken last: never acquire another lock while holding it
        self.responses_sent = 0  # counted under pb_lock
        self.stopping = threading.Event()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()

    def accept(self, request: Any, channel: Channel) -> None:
        raise NotImplementedError

    def watch_once(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        threading.Thread(target=self._intake, name="request-intake", daemon=True).start()
        threading.Thread(target=self._watch, name="cancel-watcher", daemon=True).start()

    def log(self, message: str, error: bool = False) -> None:
        with self.pb_lock:
            (pb_utils.Logger.log_error if error else pb_utils.Logger.log_warn)(message)

    def execute(self, requests: list) -> None:
        # Handed to the intake thread, never waiting on pb_lock here: Triton waits for execute to return before it
        # takes this stub's next message, and the thread holding pb_lock may be in a send that waits for Triton;
        # that cycle wedged a soak (docs/RELIABILITY.md). Decoupled requests stay valid after execute returns.
        self.inbox.put(requests)
        return None

    def _intake(self) -> None:
        while (requests := self.inbox.get()) is not None:
            for request in requests:
                with self.pb_lock:
                    self._accept_safely(request)
            del requests  # not held until the next request comes: a large one's memory is returned now

    def _accept_safely(self, request: Any) -> None:
        """Accept one request; whatever goes wrong is that request's error. The intake thread must never end: a
        request id that was not UTF-8 once raised here, and every later request then waited forever while the
        server still reported ready (issue 18, finding 1)."""
        try:
            channel = Channel(request.get_response_sender(), self, not _stops_in_band(request))
        except Exception as exc:
            self.log(f"{self.INTAKE}: no response sender ({type(exc).__name__})", error=True)
            return
        try:
            self.accept(request, channel)
        except RequestError as exc:
            channel.fail(str(exc), "INVALID_ARG")
        except Exception as exc:
            self.log(f"{self.INTAKE}: {type(exc).__name__}: {exc}", error=True)
            channel.fail(f"{self.REFUSED}: {type(exc).__name__}: {exc}", "INTERNAL")

    def _watch(self) -> None:
        while not self.stopping.wait(WATCH_INTERVAL_S):
            try:
                self.watch_once()
            except Exception as exc:  # the watcher must survive: it is what frees cancelled requests
                self.log(f"{self.WATCHER}: {type(exc).__name__}: {exc}", error=True)

    def finalize(self) -> None:
        self.stopping.set()
        self.inbox.put(None)
