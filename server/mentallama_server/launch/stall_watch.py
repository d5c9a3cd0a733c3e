"""Notice a server that has stopped executing requests while it still reports ready; never mistake a busy
server for a wedged one.

A model whose requests wait (`nv_inference_pending_request_count` > 0) while its count of executed requests
(`nv_inference_count`) does not move for `stall_s` seconds is wedged: every Python model here returns from
`execute` at once (generation runs on its own threads), so a queue only stays put when the model's process or
Triton's Python backend is blocked. Seen once in a 30-minute soak of Triton 2.51: both Python stubs blocked in
`send` with requests queued, the server ready, nothing answered. The launcher then stops the server and exits
non-zero, as for a dead stub, so that a supervisor restarts a clean one.

`Canary` asks the front model for one token. Its request waits in the same queues as the clients' work, so
a slow answer alone proves nothing: under full load (160 streams of 683 tokens on 2 cores) it waited over a
minute behind healthy work, and an earlier canary that counted two slow answers as a wedge killed that server.
So the server is judged by its progress (`parse_work_done`: tokens produced, responses sent, engine
iterations), and the canary only says whether a request is waiting: wedged means a request unanswered while
nothing progressed for `quiet_s` (`Liveness`). Standard library only.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# Counters that move only while the server does work, never because a request arrived (a wedged stub still
# takes requests in: Triton's nv_inference_count counts them, the canary's own too). The CPU engine step's
# tokens, the front model's responses to clients (both profiles), and TensorRT-LLM's executor iterations
# (the C++ backend's gauge `nv_trt_llm_general_metrics{general_type="iteration_counter"}`, GPU profile).
WORK_COUNTERS = ("mentallama_engine_tokens_total", "mentallama_front_responses_total")
_TRTLLM_ITERATIONS = re.compile(r'^nv_trt_llm_general_metrics\{[^}]*general_type="iteration_counter"[^}]*\}\s+(\S+)$')
_WORK_SAMPLE = re.compile(r"^(" + "|".join(WORK_COUNTERS) + r")(\{[^}]*\})?\s+(\S+)$")
_SAMPLE = re.compile(r'^(nv_inference_pending_request_count|nv_inference_count)\{model="([^"]+)"[^}]*\}\s+(\S+)$')


@dataclass(frozen=True)
class ModelProgress:
    pending: float
    executed: float


def parse_progress(metrics_text: str) -> dict[str, ModelProgress]:
    """Pending and executed request counts per model, from Triton's Prometheus page."""
    pending: dict[str, float] = {}
    executed: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            target = pending if match[1] == "nv_inference_pending_request_count" else executed
            target[match[2]] = target.get(match[2], 0.0) + float(match[3])  # summed over versions
    return {model: ModelProgress(pending.get(model, 0.0), executed.get(model, 0.0)) for model in pending}


@dataclass
class StallWatch:
    """Feed it readings (`update`); it names the models that have had requests waiting and none executed for
    `stall_s` seconds."""

    stall_s: float
    _waiting_since: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> (executed, since)

    def update(self, progress: dict[str, ModelProgress], now: float) -> list[str]:
        stalled = []
        for model, reading in progress.items():
            if reading.pending <= 0:
                self._waiting_since.pop(model, None)
                continue
            seen = self._waiting_since.get(model)
            if seen is None or seen[0] != reading.executed:  # new wait, or progress since: start over
                self._waiting_since[model] = (reading.executed, now)
            elif now - seen[1] >= self.stall_s:
                stalled.append(model)
        return sorted(stalled)


