"""Cost of serving: output tokens/s through Triton (gRPC streaming) vs. the same engine in-process.

Starts the CPU profile on free loopback ports, then runs the load benchmark with `--compare-engine`: the same
synthetic load (fixed prompt and output lengths, same seed) against the served `mentallama` model and
against the OpenVINO engine built with the server's own settings, one concurrency at a time, and prints the
served/in-process ratios measured in this one run.

    mentallama-bench serving-overhead --model bench --concurrency 1,4,16 --requests 32 --output-len 128

Short answers make a CPU engine prefill-bound, where concurrency buys little: the README shows both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mentallama_bench.session import BenchOptions, plan_session, run_plan

__all__ = ["cpu_server", "run_study"]


@contextmanager
def cpu_server(model: str) -> Iterator[tuple[str, str, Path]]:
    """A CPU-profile server of `model` (tiny, bench or a checkpoint folder) on free loopback ports:
    yields its gRPC endpoint, its metrics URL and the checkpoint folder, and stops it on exit."""
    # Imported here: `mentallama-bench --help` must not need the server extra.
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.launcher import ServerOptions
    from mentallama_server.launch.serve_cpu import resolve_checkpoint, start_cpu_server

    checkpoint = resolve_checkpoint(model)
    opts = ServerOptions.on_free_ports()
    server = start_cpu_server(str(checkpoint), CpuSettings(), opts)
    try:
        yield f"127.0.0.1:{opts.grpc_port}", f"http://127.0.0.1:{opts.metrics_port}/metrics", checkpoint
    finally:
        server.stop()


def run_study(model: str = "bench", concurrency: str = "1,4,16", requests: int = 32, input_len: int = 128,
              output_len: int = 128, output: Path = Path("results/serving_overhead")) -> int:  # fmt: skip
    """`mentallama-bench serving-overhead`: the load benchmark with `--compare-engine` on a server it starts."""
    with cpu_server(model) as (endpoint, metrics_url, checkpoint):
        # The same forced output length on both sides; the engine runs with the server's own settings.
        options = BenchOptions(
            endpoint=[endpoint], metrics_url=[metrics_url], concurrency=concurrency, requests=requests,
            input_len=input_len, output_len=output_len, force_output_len=True, tokenizer=checkpoint,
            compare_engine=True, checkpoint=checkpoint, output=output, progress=False,
        )  # fmt: skip
        return run_plan(plan_session(options))
