"""`mentallama-serve`: render a profile's model repository and run Triton on it (wiring: the flags, the banner;
serving and its supervision are `launch.supervise`)."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from mentallama import locations
from mentallama.cli.common import cache_dir_option
from mentallama.cli.options import OptionGroup, PanelledCommand, flag, with_option_groups
from mentallama_server.front_door.config import FrontDoorConfig, read_api_keys
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.front_door_process import FrontDoorProcess
from mentallama_server.launch.launcher import LaunchError, ServerOptions, TritonProcess, read_admin_key
from mentallama_server.launch.render import RenderError
from mentallama_server.launch.serve_cpu import CheckpointError, CpuLaunch
from mentallama_server.launch.serve_trtllm import TrtllmLaunch, TrtllmOptions
from mentallama_server.launch.supervise import start_serving, supervise

try:  # click's plain help: wrapped to the terminal, nothing cut to "…" (the helper lives with the SDK's CLI)
    from mentallama.cli.common import plain_help

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

PROFILES = ("cpu", "trtllm")


@dataclass
class Endpoints:
    """Where the server listens: the `ServerOptions` fields that are flags (defaults taken from it)."""

    host: str = flag(ServerOptions.host, "address the public ports bind (the front door's); 0.0.0.0 for all")
    grpc_port: int = flag(ServerOptions.grpc_port, "gRPC port (the SDK, the CLIs and TensorRT-LLM's clients)")
    http_port: int = flag(ServerOptions.http_port, "HTTP/REST port (health, generate, generate_stream)")
    metrics_port: int = flag(ServerOptions.metrics_port, "Prometheus metrics port (/metrics)")
    http: bool = flag(ServerOptions.http, "serve the HTTP/REST endpoint too")
    shm_pool_mib: int = flag(
        ServerOptions.shm_pool_mib, "shared-memory pool per Python model instance in /dev/shm, MiB (see README)"
    )
    direct: bool = flag(
        False, "no front door: tritonserver itself on the public ports (debugging only; unsafe for untrusted clients)"
    )
    max_in_flight: int = flag(FrontDoorConfig.max_in_flight, "front door: requests in flight in all (then 503)")
    max_in_flight_per_client: int = flag(
        FrontDoorConfig.max_in_flight_per_client, "front door: requests in flight per client connection or API key"
    )
    max_request_bytes: int = flag(FrontDoorConfig.max_request_bytes, "front door: largest request, bytes (then 413)")


@dataclass
class Security:
    """TLS and the admin APIs' key; closed admin APIs and no plaintext HTTP beside TLS unless asked."""

    tls_cert: Path | None = flag(None, "PEM server certificate: gRPC and HTTP over TLS (--direct: gRPC only)")
    tls_key: Path | None = flag(None, "PEM server private key")
    tls_ca: Path | None = flag(None, "PEM CA for client certificates: mutual TLS")
    admin_key: str | None = flag(
        None,
        "admin APIs (shared memory, repository, statistics, ...) need this key: HTTP header admin-key, "
        "gRPC triton-grpc-protocol-admin-key; without one they are closed. Prefer --admin-key-file",
        envvar="MENTALLAMA_ADMIN_KEY",
    )
    admin_key_file: Path | None = flag(
        None, "read the admin key from this file (first line)", envvar="MENTALLAMA_ADMIN_KEY_FILE"
    )
    plaintext_http: bool = flag(False, "--direct with --tls-cert: still serve HTTP (no TLS there) in plaintext")
    api_key_file: Path | None = flag(
        None,
        "front door: accept only requests with one of these API keys (one per line; also MENTALLAMA_API_KEYS, "
        "comma-separated): header 'authorization: Bearer <key>'",
        envvar="MENTALLAMA_API_KEY_FILE",
    )


def server_options(endpoints: Endpoints, security: Security) -> ServerOptions:
    """The launcher's options; the admin key file, when given, is read here (a LaunchError if it cannot be)."""
    admin_key = security.admin_key if security.admin_key_file is None else read_admin_key(security.admin_key_file)
    try:
        api_keys = tuple(read_api_keys(security.api_key_file))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot read the API keys: {exc}") from None
    if api_keys and endpoints.direct:
        raise LaunchError("API keys are checked by the front door: drop --direct to use them")
    limits = {
        "max_in_flight": endpoints.max_in_flight,
        "max_in_flight_per_client": endpoints.max_in_flight_per_client,
        "max_request_bytes": endpoints.max_request_bytes,
    }
    if min(limits.values()) < 1:
        raise LaunchError("--max-in-flight, --max-in-flight-per-client and --max-request-bytes must be positive")
    return ServerOptions(
        host=endpoints.host, grpc_port=endpoints.grpc_port, http_port=endpoints.http_port,
        metrics_port=endpoints.metrics_port, http=endpoints.http, shm_pool_mib=endpoints.shm_pool_mib,
        tls_cert=security.tls_cert, tls_key=security.tls_key, tls_ca=security.tls_ca, admin_key=admin_key,
        plaintext_http=security.plaintext_http, front_door=not endpoints.direct, api_keys=api_keys,
        front_door_limits=limits,
    )  # fmt: skip


