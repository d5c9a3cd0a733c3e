"""The bare CPU engine in-process (no Triton, no gRPC): the baseline of the comparison mode.

`EngineBackend` sends the same `SampleRequest`s as the Triton backends straight to
`mentallama_server.engine.ov_engine.OpenVinoEngine`, on the engine `mentallama-serve` would serve for the checkpoint
(built on first use, shared with the server): it tokenises like the server's preprocessing
(`tokenizer.encode(text)`, BOS included), maps the sampling settings the same way, and stamps each
event carrying new tokens when the benchmark's event loop receives it. The clock starts before
tokenisation because the served stack's TTFT includes its tokenisation too; what remains between the
two is Triton, gRPC, the Python-backend hops and detokenisation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from mentallama_bench.backends import Backend
from mentallama_bench.records import RequestOutcome, SampleRequest, SamplingParams

__all__ = ["EngineBackend", "engine_kwargs", "engine_options", "engine_settings"]

# CpuSettings field -> OpenVinoEngine keyword (the served profile renders these same settings).
_SETTING_TO_ENGINE = {
    "engine_max_batch_size": "max_num_seqs",
    "cache_num_blocks": "num_kv_blocks",
    "max_batch_tokens": "max_num_batched_tokens",
    "dynamic_split_fuse": "dynamic_split_fuse",
    "prefix_caching": "enable_prefix_caching",
    "kv_cache_precision": "kv_cache_precision",
    "inference_precision": "inference_precision",
    "num_threads": "num_threads",
    "stream_hold_ms": "stream_hold_ms",
    "release_gil": "release_gil",
}
_BUILD_SETTINGS = ("weight_format",)


def engine_options(pairs: list[str]) -> dict[str, str]:
    """`--engine-option KEY=VALUE` flags as a dict; ValueError for one without `=`."""
    options = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    if len(options) != len(pairs):
        raise ValueError("--engine-option takes KEY=VALUE")
    return options


def engine_settings(overrides: dict[str, str] | None = None) -> Any:
    """`mentallama-serve`'s defaults (`CpuSettings`) plus `KEY=VALUE` overrides named like the serve flags
    (`engine_max_batch_size`, `cache_num_blocks`, `weight_format`, ...), so the bare engine runs with the
    settings the server runs with."""
    from mentallama_server.launch.cpu_profile import CpuSettings

    settings = CpuSettings()
    for key, value in (overrides or {}).items():
        name = key.replace("-", "_")
        if name not in _SETTING_TO_ENGINE and name not in _BUILD_SETTINGS:
            known = ", ".join((*_SETTING_TO_ENGINE, *_BUILD_SETTINGS))
            raise ValueError(f"unknown engine setting {key!r}; known: {known}")
        current = getattr(settings, name)
        if isinstance(current, bool):
            setattr(settings, name, value.strip().lower() in ("1", "true", "yes", "on"))
        else:
            setattr(settings, name, type(current)(value))
    return settings


def engine_kwargs(settings: Any) -> dict[str, Any]:
    """OpenVinoEngine keywords of resolved settings (no `auto` left). A setting the server code lacks is left out:
    the benchmark also measures server code from before it existed (issue 23's before/after)."""
    return {engine: getattr(settings, name) for name, engine in _SETTING_TO_ENGINE.items() if hasattr(settings, name)}


class EngineBackend(Backend):
    """`OpenVinoEngine` in this process; `endpoint` is the checkpoint folder."""

    kind = "engine"
    count_label = "engine"
    uses_server = False

    def __init__(
        self,
        checkpoint_dir: str | Path,
        settings: Any = None,
        request_timeout_s: float = 600.0,
    ) -> None:
        super().__init__(str(checkpoint_dir), model="cpu-engine", request_timeout_s=request_timeout_s)
        self.settings = settings if settings is not None else engine_settings()
        self._engine: Any = None
        self._tokenizer: Any = None
        self._ids = itertools.count()

    async def open(self) -> None:
        if self._engine is not None:
            return
        from mentallama_server.engine.ov_engine import OpenVinoEngine
        from mentallama_server.launch.serve_cpu import resolve_engine
        from mentallama_server.models.text_tokenizer import TextTokenizer

        def build() -> Any:
            engine_dir, settings = resolve_engine(Path(self.endpoint), self.settings)
            self._tokenizer = TextTokenizer.from_folder(engine_dir)
            engine = OpenVinoEngine(engine_dir, **engine_kwargs(settings))
            engine.start()
            return engine

        self._engine = await asyncio.to_thread(build)

    async def close(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None

    async def is_ready(self) -> bool:
        await self.open()
        return self._engine is not None

    def _request(self, sample: SampleRequest, params: SamplingParams, input_ids: list[int]) -> Any:
        from mentallama_server.engine.types import GenerationRequest

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
