"""What one request looked like from the client: the unit every metric is computed from.

A backend observes a request (`RequestOutcome`, absolute `time.perf_counter()` stamps, the generated
text kept in memory only for token counting); the runner turns it into a `RequestRecord` (times as
offsets from the run's start, tokens counted, no text). Records are what we write to disk: request
and generated text never leave memory because IMHI posts are sensitive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TOKEN_SOURCES",
    "RequestOutcome",
    "RequestRecord",
    "RunResult",
    "SampleRequest",
    "SamplingParams",
]

# Where a record's output token count came from, most to least exact ("engine": the bare engine's own
# count in the comparison mode).
TOKEN_SOURCES = ("server", "engine", "tokenizer", "responses")


@dataclass(frozen=True)
class SampleRequest:
    """One prompt to send. `prompt_tokens` is the dataset's own count (None when no tokenizer)."""

    index: int
    prompt: str = field(repr=False)  # never printed: IMHI queries quote real posts
    task: str
    max_tokens: int
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings shared by every request of a run.

    `force_output_len` sends `min_tokens = max_tokens` so every request generates exactly
    `max_tokens` tokens and runs with different prompts compare fairly.
    """

    force_output_len: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class RequestOutcome:
    """Raw client-side observation of one request. Stamps are `time.perf_counter()` seconds.

    `chunk_times` holds the arrival time of every response that carried text (empty responses, such
    as a bare final flag, are counted in `num_responses` but are not tokens: genai-perf and AIPerf
    drop them too). `error_code` is the gRPC status name (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...),
    `INFER_ERROR` for an error the server sent on an open stream, `HTTP_<status>` for the HTTP
    backend, or a client-side code (`NO_OUTPUT`, `CLIENT_ERROR`).
    """

    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    num_responses: int = 0
    text: str = field(default="", repr=False)
    server_input_tokens: int | None = None
    server_output_tokens: int | None = None
    final_seen: bool = False
    error_code: str | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error_code is None


@dataclass
class RequestRecord:
    """One finished request of a measured run; times are seconds from the run's start.

    Derived latencies follow genai-perf/vLLM: `ttft` = first text-bearing response - send;
    `e2e_latency` = last text-bearing response - send; `itl` = (e2e - ttft) / (output_tokens - 1),
    undefined (None) for fewer than two output tokens.
    """

    request_id: str
    sample_index: int
    task: str
    backend: str
    endpoint: str
    max_tokens: int
    start_s: float
    end_s: float
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    chunk_offsets_s: list[float] = field(default_factory=list)
    num_responses: int = 0
    output_chars: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str | None = None
    success: bool = True
    error_code: str | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.start_s

    @property
    def e2e_latency(self) -> float | None:
        return None if self.last_token_s is None else self.last_token_s - self.start_s

    @property
    def itl(self) -> float | None:
        ttft, e2e, n = self.ttft, self.e2e_latency, self.output_tokens
        if ttft is None or e2e is None or n is None or n < 2:
            return None
        return (e2e - ttft) / (n - 1)

    @property
    def client_queue(self) -> float | None:
        """Time between the scheduled arrival and the send (waiting for the concurrency cap)."""
        return None if self.scheduled_s is None else self.start_s - self.scheduled_s

    def to_dict(self) -> dict[str, Any]:
        """All stored fields plus the derived latencies (for JSON)."""
        out = dataclasses.asdict(self)
        out.update(ttft=self.ttft, itl=self.itl, e2e_latency=self.e2e_latency, client_queue=self.client_queue)
        return out

    def to_row(self) -> dict[str, Any]:
        """Flat scalar row for CSV: the per-chunk offsets are left to the JSON file."""
        row = self.to_dict()
        row.pop("chunk_offsets_s")
        return row

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RunResult:
    """One measured run (`runner.run_load`): its records, summary (metrics at top level) and server-side deltas;
    `folder` once `report.write_run` wrote it."""

    label: str
    records: list[RequestRecord]
    summary: dict[str, Any]
    folder: Path | None = None

    @property
    def interrupted(self) -> bool:
        return bool(self.summary.get("run", {}).get("interrupted"))
