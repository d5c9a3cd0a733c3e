"""Settings of the CPU profile (OpenVINO engine), with the reasons for each default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TypeVar

WEIGHT_FORMATS = ("auto", "fp32", "fp16", "int8", "int4")
PRECISIONS = ("auto", "f32", "bf16")
KV_PRECISIONS = ("auto", "f32", "f16", "bf16", "u8")


T = TypeVar("T")


def _flag(default: T, help: str) -> T:  # noqa: A002 - the metadata key mentallama.cli.options reads
    """A field that is a `mentallama-serve` flag: `help` is its --help text (the docstring below a field says why
    its default is what it is)."""
    return field(default=default, metadata={"help": help})


@dataclass
class CpuSettings:
    """Everything the CPU profile's rendered configs take. Each field is a `mentallama-serve` flag of the same
    name, or says in its metadata why it is not one (tests/server/test_serve_cli_options.py checks both)."""

    max_batch_size: int = field(
        default=64,
        metadata={"not_a_flag": "Triton's per-model row limit, not a capacity: each request is one row and the "
                  "engine's batch is --engine-max-batch-size; it only has to be > 0, as the ensemble needs"},
    )  # fmt: skip
    """Triton `max_batch_size` of every model: > 0 as the TensorRT-LLM ensemble has it; each request is one row."""
    engine_max_batch_size: int = _flag(32, "sequences decoded together (the scheduler's max_num_seqs)")
    """The scheduler's `max_num_seqs`: sequences decoded together in one step (measured: throughput on 2 cores
    stops growing past ~16-32)."""
    cache_num_blocks: int = _flag(512, "KV-cache size in blocks of 32 tokens")
    """KV-cache size in blocks of 32 tokens (512 x 32 = 16k tokens); explicit, so memory use is known."""
    max_batch_tokens: int = _flag(512, "tokens per engine step (max_num_batched_tokens)")
    """The scheduler's `max_num_batched_tokens`: tokens per step, so a long prompt is prefilled in chunks
    while decoding requests keep streaming (with dynamic split-fuse)."""
    dynamic_split_fuse: bool = _flag(True, "prefill long prompts in chunks")
    """Split long prompts across steps and fuse them with decoding (vLLM's chunked prefill)."""
    prefix_caching: bool = _flag(False, "reuse KV blocks of identical prompt prefixes")
    """Keep KV blocks of finished prompts for reuse by identical prefixes (IMHI prompts share their
    instruction tail, not their start, so it rarely pays; off keeps cache-usage figures exact)."""
    kv_cache_precision: str = _flag("auto", "auto, f32, f16, bf16 or u8")
    """KV-cache element type: auto (f32 with f32 inference, else the engine's own runtime option or the CPU plugin's
    default: u8 on x86-64), f32, f16, bf16, u8; resolved at launch and written into the rendered config
    (mentallama_build.kv_cache, the rule `mentallama-build openvino` plans with)."""
    inference_precision: str = _flag("auto", "auto, f32 or bf16")
    """auto: f32 for float32 checkpoints (the tiny model's greedy output then equals transformers'), bf16
    otherwise; or f32 / bf16."""
    weight_format: str = _flag("auto", "engine weights when built on first use: auto, fp32, fp16, int8, int4")
    """Engine weights when the engine is built on first use: auto (fp32 for float32 checkpoints, else int8),
    fp32, fp16, int8, int4."""
    num_threads: int = _flag(0, "OpenVINO threads; 0 = one per core")
    """OpenVINO inference threads; 0 = the plugin's default (one per core)."""
    stream_hold_ms: int = _flag(
        640, "longest a streamed token waits to share a response with later ones, at a full batch (fewer streams: "
        "proportionally less); 0 = a response per engine step"
    )  # fmt: skip
    """Streamed tokens wait for later steps' so that several share one response, at most this long when
    --engine-max-batch-size streams run and proportionally less with fewer (20 ms for one stream of 32). Every
    response costs the hops after the engine (Triton, the front model, gRPC, the front door, the client) about a
    millisecond of CPU whatever it carries, and on a CPU node that time is taken from the engine: the engine then
    sends about 50 responses per second at any load (measured: docs/SERVING_PROFILE.md). First tokens and final
    responses never wait; a step longer than the hold is never waited for."""
    release_gil: bool = _flag(True, "run engine steps with the GIL released (built at start with the system C++ "
                              "compiler; without one, steps hold the GIL)")
    """OpenVINO GenAI's Python `step()` holds the GIL for the whole step, so Triton's `execute()` could hand the
    engine a new request only between steps and the request's place in the batch stayed empty meanwhile; the
    GIL-free step (mentallama_server.engine.ov_step) calls the same C++ step through a few lines of C++ compiled
    at start. Measured: docs/SERVING_PROFILE.md."""
    max_input_len: int = _flag(2048, "longest prompt in tokens (fitted to the model's context with --max-output-len)")
    """Longest prompt in tokens (fitted to the model's context together with max_output_len)."""
    max_output_len: int = _flag(1024, "largest max_tokens a request may ask for")
    """Largest `max_tokens` a request may ask for."""
    max_queue_size: int = _flag(128, "requests waiting beyond the running batch; more are refused as overloaded")
    """Requests waiting for a place in the running batch; beyond engine_max_batch_size + this, new
    requests are refused at once with UNAVAILABLE ("server overloaded") instead of queueing unboundedly."""
    preprocessing_instances: int = _flag(1, "preprocessing model instances (each maps a --shm-pool-mib pool)")
    """Tokenising a post takes about a millisecond, far less than the CPU engine spends on it, so one instance
    keeps up; each instance maps its own shared-memory pool in /dev/shm."""
    postprocessing_instances: int = _flag(1, "postprocessing model instances (each maps a --shm-pool-mib pool)")
    """Detokenising a chunk is cheap next to a CPU decode step; as for preprocessing, each instance maps a pool."""
    max_sequences: int = _flag(4, "most beams (beam_width) or sequences (num_return_sequences) a prompt may ask for")
    """Most beams of a beam search, or samples, one prompt may ask for: each holds its own KV blocks, so a
    request's memory grows with them (TensorRT-LLM bounds beams by the engine's max_beam_width the same way)."""
    front_max_concurrent_requests: int = _flag(256, "requests the mentallama front model serves at once")
    """Requests the `mentallama` front model serves at once (threads blocked on the engine)."""

    def problems(self) -> list[str]:
        checks = (
            ("weight_format", WEIGHT_FORMATS),
            ("inference_precision", PRECISIONS),
            ("kv_cache_precision", KV_PRECISIONS),
        )
        return [
            f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
            for name, choices in checks
            if getattr(self, name) not in choices
        ]

    def resolved(self, checkpoint_dtype: str, engine_kv: str | None = None, *, engine_known: bool = False,
                 plugin_default: Callable[[], str] | None = None) -> CpuSettings:  # fmt: skip
        """`auto` values decided for a checkpoint whose weights are `checkpoint_dtype` (config.json), as the engine
        will really run: `engine_kv` is the engine's own KV-cache runtime option (`engine_known`: read from the
        engine; else predicted from the weight format, as before a build). Raises ValueError for precisions
        the CPU plugin refuses together."""
        from dataclasses import replace

        from mentallama_build.kv_cache import exported_kv_precision, plugin_default_kv_precision, resolve_precisions

        exact = checkpoint_dtype in ("float32", "fp32")
        weights = self.weight_format if self.weight_format != "auto" else ("fp32" if exact else "int8")
        own = engine_kv if engine_known else exported_kv_precision(weights)
        precision, kv = resolve_precisions(checkpoint_dtype, self.inference_precision, self.kv_cache_precision, own,
                                           plugin_default or plugin_default_kv_precision)  # fmt: skip
        return replace(self, inference_precision=precision, kv_cache_precision=kv, weight_format=weights)

    def template_values(self) -> dict[str, str]:
        values = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        values["max_pending_requests"] = str(self.engine_max_batch_size + self.max_queue_size)
        values["dynamic_split_fuse"] = str(self.dynamic_split_fuse).lower()
        values["prefix_caching"] = str(self.prefix_caching).lower()
        values["release_gil"] = str(self.release_gil).lower()
        return values
