"""`mentallama-serve`: render a profile's model repository and run Triton on it."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import LaunchError, ServerOptions, TritonProcess, read_admin_key
from mentallama_server.launch.render import RenderError
from mentallama_server.launch.serve_cpu import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    new_run_dir,
    render_cpu,
    resolve_checkpoint,
    start_cpu_server,
)

try:  # click's plain help: wrapped to the terminal, nothing cut to "…" (the helper lives with the SDK's CLI)
    from mentallama.cli._cli_utils import plain_help

    plain_help()
except ImportError:  # pragma: no cover - the SDK is part of every install
    pass
app = typer.Typer(
    add_completion=False,
    help=__doc__,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mentallama-serve {version('mentallama-serving')}")
        except PackageNotFoundError:  # pragma: no cover - a source tree without an install
            typer.echo("mentallama-serve (not installed)")
        raise typer.Exit()


@app.command()
def serve(
    profile: Annotated[str, typer.Option(help="cpu (OpenVINO engine) or trtllm (TensorRT-LLM)")] = "cpu",
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="cpu: nano (shipped, trained), tiny, bench (built if missing) or a LLaMA-2 HF folder [default: nano]"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="deprecated spelling of --checkpoint (in mentallama and mentallama-bench --model is the "
                     "served model's name)", show_default=False),
    ] = None,
    engine: Annotated[
        Path | None,
        typer.Option(
            help="cpu: a prebuilt engine from `mentallama-build openvino` (checked against its manifest); "
            "trtllm: engine folder from `mentallama-build engine`"
        ),
    ] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="trtllm: the engine's HF checkpoint (tokenizer)")] = None,
    profile_file: Annotated[Path | None, typer.Option(help="trtllm: settings file (.toml or .json)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="trtllm: override a setting, key=value")] = None,
    tritonserver: Annotated[str, typer.Option(help="trtllm: the container's tritonserver")] = (
        "/opt/tritonserver/bin/tritonserver"
    ),
    host: Annotated[str, typer.Option(help="address to bind; keep 127.0.0.1 unless a proxy fronts it")] = "127.0.0.1",
    grpc_port: Annotated[int, typer.Option(help="gRPC port (the SDK, the CLIs and TensorRT-LLM's clients)")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (health, generate, generate_stream)")] = 8000,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (/metrics)")] = 8002,
    http: Annotated[bool, typer.Option(help="serve the HTTP/REST endpoint too")] = True,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM server certificate: gRPC over TLS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM server private key")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="PEM CA for client certificates: mutual TLS")] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="MENTALLAMA_ADMIN_KEY",
            help="admin APIs (shared memory, repository, statistics, ...) need this key: HTTP header admin-key, "
            "gRPC triton-grpc-protocol-admin-key; without one they are closed. Prefer --admin-key-file",
        ),
    ] = None,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(envvar="MENTALLAMA_ADMIN_KEY_FILE", help="read the admin key from this file (first line)"),
    ] = None,
    plaintext_http: Annotated[
        bool, typer.Option(help="with --tls-cert, still serve HTTP (which has no TLS here) in plaintext")
    ] = False,
    render: Annotated[Path | None, typer.Option(help="write the rendered repository here and exit")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="folder for the rendered repository and logs")] = None,
    demo: Annotated[bool, typer.Option(help="send one sample analysis (gRPC streaming), print it, stop")] = False,
    shm_pool_mib: Annotated[
        int, typer.Option(help="shared-memory pool per Python model instance in /dev/shm, MiB (see README)")
    ] = ServerOptions.shm_pool_mib,
    ready_timeout: Annotated[
        float, typer.Option(help="seconds to wait for the server to be ready (the first start builds the engine)")
    ] = 300.0,
    engine_max_batch_size: Annotated[
        int, typer.Option(help="cpu: sequences decoded together (the scheduler's max_num_seqs)")
    ] = CpuSettings.engine_max_batch_size,
    cache_num_blocks: Annotated[int, typer.Option(help="cpu: KV-cache size in blocks of 32 tokens")] = (
        CpuSettings.cache_num_blocks
    ),
    max_batch_tokens: Annotated[int, typer.Option(help="cpu: tokens per engine step (max_num_batched_tokens)")] = (
        CpuSettings.max_batch_tokens
    ),
    dynamic_split_fuse: Annotated[bool, typer.Option(help="cpu: prefill long prompts in chunks")] = (
        CpuSettings.dynamic_split_fuse
    ),
    prefix_caching: Annotated[bool, typer.Option(help="cpu: reuse KV blocks of identical prompt prefixes")] = (
        CpuSettings.prefix_caching
    ),
    kv_cache_precision: Annotated[str, typer.Option(help="cpu: auto, f32, f16, bf16 or u8")] = (
        CpuSettings.kv_cache_precision
    ),
    inference_precision: Annotated[str, typer.Option(help="cpu: auto, f32 or bf16")] = (
        CpuSettings.inference_precision
    ),
    weight_format: Annotated[
        str, typer.Option(help="cpu: engine weights when built on first use: auto, fp32, fp16, int8, int4")
    ] = CpuSettings.weight_format,
    num_threads: Annotated[int, typer.Option(help="cpu: OpenVINO threads; 0 = one per core")] = (
        CpuSettings.num_threads
    ),
    max_input_len: Annotated[
        int, typer.Option(help="cpu: longest prompt in tokens (fitted to the model's context with --max-output-len)")
    ] = CpuSettings.max_input_len,
    max_output_len: Annotated[int, typer.Option(help="cpu: largest max_tokens a request may ask for")] = (
        CpuSettings.max_output_len
    ),
    max_queue_size: Annotated[
        int, typer.Option(help="cpu: requests waiting beyond the running batch; more are refused as overloaded")
    ] = CpuSettings.max_queue_size,
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Serve MentaLLaMA on Triton. Predictions are for non-clinical research only."""
    # A SIGTERM while the server starts must still stop it: turn it into an exception that the start-up
    # path cleans up after (the default action would leave tritonserver running without its launcher).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if model is not None:
        if checkpoint is not None and checkpoint != model:
            typer.echo("error: give --checkpoint only (--model is its deprecated spelling)", err=True)
            raise typer.Exit(2)
        typer.echo("note: --model is deprecated here; use --checkpoint (in mentallama and mentallama-bench, --model "
                   "names the served model)", err=True)
        checkpoint = model
    model = checkpoint
    opts = ServerOptions(
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        http=http,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        admin_key=admin_key,
        shm_pool_mib=shm_pool_mib,
        plaintext_http=plaintext_http,
    )
    given = locals()
    try:
        if admin_key_file is not None:
            opts.admin_key = read_admin_key(admin_key_file)
        if profile == "cpu":
            settings = CpuSettings(**{f.name: given[f.name] for f in fields(CpuSettings) if f.name in given})
            if render is not None:
                checkpoint = resolve_checkpoint(model or DEFAULT_CHECKPOINT) if model or engine is None else None
                typer.echo(f"rendered the cpu profile to {render_cpu(checkpoint, settings, render, engine)}")
                return
            if model is None and engine is None:
                model = DEFAULT_CHECKPOINT
            server = start_cpu_server(model, settings, opts, run_dir, ready_timeout, engine)
        elif profile == "trtllm":
            from mentallama_server.launch.serve_trtllm import render_checked, start_trtllm_server
            from mentallama_server.launch.trtllm_profile import ProfileError, load_profile

            try:
                paths = {k: str(v) for k, v in (("engine_dir", engine), ("tokenizer_dir", tokenizer)) if v}
                trt = load_profile(profile_file, set_ or ()).with_overrides(paths)
            except ProfileError as exc:
                raise LaunchError(str(exc)) from None
            if render is not None:
                typer.echo(f"rendered the trtllm profile to {render_checked(trt, render)}")
                return
            server = start_trtllm_server(
                trt, opts, run_dir or new_run_dir(), tritonserver=tritonserver, ready_timeout_s=ready_timeout
            )
        else:
            raise LaunchError(f"unknown profile {profile!r}: choose cpu or trtllm")
    except (CheckpointError, LaunchError, RenderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _serve(server, profile, opts, demo, model)


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _serve(server: TritonProcess, profile: str, opts: ServerOptions, demo: bool, model: str | None = None) -> None:
    typer.echo(f"Triton is ready (profile {profile}, log {server.log_path})")
    typer.echo(f"  gRPC    {opts.grpc_url}   models: mentallama (default), ensemble")
    if opts.http:
        typer.echo(f"  HTTP    {opts.http_url}")
    typer.echo(f"  metrics {opts.metrics_url}")
    admin = "need the admin key" if opts.admin_key else "closed (no --admin-key given)"
    typer.echo(f"  admin APIs (shared memory, repository, statistics, trace, logging): {admin}")
    if not demo:
        typer.echo("Press Ctrl-C to stop the server (or send SIGTERM to this process).")
    try:
        if demo:
            from mentallama_server.launch.demo import run_demo

            run_demo(opts.grpc_url, model=model)
            return
        _wait_for_signal(server)
    finally:
        code = server.stop()
        typer.echo(f"tritonserver stopped (exit code {code})")


def _wait_for_signal(server: TritonProcess) -> None:
    """Serve until SIGINT/SIGTERM; exit non-zero when the server or one of its model processes dies, so that
    a supervisor (systemd, Slurm, Kubernetes) restarts a clean server instead of one that fails requests."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        problem = server.health_problem()
        if problem:
            typer.echo(f"error: {problem}; stopping the server.\n{server.log_tail()}", err=True)
            server.stop(grace_s=1)  # no drain: in-flight requests hang on the dead model; end them now
            sys.exit(3)


def main() -> None:
    app()