def profile_launch(
    profile: str, checkpoint: str | None, engine: Path | None, cpu: CpuSettings, trtllm: TrtllmOptions
) -> CpuLaunch | TrtllmLaunch:
    """The chosen profile's launch (render or start); each profile reads only its own settings."""
    if profile == "cpu":
        return CpuLaunch(checkpoint, engine, cpu)
    if profile == "trtllm":
        return trtllm.launch(engine)
    raise LaunchError(f"unknown profile {profile!r}: choose {' or '.join(PROFILES)}")


def checkpoint_from_flags(checkpoint: str | None, model: str | None) -> str | None:
    """--checkpoint, or its deprecated spelling --model (with a note); both, differing, is a usage error."""
    if model is None:
        return checkpoint
    if checkpoint is not None and checkpoint != model:
        typer.echo("error: give --checkpoint only (--model is its deprecated spelling)", err=True)
        raise typer.Exit(2)
    typer.echo("note: --model is deprecated here; use --checkpoint (in mentallama and mentallama-bench, --model "
               "names the served model)", err=True)  # fmt: skip
    return model


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mentallama-serve {version('mentallama-server')}")  # the server part's distribution
        except PackageNotFoundError:  # pragma: no cover - a source tree without an install
            typer.echo("mentallama-serve (not installed)")
        raise typer.Exit()


@app.command(cls=PanelledCommand)
@with_option_groups(
    endpoints=OptionGroup("Server and endpoints"),
    security=OptionGroup("Security"),
    cpu=OptionGroup("CPU profile (--profile cpu)", help_prefix="cpu: "),
    trtllm=OptionGroup("TensorRT-LLM profile (--profile trtllm)", help_prefix="trtllm: "),
)
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
    render: Annotated[Path | None, typer.Option(help="write the rendered repository here and exit")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="folder for the rendered repository and logs")] = None,
    cache_dir: Annotated[
        Path | None, cache_dir_option("built engines, generated checkpoints and run folders")
    ] = None,
    demo: Annotated[bool, typer.Option(help="send one sample analysis (gRPC streaming), print it, stop")] = False,
    ready_timeout: Annotated[
        float | None,
        typer.Option(help="seconds to wait for the server to be ready [default: 300 for cpu (the first start builds "
                     "the engine), 1800 for trtllm (loading a 13B engine onto the GPUs)]", show_default=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
    *,
    endpoints: Endpoints,
    security: Security,
    cpu: CpuSettings,
    trtllm: TrtllmOptions,
) -> None:
    """Serve MentaLLaMA on Triton. Predictions are for non-clinical research only."""
    # A SIGTERM while the server starts must still stop it: turn it into an exception that the start-up
    # path cleans up after (the default action would leave tritonserver running without its launcher).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    locations.set_cache_dir(cache_dir)
    checkpoint = checkpoint_from_flags(checkpoint, model)
    try:
        opts = server_options(endpoints, security)
        launch = profile_launch(profile, checkpoint, engine, cpu, trtllm)
        if render is not None:
            typer.echo(f"rendered the {profile} profile to {launch.render(render)}")
            return
        timeout = ready_timeout if ready_timeout is not None else launch.ready_timeout_s
        server, front = start_serving(launch, opts, run_dir, timeout)
    except (CheckpointError, LaunchError, RenderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _serve(server, front, profile, opts, demo, checkpoint)


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _serve(
    server: TritonProcess,
    front: FrontDoorProcess | None,
    profile: str,
    opts: ServerOptions,
    demo: bool,
    model: str | None = None,
) -> None:
    typer.echo(f"Triton is ready (profile {profile}, log {server.log_path})")
    scheme = "https" if front is not None and opts.tls_cert is not None else "http"
    typer.echo(f"  gRPC    {opts.grpc_url}   models: mentallama (default), ensemble")
    if opts.http:
        typer.echo(f"  HTTP    {opts.http_url.replace('http://', scheme + '://')}")
    typer.echo(f"  metrics {opts.metrics_url}")
    if front is None:
        typer.echo("  --direct: clients reach tritonserver itself (no front door; do not expose to untrusted clients)")
    else:
        auth = f"{len(opts.api_keys)} API key(s)" if opts.api_keys else "no API keys"
        typer.echo(f"  front door: {auth}; tritonserver private on {server.opts.grpc_url} (log {front.log_path})")
    admin = "need the admin key" if opts.admin_key else "closed (no --admin-key given)"
    typer.echo(f"  admin APIs (shared memory, repository, statistics, trace, logging): {admin}")
    if not demo:
        typer.echo("Press Ctrl-C to stop the server (or send SIGTERM to this process).")
    try:
        if demo:
            from mentallama_server.launch.demo import run_demo

            run_demo(opts.grpc_url, model=model)
            return
        failed = supervise(server, front, warn=lambda message: typer.echo(message, err=True))
        if failed:
            sys.exit(failed)
    finally:
        if front is not None:
            front.stop()
        code = server.stop()
        typer.echo(f"tritonserver stopped (exit code {code})")


def main() -> None:
    app()
