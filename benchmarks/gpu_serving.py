"""GPU serving throughput: a LLaMA-2-7B-shaped model served by the bundled tritonserver, engine step on CUDA.

Builds (once) a checkpoint of LLaMA-2-7B's shape with random float16 weights (`engine_build.shaped`),
starts the CPU profile through `mentallama_server.serve.start_cpu_server` with the engine step's model and
KV cache on the GPU (`CpuSettings.device`), and drives `mentallama-bench`'s closed-loop load over gRPC
streaming at each concurrency: fixed ~128-token prompts, exactly `--output-len` output tokens per request
(`min_tokens = max_tokens`). Prints output tokens/s per level with the card's name and writes the figures
as JSON to `--json`, or to `$OUT/gpu_serving.json` when the variable OUT is set.

`--in-process` runs the same loads on the bare `CpuEngine` in this process (no Triton, no gRPC), the
engine-only baseline. A served run ends at once (exit 2) if tritonserver or a Python-backend stub dies, since
Triton 2.51 leaves the requests of a dead stub hanging. The JSON is rewritten after every level.
Needs only what the project installs plus a CUDA build of PyTorch; CI never runs it on a GPU.

    python benchmarks/gpu_serving.py                                   # on a machine with a CUDA GPU
    python benchmarks/gpu_serving.py --model tiny --device cpu --dtype auto --concurrency 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.backends import make_backend
from benchmarks.datasets import SyntheticDataset
from benchmarks.records import SamplingParams
from benchmarks.runner import LoadSpec, SessionConfig, StopSpec, run_session
from benchmarks.tokens import load_tokenizer
from engine_build.shapes import parameter_count
from mentallama_server.launcher import ServerOptions, TritonProcess, free_port
from mentallama_server.paths import REPO_ROOT
from mentallama_server.serve import resolve_checkpoint, start_cpu_server
from mentallama_server.settings import CpuSettings

SHAPED = "llama2-7b"
_HEALTH_PERIOD_S = 2.0


class ServingFailure(RuntimeError):
    """The server or one of its model processes died during a measured level."""

DEFAULT_CHECKPOINT = REPO_ROOT / "artifacts" / "checkpoints" / "llama2-7b-shaped"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SHAPED, help=f"{SHAPED} (built if missing), tiny, bench or a folder")
    parser.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT, help=f"where {SHAPED} lives")
    parser.add_argument("--device", default="cuda", help="engine step device: cuda, cuda:N or cpu")
    parser.add_argument("--dtype", default="float16", help="weights dtype (auto: the checkpoint's)")
    parser.add_argument("--concurrency", default="1,16,64", help="closed-loop clients, comma list")
    parser.add_argument("--requests", type=int, default=None, help="measured requests per level (default 2 x c, >= 4)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests before each level")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--engine-max-batch-size", type=int, default=64)
    parser.add_argument("--cache-num-blocks", type=int, default=1024, help="KV blocks (7B fp16: 16 MiB per 32 tokens)")
    parser.add_argument("--cache-block-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose")
    parser.add_argument("--in-process", action="store_true", help="bare CpuEngine in this process, no server")
    parser.add_argument("--json", type=Path, default=None, help="result file (default $OUT/gpu_serving.json)")
    return parser.parse_args(argv)


def card_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def prepare_checkpoint(args: argparse.Namespace) -> tuple[Path, float]:
    """The checkpoint folder and the seconds spent building it (0 when it was there)."""
    if args.model != SHAPED:
        return resolve_checkpoint(args.model), 0.0
    if (args.checkpoint_dir / "config.json").is_file():
        return resolve_checkpoint(str(args.checkpoint_dir)), 0.0
    from engine_build.shaped import build_shaped_checkpoint

    started = time.perf_counter()
    draw_on = args.device if args.device.startswith("cuda") else "cpu"
    path = build_shaped_checkpoint(args.checkpoint_dir, device=draw_on, force=True)
    if draw_on != "cpu":
        import torch

        torch.cuda.empty_cache()  # give the drawing memory back before the server's engine claims its share
    return resolve_checkpoint(str(path)), time.perf_counter() - started


def requests_for(concurrency: int, asked: int | None) -> int:
    return asked if asked is not None else max(4, 2 * concurrency)


async def measure(
    backend: Any, tokenizer: Any, concurrency: int, args: argparse.Namespace, server: TritonProcess | None = None
) -> dict[str, Any]:
    """One closed-loop level against `backend`; its summary, trimmed to what we report. With `server`, a dead
    tritonserver or Python-backend stub ends the level at once (Triton 2.51 would leave its requests hanging)."""
    config = SessionConfig(
        loads=[LoadSpec(concurrency=concurrency)],
        stop=StopSpec(requests=requests_for(concurrency, args.requests)),
        params=SamplingParams(force_output_len=True),
        warmup=args.warmup,
        ready_timeout_s=60.0,
        progress=False,
    )
    dataset = SyntheticDataset(args.input_len, args.output_len, tokenizer)
    session = asyncio.ensure_future(run_session([[backend]], dataset, config, None, tokenizer))
    while server is not None and not session.done():
        await asyncio.wait([session], timeout=_HEALTH_PERIOD_S)
        problem = None if session.done() else await asyncio.to_thread(server.health_problem)
        if problem:
            session.cancel()
            raise ServingFailure(f"{problem}; log {server.log_path}")
    (result,) = await session
    summary = result.summary
    return {
        "concurrency": concurrency,
        "requests": summary["requests"],
        "errors": summary["errors"],
        "duration_s": summary["duration_s"],
        "output_tokens_per_s": summary["output_token_throughput"],
        "total_output_tokens": summary["total_output_tokens"],
        "input_tokens_mean": summary["input_tokens"].get("mean"),
        "ttft_ms": {k: summary["ttft"].get(k) for k in ("mean", "p50", "p99")},
        "itl_ms": {k: summary["itl"].get(k) for k in ("mean", "p50", "p99")},
        "per_user_tokens_per_s_mean": summary["output_token_throughput_per_user"].get("mean"),
    }


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        info["gpu_memory_used_gib_at_end"] = round((total - free) / 2**30, 1)  # whole card, every process
        info["gpu_memory_total_gib"] = round(total / 2**30, 1)
    return info


def print_table(card: str, levels: list[dict[str, Any]]) -> None:
    print(f"\n{card}")
    header = ("concurrency", 11), ("requests", 8), ("output tok/s", 12), ("TTFT p50 ms", 11), ("ITL p50 ms", 10)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'failed':>6}")
    for level in levels:
        ttft, itl = level["ttft_ms"]["p50"], level["itl_ms"]["p50"]
        print(
            f"{level['concurrency']:>11} {level['requests']['total']:>8} {level['output_tokens_per_s'] or 0:>12.1f} "
            f"{ttft or 0:>11.1f} {itl or 0:>10.1f} {level['requests']['failed']:>6}"
        )


def result_path(args: argparse.Namespace) -> Path | None:
    if args.json is not None:
        return args.json
    out = os.environ.get("OUT")
    return Path(out) / "gpu_serving.json" if out else None


def engine_options(settings: CpuSettings) -> dict[str, Any]:
    """`CpuEngine` keywords for the settings the server would render."""
    return {
        "max_batch_size": settings.engine_max_batch_size,
        "num_blocks": settings.cache_num_blocks,
        "block_size": settings.cache_block_size,
        "max_batch_tokens": settings.max_batch_tokens,
        "dtype": settings.dtype,
        "device": settings.device,
    }


class Recorder:
    """Collects the levels and rewrites the result file after each one, so a run cut short keeps its figures."""

    def __init__(self, args: argparse.Namespace, card: str, checkpoint: Path, settings: CpuSettings) -> None:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        self.path = result_path(args)
        self.levels: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {
            "card": card,
            "device": args.device,
            "served": not args.in_process,
            "checkpoint": {
                "model": args.model,
                "parameters": parameter_count(config),
                "dtype": config.get("torch_dtype"),
                "vocab_size": config.get("vocab_size"),
                "layers": config.get("num_hidden_layers"),
                "hidden_size": config.get("hidden_size"),
            },
            "settings": asdict(settings),
            "input_len": args.input_len,
            "output_len": args.output_len,
            "levels": self.levels,
        }

    def add(self, level: dict[str, Any]) -> None:
        self.levels.append(level)
        print(
            f"c={level['concurrency']}: {level['output_tokens_per_s'] or 0:.1f} output tok/s "
            f"({level['requests']['completed']} ok, {level['requests']['failed']} failed)",
            flush=True,
        )
        self.write()

    def write(self, **extra: Any) -> None:
        self.result.update(extra)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")

    @property
    def failed(self) -> bool:
        return any(level["requests"]["failed"] for level in self.levels)


def run_in_process(args: argparse.Namespace, checkpoint: Path, settings: CpuSettings, rec: Recorder) -> None:
    """Each level against a fresh bare `CpuEngine` in this process (no Triton, no gRPC)."""
    from benchmarks.engine_backend import EngineBackend

    tokenizer = load_tokenizer(checkpoint)
    for concurrency in parse_levels(args):
        backend = EngineBackend(checkpoint, engine_options(settings), args.request_timeout)
        rec.add(asyncio.run(measure(backend, tokenizer, concurrency, args)))


def run_served(args: argparse.Namespace, checkpoint: Path, settings: CpuSettings, rec: Recorder) -> None:
    """Each level through the bundled tritonserver's `mentallama` model, over gRPC streaming."""
    tokenizer = load_tokenizer(checkpoint)
    opts = ServerOptions(
        grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), log_verbose=args.log_verbose
    )
    started = time.perf_counter()
    server = start_cpu_server(str(checkpoint), settings, opts, ready_timeout_s=args.ready_timeout)
    rec.write(server_start_s=time.perf_counter() - started)
    print(f"server ready in {rec.result['server_start_s']:.1f}s (log {server.log_path})", flush=True)
    try:
        for concurrency in parse_levels(args):
            backend = make_backend("triton-grpc", f"127.0.0.1:{opts.grpc_port}", request_timeout_s=args.request_timeout)
            rec.add(asyncio.run(measure(backend, tokenizer, concurrency, args, server)))
    except ServingFailure:
        print(f"tritonserver log tail:\n{server.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        code = server.stop()
        if rec.failed:
            print(f"tritonserver exit code {code}; log tail:\n{server.log_tail(40)}", file=sys.stderr)


def parse_levels(args: argparse.Namespace) -> list[int]:
    return [int(c) for c in args.concurrency.split(",") if c.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    card = card_name(args.device)
    checkpoint, build_s = prepare_checkpoint(args)
    print(f"checkpoint {checkpoint} (built in {build_s:.1f}s)" if build_s else f"checkpoint {checkpoint}", flush=True)
    settings = CpuSettings(
        device=args.device,
        dtype=args.dtype,
        engine_max_batch_size=args.engine_max_batch_size,
        cache_num_blocks=args.cache_num_blocks,
        cache_block_size=args.cache_block_size,
        max_batch_tokens=args.max_batch_tokens,
        max_output_len=max(args.output_len, CpuSettings.max_output_len),
        max_queue_size=max(CpuSettings.max_queue_size, *parse_levels(args)),
    )
    rec = Recorder(args, card, checkpoint, settings)
    rec.write(checkpoint_build_s=build_s)
    try:
        (run_in_process if args.in_process else run_served)(args, checkpoint, settings, rec)
    except ServingFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        rec.write(error=str(exc))
        return 2
    rec.write(environment=environment(args.device))
    print_table(card, rec.levels)
    if rec.path is not None:
        print(f"result: {rec.path}")
    return 1 if rec.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
