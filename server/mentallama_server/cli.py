"""`mentallama-serve`: render a profile's model repository and run Triton on it."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from mentallama_server.launcher import LaunchError, ServerOptions
from mentallama_server.render import RenderError
from mentallama_server.serve import CheckpointError, render_cpu, resolve_checkpoint, start_cpu_server
from mentallama_server.settings import CpuSettings

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def serve(
    profile: Annotated[
        str, typer.Option(help="cpu (transformers engine step) or trtllm (TensorRT-LLM engine)")
    ] = "cpu",
    model: Annotated[
        str, typer.Option(help="tiny, bench (built if missing) or a LLaMA-2 HF checkpoint folder")
    ] = "tiny",
    host: Annotated[
        str, typer.Option(help="address to bind; keep 127.0.0.1 unless a proxy or TLS fronts it")
    ] = "127.0.0.1",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    http: Annotated[bool, typer.Option(help="serve the HTTP/REST endpoint too")] = True,
    render: Annotated[Path | None, typer.Option(help="write the rendered repository here and exit")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="folder for the rendered repository and logs")] = None,
    demo: Annotated[
        bool, typer.Option(help="send one sample analysis (gRPC streaming), print it, stop")
    ] = False,
    ready_timeout: float = 300.0,
    engine_max_batch_size: int = CpuSettings.engine_max_batch_size,
    cache_num_blocks: int = CpuSettings.cache_num_blocks,
    cache_block_size: int = CpuSettings.cache_block_size,
    max_batch_tokens: int = CpuSettings.max_batch_tokens,
    num_threads: int = CpuSettings.num_threads,
    max_input_len: int = CpuSettings.max_input_len,
    max_output_len: int = CpuSettings.max_output_len,
    max_queue_size: int = CpuSettings.max_queue_size,
) -> None:
    """Serve MentaLLaMA on Triton. Predictions are for non-clinical research only."""
    if profile != "cpu":
        typer.echo(f"profile {profile!r} is not available in this command yet", err=True)
        raise typer.Exit(2)
    given = locals()
    settings = CpuSettings(**{f.name: given[f.name] for f in fields(CpuSettings) if f.name in given})
    opts = ServerOptions(
        host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, http=http
    )
    try:
        if render is not None:
            out = render_cpu(resolve_checkpoint(model), settings, render)
            typer.echo(f"rendered the {profile} profile to {out}")
            return
        server = start_cpu_server(model, settings, opts, run_dir, ready_timeout)
    except (CheckpointError, LaunchError, RenderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Triton is ready (profile {profile}, log {server.log_path})")
    typer.echo(f"  gRPC    {host}:{grpc_port}   models: mentallama (default), ensemble")
    if http:
        typer.echo(f"  HTTP    http://{host}:{http_port}")
    typer.echo(f"  metrics http://{host}:{metrics_port}/metrics")
    try:
        if demo:
            from mentallama_server.demo import run_demo

            run_demo(f"{host}:{grpc_port}")
            return
        _wait_for_signal(server)
    finally:
        code = server.stop()
        typer.echo(f"tritonserver stopped (exit code {code})")


def _wait_for_signal(server) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if server.proc.poll() is not None:
            typer.echo(
                f"tritonserver exited unexpectedly (code {server.proc.returncode}); log tail:\n{server.log_tail()}",
                err=True,
            )
            sys.exit(1)


def main() -> None:
    app()
