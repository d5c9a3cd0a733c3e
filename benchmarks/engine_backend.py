"""The bare CPU engine in-process (no Triton, no gRPC): the baseline of the comparison mode.

`EngineBackend` sends the same `SampleRequest`s as the Triton backends straight to
`mentallama_server.cpu_engine.CpuEngine`: it tokenises like the server's preprocessing
(`tokenizer.encode(text)`, BOS included), maps the sampling settings the same way, and stamps each
event carrying new tokens when the benchmark's event loop receives it. The clock starts before
tokenisation because the served stack's TTFT includes its tokenisation too; what remains between the
two is Triton, gRPC, the Python-backend hops and detokenisation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from benchmarks.backends import Backend
from benchmarks.records import RequestOutcome, SampleRequest, SamplingParams

__all__ = ["EngineBackend", "engine_kwargs"]

# CpuSettings field -> CpuEngine keyword (the served profile renders these same settings).
_SETTING_TO_ENGINE = {
    "engine_max_batch_size": "max_batch_size",
    "cache_num_blocks": "num_blocks",
    "cache_block_size": "block_size",
    "max_batch_tokens": "max_batch_tokens",
    "dtype": "dtype",
    "num_threads": "num_threads",
    "device": "device",
}


def engine_kwargs(overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """CpuEngine keywords from `mentallama-serve`'s defaults (`CpuSettings`) plus `KEY=VALUE` overrides
    named like the serve flags (`engine_max_batch_size`, `cache_num_blocks`, ...), so the bare engine
    runs with the settings the server runs with."""
    from mentallama_server.settings import CpuSettings

    settings = CpuSettings()
    known = {f.name: f for f in fields(CpuSettings)}
    for key, value in (overrides or {}).items():
        name = key.replace("-", "_")
        if name not in _SETTING_TO_ENGINE:
            raise ValueError(f"unknown engine setting {key!r}; known: {', '.join(_SETTING_TO_ENGINE)}")
        setattr(settings, name, type(getattr(settings, name))(value) if name in known else value)
    kwargs = {engine: getattr(settings, name) for name, engine in _SETTING_TO_ENGINE.items()}
    kwargs["num_threads"] = int(settings.template_values()["num_threads"])  # as the server renders it
    return kwargs


class EngineBackend(Backend):
    """`CpuEngine` in this process; `endpoint` is the checkpoint folder."""

    kind = "engine"
    count_label = "engine"
    uses_server = False

    def __init__(
        self,
        checkpoint_dir: str | Path,
        engine_options: dict[str, Any] | None = None,
        request_timeout_s: float = 600.0,
    ) -> None:
        super().__init__(str(checkpoint_dir), model="cpu-engine", request_timeout_s=request_timeout_s)
        self.engine_options = dict(engine_options or {})
        self._engine: Any = None
        self._tokenizer: Any = None
        self._ids = itertools.count()

    async def open(self) -> None:
        if self._engine is not None:
            return
        from benchmarks.tokens import load_tokenizer
        from mentallama_server.cpu_engine import CpuEngine

        def build() -> Any:
            engine = CpuEngine(self.endpoint, **self.engine_options)
            engine.start(warmup=True)
            return engine

        self._tokenizer = load_tokenizer(self.endpoint)
        self._engine = await asyncio.to_thread(build)

    async def close(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None

    async def is_ready(self) -> bool:
        await self.open()
        return self._engine is not None

    def _request(self, sample: SampleRequest, params: SamplingParams, input_ids: list[int]) -> Any:
        from mentallama_server.engine_types import GenerationRequest

        extra: dict[str, Any] = {}
        if params.force_output_len:
            extra["min_new_tokens"] = sample.max_tokens
        for name in ("temperature", "top_k", "top_p", "seed"):
            value = getattr(params, name)
            if value is not None:
                extra[name] = value
        request_id = f"bench-{next(self._ids)}"
        return GenerationRequest(
            request_id, input_ids, max_new_tokens=sample.max_tokens, streaming=True, **extra
        )

    @staticmethod
    async def _collect(queue: asyncio.Queue[Any], out: RequestOutcome) -> None:
        """Consume one request's events up to its final one."""
        out.server_output_tokens = 0
        while True:
            event = await queue.get()
            now = time.perf_counter()
            out.num_responses += 1
            if event.new_token_ids:
                out.chunk_times.append(now)
                out.server_output_tokens += len(event.new_token_ids)
            if event.finished:
                out.final_seen = True
                if event.finish_reason in ("error", "cancelled"):
                    out.error_code = "ENGINE_ERROR" if event.finish_reason == "error" else "CANCELLED"
                    out.error = (event.error or event.finish_reason)[:300]
                return

    async def generate(self, sample: SampleRequest, params: SamplingParams) -> RequestOutcome:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        out = RequestOutcome(start=time.perf_counter())
        request = None
        try:
            await self.open()
            input_ids = self._tokenizer.encode(sample.prompt)
            request = self._request(sample, params, input_ids)
            out.server_input_tokens = len(input_ids)
            self._engine.submit(request, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
            await asyncio.wait_for(self._collect(queue, out), self.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            if request is not None:
                self._engine.cancel(request.request_id)
            out.error_code, out.error = (
                "DEADLINE_EXCEEDED",
                f"no final event within {self.request_timeout_s:g} s",
            )
        except ValueError as exc:
            out.error_code, out.error = "INVALID_ARGUMENT", str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise
            out.error_code, out.error = "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"[:300]
        out.end = time.perf_counter()
        return out