def _read_metrics(metrics_url: str, parse: Callable[[str], T], timeout_s: float) -> T | None:
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - our own server
            return parse(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def read_progress(metrics_url: str, timeout_s: float = 2.0) -> dict[str, ModelProgress] | None:
    """The server's progress now, or None when its metrics page cannot be read (then nothing is judged)."""
    return _read_metrics(metrics_url, parse_progress, timeout_s)


def parse_work_done(metrics_text: str) -> dict[str, float]:
    """The server's work counters (`WORK_COUNTERS`, TensorRT-LLM's iteration counter) by series, from Triton's
    Prometheus page; any change between two readings is progress."""
    work: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if match := _WORK_SAMPLE.match(line):
            work[match[1] + (match[2] or "")] = float(match[3])
        elif match := _TRTLLM_ITERATIONS.match(line):
            work[line.rsplit(None, 1)[0]] = float(match[1])
    return work


def read_work_done(metrics_url: str, timeout_s: float = 2.0) -> dict[str, float] | None:
    """The work counters now, or None when the metrics page cannot be read (then no progress is seen)."""
    return _read_metrics(metrics_url, parse_work_done, timeout_s)


@dataclass
class Liveness:
    """Wedged: a request has waited unanswered, and no work counter moved, for `quiet_s` seconds. A request that
    waits while the counters move waits behind work: the server is busy, however long the wait."""

    quiet_s: float
    _reading: dict[str, float] | None = None
    _progress_at: float = -math.inf
    _waiting_since: float | None = None

    def observe(self, reading: dict[str, float] | None, now: float) -> None:
        """A reading of the work counters (None: unreadable, no progress seen)."""
        if reading is None:
            return
        if self._reading is not None and reading != self._reading:
            self._progress_at = now
        self._reading = reading

    def sent(self, now: float) -> None:
        """A request is waiting; a repeated one keeps the first one's time (the wait goes on)."""
        if self._waiting_since is None:
            self._waiting_since = now

    def answered(self) -> None:
        self._waiting_since = None

    def waited_for(self, now: float) -> float:
        """Seconds the request has waited for an answer; 0 while none waits."""
        return 0.0 if self._waiting_since is None else now - self._waiting_since

    def quiet_for(self, now: float) -> float:
        """Seconds a request has waited with no progress; 0 while none waits."""
        if self._waiting_since is None:
            return 0.0
        return now - max(self._waiting_since, self._progress_at)

    def wedged(self, now: float) -> bool:
        return self._waiting_since is not None and self.quiet_for(now) >= self.quiet_s


class Canary:
    """A one-token request to the front model every `interval_s` after the last answer, on its own thread; any
    answer (an error such as "server overloaded" too) means the server still serves. While the request waits,
    the work counters are read every `poll_s`; `wedged` once it has waited `quiet_s` with none of them moving
    (`Liveness`). An unanswered request is sent again after `request_timeout_s` (or at once when the
    connection fails) without restarting the wait. Catches what queue counts cannot: models whose `execute`
    hands requests to their own threads show nothing waiting when those threads are stuck. Defaults: a wedge
    is reported within interval + quiet + poll + a metrics read, about 70 s."""

    def __init__(self, http_url: str, model: str, metrics_url: str | None = None, *, interval_s: float = 10.0,
                 quiet_s: float = 50.0, poll_s: float = 5.0, request_timeout_s: float = 300.0,
                 read_timeout_s: float = 2.0) -> None:  # fmt: skip
        self.url = f"{http_url}/v2/models/{model}/generate"
        self.metrics_url = metrics_url
        self.interval_s, self.poll_s, self.request_timeout_s = interval_s, poll_s, request_timeout_s
        self.read_timeout_s = read_timeout_s
        self.liveness = Liveness(quiet_s)
        self.answers = 0
        self._wedged = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)

    @property
    def quiet_s(self) -> float:
        return self.liveness.quiet_s

    def start(self) -> Canary:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def wedged(self) -> bool:
        return self._wedged

    def probe(self) -> bool:
        """True when the server answered, whatever the answer."""
        body = json.dumps({"text_input": "ping", "max_tokens": 1}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:  # noqa: S310
                response.read()
            return True
        except urllib.error.HTTPError:
            return True  # an error status is an answer
        except (OSError, ValueError):
            return False  # no answer in time, or the connection failed

    def observe(self) -> None:
        """Read the work counters and judge: called every `poll_s` while a request waits."""
        reading = None if self.metrics_url is None else read_work_done(self.metrics_url, self.read_timeout_s)
        now = time.monotonic()
        self.liveness.observe(reading, now)
        if self.liveness.wedged(now):
            self._wedged = True  # latched: the launcher stops the server

    def _run(self) -> None:
        self.observe()  # the first reading: progress is a change from it
        while not self._stop.wait(self.interval_s):
            self._probe_until_answered()

    def _probe_until_answered(self) -> None:
        while not self._stop.is_set():
            self.liveness.sent(time.monotonic())
            self.observe()
            if self._wait_for_answer():
                self.liveness.answered()
                self.answers += 1
                return
            self._stop.wait(self.poll_s)  # no answer: the connection failed or timed out; ask again
            self.observe()

    def _wait_for_answer(self) -> bool:
        """One probe on its own thread, the counters read every `poll_s` while it waits; False when it got no
        answer (or the canary was stopped)."""
        answer: list[bool] = []
        done = threading.Event()

        def ask() -> None:
            answer.append(self.probe())
            done.set()

        threading.Thread(target=ask, name="canary-probe", daemon=True).start()
        while not done.wait(self.poll_s):
            if self._stop.is_set():
                return False
            self.observe()
        return answer[0]
