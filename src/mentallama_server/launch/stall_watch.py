"""Notice a server that has stopped executing requests while it still reports ready.

A model whose requests wait (`nv_inference_pending_request_count` > 0) while its count of executed requests
(`nv_inference_count`) does not move for `stall_s` seconds is wedged: every Python model here returns from
`execute` at once (generation runs on its own threads), so a queue only stays put when the model's process or
Triton's Python backend is blocked. Seen once in a 30-minute soak of Triton 2.51: both Python stubs blocked in
`send` with requests queued, the server ready, nothing answered. The launcher then stops the server and exits
non-zero, as for a dead stub, so that a supervisor restarts a clean one. Standard library only.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

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


def read_progress(metrics_url: str, timeout_s: float = 2.0) -> dict[str, ModelProgress] | None:
    """The server's progress now, or None when its metrics page cannot be read (then nothing is judged)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - our own server
            return parse_progress(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


class Canary:
    """A one-token request to the front model every `interval_s`, on its own thread: any answer (an error such as
    "server overloaded" too) means the server still serves; `misses` probes in a row without an answer within
    `timeout_s` mean it is wedged. Catches what queue counts cannot: models whose `execute` hands requests to
    their own threads show nothing waiting when those threads are stuck."""

    def __init__(self, http_url: str, model: str, interval_s: float = 15.0, timeout_s: float = 30.0,
                 misses: int = 2) -> None:  # fmt: skip
        self.url = f"{http_url}/v2/models/{model}/generate"
        self.interval_s, self.timeout_s, self.misses = interval_s, timeout_s, misses
        self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)

    def start(self) -> Canary:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def wedged(self) -> bool:
        return self.missed >= self.misses

    def probe(self) -> bool:
        """True when the server answered, whatever the answer."""
        body = json.dumps({"text_input": "ping", "max_tokens": 1}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - our server
                response.read()
            return True
        except urllib.error.HTTPError:
            return True  # an error status is an answer
        except (OSError, ValueError):
            return False  # no answer in time, or the connection failed

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.missed = 0 if self.probe() else self.missed + 1
