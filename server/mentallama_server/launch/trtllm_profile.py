"""Settings of the GPU (`trtllm`) profile: the TensorRT-LLM C++ backend serving a prebuilt engine.

Target: TensorRT-LLM 1.2.1 in NGC `nvcr.io/nvidia/tritonserver:26.04`..`26.07-trtllm-python-py3` (26.07 by
default), backend `tensorrtllm`, `gpt_model_type` `inflight_fused_batching`. Parameter keys and their
parsing follow `triton_backend/inflight_batcher_llm/src/model_instance_state.cc` of that line; the tensor
interface follows `triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt`.

Public API used by the launcher:
- `TrtllmProfile` (+ `load_profile`, `TrtllmProfile.with_overrides`) and `TrtllmProfile.template_values()`;
- `read_engine_limits(engine_dir)`, `engine_problems(profile, limits)`, `fit_to_engine(profile, limits)`;
- `mpi_command(world_size, model_repository, ...)`: one tritonserver rank per GPU under MPI for tp x pp > 1.
This module imports only the standard library: deploy scripts run it with the container's own python3.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "BATCH_SCHEDULER_POLICIES",
    "SCALAR_RESHAPED_INPUTS",
    "TENSORRT_LLM_INPUTS",
    "TENSORRT_LLM_OUTPUTS",
    "TENSORRT_LLM_TENSORS",
    "EngineLimits",
    "ProfileError",
    "TrtllmProfile",
    "engine_problems",
    "fit_to_engine",
    "load_profile",
    "mpi_command",
    "read_engine_limits",
    "shm_pool_args",
]

# --- The `tensorrt_llm` model's tensor interface (name -> (data_type, dims, optional)) -------------------
# Every tensor below is declared exactly as in TensorRT-LLM 1.2.1's inflight_batcher_llm/tensorrt_llm
# config.pbtxt (name, type, dims, optional; ragged and reshape as there). Left out, because a LLaMA-2 text
# model served without LoRA, speculative decoding, logits gathering or disaggregation never uses them:
# encoder_* / decoder_* / cross_attention_mask / skip_cross_attn_blocks (enc-dec, mllama), prompt_* and
# mrope_* (p-tuning, multimodal), draft_* and lookahead_* (speculative), lora_*, context_phase_params
# (disaggregated serving), retention_* (KV retention), guided_decoding_*, return_context_logits /
# return_generation_logits with the context_logits / generation_logits outputs (need gather_*_logits).
TENSORRT_LLM_INPUTS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    "input_ids": ("TYPE_INT32", (-1,), True),
    "input_lengths": ("TYPE_INT32", (1,), False),
    "request_output_len": ("TYPE_INT32", (1,), False),
    "num_return_sequences": ("TYPE_INT32", (1,), True),
    "end_id": ("TYPE_INT32", (1,), True),
    "pad_id": ("TYPE_INT32", (1,), True),
    "stop_words_list": ("TYPE_INT32", (2, -1), True),
    "bad_words_list": ("TYPE_INT32", (2, -1), True),
    "embedding_bias": ("TYPE_FP32", (-1,), True),
    "beam_width": ("TYPE_INT32", (1,), True),
    "temperature": ("TYPE_FP32", (1,), True),
    "runtime_top_k": ("TYPE_INT32", (1,), True),
    "runtime_top_p": ("TYPE_FP32", (1,), True),
    "runtime_top_p_min": ("TYPE_FP32", (1,), True),
    "runtime_top_p_decay": ("TYPE_FP32", (1,), True),
    "runtime_top_p_reset_ids": ("TYPE_INT32", (1,), True),
    "len_penalty": ("TYPE_FP32", (1,), True),
    "early_stopping": ("TYPE_BOOL", (1,), True),
    "repetition_penalty": ("TYPE_FP32", (1,), True),
    "min_tokens": ("TYPE_INT32", (1,), True),
    "beam_search_diversity_rate": ("TYPE_FP32", (1,), True),
    "presence_penalty": ("TYPE_FP32", (1,), True),
    "frequency_penalty": ("TYPE_FP32", (1,), True),
    "seed": ("TYPE_UINT64", (1,), True),
    "return_log_probs": ("TYPE_BOOL", (1,), True),
    "return_perf_metrics": ("TYPE_BOOL", (1,), True),
    "return_num_input_tokens": ("TYPE_BOOL", (1,), True),
    "return_num_output_tokens": ("TYPE_BOOL", (1,), True),
    "exclude_input_in_output": ("TYPE_BOOL", (1,), True),
    "stop": ("TYPE_BOOL", (1,), True),
    "streaming": ("TYPE_BOOL", (1,), True),
}
TENSORRT_LLM_OUTPUTS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    "output_ids": ("TYPE_INT32", (-1, -1), False),
    "sequence_length": ("TYPE_INT32", (-1,), False),
    "cum_log_probs": ("TYPE_FP32", (-1,), False),
    "output_log_probs": ("TYPE_FP32", (-1, -1), False),
    "batch_index": ("TYPE_INT32", (1,), False),
    "sequence_index": ("TYPE_INT32", (1,), False),
    "kv_cache_alloc_new_blocks": ("TYPE_INT32", (1,), False),
    "kv_cache_reused_blocks": ("TYPE_INT32", (1,), False),
    "kv_cache_alloc_total_blocks": ("TYPE_INT32", (1,), False),
    "arrival_time_ns": ("TYPE_INT64", (1,), False),
    "first_scheduled_time_ns": ("TYPE_INT64", (1,), False),
    "first_token_time_ns": ("TYPE_INT64", (1,), False),
    "last_token_time_ns": ("TYPE_INT64", (1,), False),
    "acceptance_rate": ("TYPE_FP32", (1,), False),
    "total_accepted_draft_tokens": ("TYPE_INT32", (1,), False),
    "total_draft_tokens": ("TYPE_INT32", (1,), False),
    "num_input_tokens": ("TYPE_INT32", (1,), False),
    "num_output_tokens": ("TYPE_INT32", (1,), False),
}
TENSORRT_LLM_TENSORS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    **TENSORRT_LLM_INPUTS,
    **TENSORRT_LLM_OUTPUTS,
}
# Inputs the reference declares with `reshape: { shape: [ ] }`: a [batch, 1] request tensor reaches the
# backend as [batch]. A Python-backend stand-in (the CPU profile) sees [batch, 1] either way.
SCALAR_RESHAPED_INPUTS: frozenset[str] = frozenset(
    name for name, (_, dims, _) in TENSORRT_LLM_INPUTS.items() if dims == (1,)
)

BATCH_SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
UNBOUNDED_QUEUE_FRONT_ADMISSION = 512
"""The front model's admission when Triton's queue is unbounded (max_queue_size 0): the front door's own
default bound (--max-in-flight)."""


class ProfileError(ValueError):
    """A profile file or override the backend would reject or misread."""


@dataclass(frozen=True)
class TrtllmProfile:
    """Everything the trtllm profile's rendered configs take. Defaults, and why:"""

    engine_dir: str = ""
    """Engine folder (rank<i>.engine, config.json, build manifest) -> gpt_model_path; the launcher sets it."""
    tokenizer_dir: str = ""
    """Tokenizer of the engine's checkpoint (verified against the build manifest before serving)."""
    max_batch_size: int = 64
    """Triton max_batch_size of every model (each request is one row). For tensorrt_llm it only bounds
    Triton's batches of requests; the in-flight batch is the engine's max_batch_size (built as 64)."""
    decoupled: bool = True
    """Streaming: one response per generated chunk, and the `stop` input can cancel mid-generation."""
    max_queue_size: int = 256
    """Requests waiting in Triton's queue before new ones are refused (UNAVAILABLE): a bounded queue
    keeps latency bounded and lets a load balancer or the HPA react; the backend also passes it to the
    executor as its queue limit."""
    max_queue_delay_microseconds: int = 0
    """No Triton-side batching delay: the executor batches at every iteration (in-flight batching), so
    waiting to assemble a Triton batch only adds latency."""
    max_beam_width: int | None = None
    """Widest beam search served: unset takes the engine's (`mentallama-build engine --max-beam-width`, 1 by
    default: sampling/greedy only, as each beam holds its own KV cache); must not exceed it."""
    kv_cache_free_gpu_mem_fraction: float = 0.9
    """Share of the GPU memory left after loading the engine that becomes paged KV cache (the backend's
    default). Lower it when something else shares the GPU."""
    max_tokens_in_paged_kv_cache: int | None = None
    """Hard cap on KV-cache tokens; unset so the fraction above decides (the smaller of both wins)."""
    batch_scheduler_policy: str = "guaranteed_no_evict"
    """A started request is never paused for lack of KV cache: predictable latency for interactive
    analysis. `max_utilization` packs more requests but may pause (evict and recompute) some."""
    enable_chunked_context: bool = True
    """Long posts are prefilled in chunks so they do not stall decoding of other requests, and prompts
    longer than the engine's max_num_tokens still run. Needs paged context FMHA (always built)."""
    enable_kv_cache_reuse: bool = True
    """Every MentaLLaMA prompt of a task starts with the same instruction; reusing its KV blocks skips
    that prefill. Needs paged context FMHA in the engine (always built)."""
    exclude_input_in_output: bool = False
    """Backend default and CPU-profile behaviour: requests say what they want (the `mentallama` front
    model sends true), so both profiles answer the same request the same way."""
    cancellation_check_period_ms: int = 100
    """How often the backend looks for cancelled requests (its default); the front model also sends
    `stop`, which takes effect at the next iteration."""
    max_input_len: int = 3072
    """Longest prompt the preprocessing accepts; fit_to_engine caps it at the engine's max_input_len."""
    max_output_len: int = 1024
    """Largest max_tokens; fit_to_engine keeps input + output within the engine's max_seq_len (4096)."""
    preprocessing_instances: int = 2
    """Tokeniser instances; tokenising a post takes about a millisecond, two keep up with the GPU."""
    postprocessing_instances: int = 2
    """Detokeniser instances, one response chunk each; two keep streaming chunks from queueing."""
    front_max_concurrent_requests: int | None = None
    """Requests the `mentallama` front model serves at once; unset: what the engine takes, its build-time batch
    plus `max_queue_size` (64 + 256). Never more: past that the executor refuses a request with an error a BLS
    caller receives as INTERNAL, while the front model's own refusal is UNAVAILABLE, which clients retry."""

    def problems(self) -> list[str]:
        """Values the backend would reject or silently misread."""
        out: list[str] = []
        if self.batch_scheduler_policy not in BATCH_SCHEDULER_POLICIES:
            out.append(
                f"batch_scheduler_policy {self.batch_scheduler_policy!r} must be one of "
                f"{', '.join(BATCH_SCHEDULER_POLICIES)} (the backend falls back silently otherwise)"
            )
        if not 0.0 < self.kv_cache_free_gpu_mem_fraction <= 1.0:
            out.append(
                f"kv_cache_free_gpu_mem_fraction must be in (0, 1], got {self.kv_cache_free_gpu_mem_fraction}"
            )
        if self.max_tokens_in_paged_kv_cache is not None and self.max_tokens_in_paged_kv_cache < 1:
            out.append("max_tokens_in_paged_kv_cache must be positive or unset")
        positive = (
            "max_batch_size", "max_beam_width", "max_input_len", "max_output_len", "preprocessing_instances",
            "postprocessing_instances", "front_max_concurrent_requests", "cancellation_check_period_ms",
        )  # fmt: skip
        out += [
            f"{name} must be >= 1, got {getattr(self, name)}"
            for name in positive
            if getattr(self, name) is not None and getattr(self, name) < 1
        ]
        if self.max_queue_size < 0 or self.max_queue_delay_microseconds < 0:
            out.append("max_queue_size and max_queue_delay_microseconds must be >= 0")
        if not self.decoupled:
            out.append("decoupled must be true: the ensemble and the front model stream responses")
        return out

    def template_values(self) -> dict[str, str]:
        """Values for every `${...}` of the trtllm templates (engine and shared models)."""

        def flag(value: bool) -> str:
            return "true" if value else "false"

        values = {f.name: str(getattr(self, f.name)) for f in fields(self)}
        values.update(
            # unset until fitted to an engine (fit_to_engine): then the engine's own values
            max_beam_width=str(self.max_beam_width or 1),
            front_max_concurrent_requests=str(self.front_admission(self.max_batch_size)),
            decoupled_mode=flag(self.decoupled),
            kv_cache_free_gpu_mem_fraction=f"{self.kv_cache_free_gpu_mem_fraction:g}",
            # Empty -> the backend's std::stoi throws, it logs "not specified" and uses the default.
            max_tokens_in_paged_kv_cache=""
            if self.max_tokens_in_paged_kv_cache is None
            else str(self.max_tokens_in_paged_kv_cache),
            enable_chunked_context=flag(self.enable_chunked_context),
            enable_kv_cache_reuse=flag(self.enable_kv_cache_reuse),
            exclude_input_in_output=flag(self.exclude_input_in_output),
        )
        del values["decoupled"]
        return values

    def front_admission(self, engine_batch: int) -> int:
        """Requests the front model admits for an engine that batches `engine_batch`: the setting, else what the
        engine takes (its batch plus the queue; an unbounded queue, 0, takes everything: 512 then)."""
        if self.front_max_concurrent_requests is not None:
            return self.front_max_concurrent_requests
        return engine_batch + self.max_queue_size if self.max_queue_size else UNBOUNDED_QUEUE_FRONT_ADMISSION

    def with_overrides(self, overrides: Mapping[str, Any] | Iterable[str]) -> TrtllmProfile:
        """A copy with fields replaced: a mapping, or `key=value` strings as given on a command line."""
        if not isinstance(overrides, Mapping):
            pairs: dict[str, Any] = {}
            for item in overrides:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ProfileError(f"override {item!r} is not key=value")
                pairs[key.strip().replace("-", "_")] = value.strip()
            overrides = pairs
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ProfileError(f"unknown trtllm profile setting(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(type(self))
        changed = {name: _coerce(name, value, hints[name]) for name, value in overrides.items()}
        profile = replace(self, **changed)
        issues = profile.problems()
        if issues:
            raise ProfileError("; ".join(issues))
        return profile


def _coerce(name: str, value: Any, hint: Any) -> Any:
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ProfileError(f"{name}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None


def load_profile(
    path: Path | str | None = None, overrides: Mapping[str, Any] | Iterable[str] = ()
) -> TrtllmProfile:
    """Defaults, then a profile file (`.toml` with an optional [trtllm] table, or `.json`), then overrides."""
    profile = TrtllmProfile()
    if path is not None:
        path = Path(path)
        if path.suffix not in (".toml", ".json"):
            raise ProfileError(f"{path}: profile files are .toml or .json")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{path}: {exc.strerror or exc}") from None
        if path.suffix == ".toml":
            if sys.version_info < (3, 11):
                raise ProfileError(f"{path}: TOML profiles need Python 3.11+ (tomllib); use JSON")
            import tomllib

            try:
                data: Any = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ProfileError(f"{path}: {exc}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ProfileError(f"{path}: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("trtllm"), dict):
            data = data["trtllm"]
        if not isinstance(data, dict):
            raise ProfileError(f"{path}: expected a table of settings")
        try:
            profile = profile.with_overrides(data)
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from None
    return profile.with_overrides(overrides)


# --- What the engine was built for -------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineLimits:
    """Build-time limits of an engine, from the config.json trtllm-build writes beside rank<i>.engine."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int | None
    max_beam_width: int
    tp_size: int
    pp_size: int
    paged_context_fmha: bool | None

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size


def read_engine_limits(engine_dir: Path | str) -> EngineLimits:
    """Parse `<engine_dir>/config.json` (sections `build_config` and `pretrained_config.mapping`)."""
    path = Path(engine_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        build = config["build_config"]
        mapping = (config.get("pretrained_config") or {}).get("mapping") or {}
        plugin = build.get("plugin_config") or {}
        return EngineLimits(
            max_batch_size=int(build["max_batch_size"]),
            max_input_len=int(build["max_input_len"]),
            max_seq_len=int(build["max_seq_len"]),
            max_num_tokens=None if build.get("max_num_tokens") is None else int(build["max_num_tokens"]),
            max_beam_width=int(build.get("max_beam_width", 1)),
            tp_size=int(mapping.get("tp_size", 1)),
            pp_size=int(mapping.get("pp_size", 1)),
            paged_context_fmha=plugin.get("use_paged_context_fmha"),
        )
    except FileNotFoundError:
        raise ProfileError(f"{path} not found: not a TensorRT-LLM engine folder") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: not a TensorRT-LLM engine config ({exc!r})") from None


def engine_problems(profile: TrtllmProfile, limits: EngineLimits) -> list[str]:
    """Settings the engine cannot honour (the backend would fail requests or refuse to load)."""
    out: list[str] = []
    if profile.max_input_len > limits.max_input_len:
        out.append(f"max_input_len {profile.max_input_len} > engine max_input_len {limits.max_input_len}")
    if profile.max_input_len + profile.max_output_len > limits.max_seq_len:
        out.append(
            f"max_input_len + max_output_len = {profile.max_input_len + profile.max_output_len} > engine "
            f"max_seq_len {limits.max_seq_len}"
        )
    if profile.max_beam_width is not None and profile.max_beam_width > limits.max_beam_width:
        out.append(
            f"max_beam_width {profile.max_beam_width} > engine max_beam_width {limits.max_beam_width} (rebuild with "
            "mentallama-build engine --max-beam-width N)"
        )
    engine_takes = limits.max_batch_size + profile.max_queue_size
    if profile.max_queue_size and profile.front_admission(limits.max_batch_size) > engine_takes:
        out.append(
            f"front_max_concurrent_requests {profile.front_admission(limits.max_batch_size)} > what the engine takes "
            f"({limits.max_batch_size} batched + max_queue_size {profile.max_queue_size} = {engine_takes}): the "
            "engine's refusals reach clients as INTERNAL errors they do not retry; admit at most that many"
        )
    if limits.paged_context_fmha is False and (
        profile.enable_chunked_context or profile.enable_kv_cache_reuse
    ):
        out.append(
            "enable_chunked_context / enable_kv_cache_reuse need an engine built with "
            "--use_paged_context_fmha enable (mentallama-build engine always does)"
        )
    return out


def fit_to_engine(profile: TrtllmProfile, limits: EngineLimits) -> TrtllmProfile:
    """Cap the request limits at what the engine was built for (output first keeps room for prompts); unset
    beam width and front admission take the engine's."""
    max_output = min(profile.max_output_len, limits.max_seq_len - 1)
    max_input = min(profile.max_input_len, limits.max_input_len, limits.max_seq_len - max_output)
    return replace(
        profile,
        max_input_len=max_input,
        max_output_len=max_output,
        max_beam_width=profile.max_beam_width if profile.max_beam_width is not None else limits.max_beam_width,
        front_max_concurrent_requests=profile.front_admission(limits.max_batch_size),
    )


# --- Launching one tritonserver rank per GPU ---------------------------------------------------------------

TRITONSERVER = "/opt/tritonserver/bin/tritonserver"
SHM_POOL_MIB = 16
"""Default Python-backend pool per model instance, the same as `mentallama-serve --shm-pool-mib`."""


def shm_pool_args(mib: int) -> list[str]:
    """Python-backend pool flags: start at `mib` MiB and grow by as much. Triton 2.51's stub grows a full
    pool by replacing the allocator that other threads use (docs/RELIABILITY.md); a pool that starts large
    enough never grows."""
    if mib < 1:
        raise ValueError(f"the shared-memory pool needs at least 1 MiB, got {mib}")
    size = mib * 2**20
    return [
        f"--backend-config=python,shm-default-byte-size={size}",
        f"--backend-config=python,shm-growth-byte-size={size}",
    ]


def mpi_command(
    world_size: int,
    model_repository: Path | str,
    *,
    tritonserver: str = TRITONSERVER,
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    log_file: str | None = None,
    model_name: str = "tensorrt_llm",
    shm_prefix: str = "prefix",
    shm_pool_mib: int = SHM_POOL_MIB,
    oversubscribe: bool = False,
    rank0_args: Sequence[str] = (),
    mpirun: str = "mpirun",
) -> list[str]:
    """argv starting `world_size` (= tp x pp) tritonserver ranks, as TensorRT-LLM's
    `triton_backend/scripts/launch_triton_server.py` builds it (leader mode):

        mpirun --allow-run-as-root --bind-to none -n 1 tritonserver --model-repository=R --grpc-port=G
            --http-port=H --metrics-port=M [rank 0: --log-file=F, rank0_args] --disable-auto-complete-config
            --backend-config=python,shm-region-prefix-name=prefix0_ [shm pool flags]
            : -n 1 tritonserver ... (rank 1) ...

    Rank 0 serves every model and the endpoints. Ranks > 0 load only `model_name` (explicit model control)
    and stay inside its load as executor workers, so they never bind the ports they are given. Each rank
    gets its own Python-backend shared-memory prefix; give `shm_prefix` a distinct value per server when
    several servers share a node. Every rank gets the Python-backend pool flags `mentallama-serve` uses
    (`shm_pool_args`: a pool allocated whole, never grown; see launcher.ServerOptions.shm_pool_mib) unless
    `rank0_args` already carries them. world_size 1 returns the plain tritonserver argv (no MPI needed, as
    with the script's --no-mpi). Differences from the script: no trailing ':', no duplicated port flags,
    and `--bind-to none`: Open MPI's default binds each of these 1-process ranks to one core, so rank 0's
    tritonserver, its Python models' stubs and (on a node with several tp > 1 replicas) every replica's
    rank 0 would share core 0. Unbound, the kernel schedules them; a site that wants pinning binds the
    whole job (Slurm's --cpu-bind, cgroups), which mpirun then inherits.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")

    def rank_args(rank: int) -> list[str]:
        args = [
            tritonserver,
            f"--model-repository={model_repository}",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={metrics_port}",
        ]
        if rank == 0:
            if log_file:
                args.append(f"--log-file={log_file}")
            args += list(rank0_args)
        else:
            args += ["--model-control-mode=explicit", f"--load-model={model_name}"]
        args += [
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}{rank}_",
        ]
        args += [flag for flag in pool if flag not in args]
        return args

    pool = shm_pool_args(shm_pool_mib)
    if world_size == 1:
        return rank_args(0)
    cmd = [mpirun, "--allow-run-as-root", "--bind-to", "none"] + (["--oversubscribe"] if oversubscribe else [])
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1", *rank_args(rank)]
    return cmd


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m mentallama_server.launch.trtllm_profile mpi-command ...`: print the launch argv (deploy/)."""
    parser = argparse.ArgumentParser(prog="python -m mentallama_server.launch.trtllm_profile")
    sub = parser.add_subparsers(dest="command", required=True)
    mpi = sub.add_parser("mpi-command", help="print the tritonserver launch argv for tp x pp ranks")
    mpi.add_argument("--world-size", type=int, required=True)
    mpi.add_argument("--model-repo", required=True)
    mpi.add_argument("--tritonserver", default=TRITONSERVER)
    mpi.add_argument("--grpc-port", type=int, default=8001)
    mpi.add_argument("--http-port", type=int, default=8000)
    mpi.add_argument("--metrics-port", type=int, default=8002)
    mpi.add_argument("--log-file")
    mpi.add_argument("--shm-prefix", default="prefix")
    mpi.add_argument("--shm-pool-mib", type=int, default=SHM_POOL_MIB, help="Python-backend pool per model instance")
    mpi.add_argument("--oversubscribe", action="store_true")
    mpi.add_argument("--print0", action="store_true", help="NUL-separated (for bash mapfile -d '')")
    args, rank0 = parser.parse_known_args(argv)  # unknown options go to rank 0's tritonserver
    cmd = mpi_command(
        args.world_size,
        args.model_repo,
        tritonserver=args.tritonserver,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        shm_prefix=args.shm_prefix,
        shm_pool_mib=args.shm_pool_mib,
        oversubscribe=args.oversubscribe,
        rank0_args=[a for a in rank0 if a != "--"],
    )
    if args.print0:
        sys.stdout.write("".join(f"{a}\0" for a in cmd))
    else:
        import shlex

        print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
