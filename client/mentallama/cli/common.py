"""Helpers every ``mentallama*`` command shares (``mentallama``, ``mentallama-serve``, ``mentallama-build``,
``mentallama-bench``): plain ``--help``, ``--version``, usage errors, "did you mean", and the one-line
reason an endpoint cannot serve a model."""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import typer
from tritonclient.grpc import service_pb2

from .. import locations
from .._constants import ENV_ENDPOINTS
from .._transport import HTTP_PORT_HINT, wrong_protocol_hint

__all__ = [
    "HELP_OPTIONS",
    "KNOWN_MODELS",
    "START_SERVER_HINT",
    "cache_dir_option",
    "endpoint_problem",
    "fail",
    "plain_help",
    "served_models",
    "suggest",
    "typer_factory",
    "version_option",
]

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
START_SERVER_HINT = ("start one with `mentallama-serve` (or `make serve`), or point --endpoint / "
                     f"${ENV_ENDPOINTS} at a running server")  # fmt: skip
# The models mentallama-serve renders: probed one by one when the repository index is closed (admin API).
KNOWN_MODELS = ("mentallama", "ensemble", "preprocessing", "postprocessing", "tensorrt_llm")


def plain_help() -> None:
    """Let Typer apps made with ``rich_markup_mode=None`` print click's plain help (wrapped to the
    terminal, nothing cut to "…") without Typer 0.20 escaping its ``[default: ...]`` as rich markup."""
    try:
        import click
        from typer import rich_utils
    except ImportError:  # no rich: Typer prints plain help already
        return
    original = rich_utils.escape_before_html_export
    if getattr(original, "plain_aware", False):
        return

    def escape(text: str) -> str:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and getattr(ctx.command, "rich_markup_mode", "rich") is None:
            return text
        return original(text)

    escape.plain_aware = True  # type: ignore[attr-defined]
    rich_utils.escape_before_html_export = escape


def typer_factory(help: str) -> typer.Typer:  # noqa: A002 - Typer's own parameter name
    plain_help()
    return typer.Typer(help=help, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                       rich_markup_mode=None, context_settings=HELP_OPTIONS)  # fmt: skip


def version_option(program: str, version: str) -> Any:
    """A ``--version`` option (eager: prints ``program version`` and exits) for a Typer callback."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{program} {version}")
            raise typer.Exit()

    return typer.Option("--version", "-V", callback=show, is_eager=True, help="print the version and exit")


def _writable_folder(path: Path | None) -> Path | None:
    """The cache folder, made if missing; a usage error (not a traceback deep in a build) when it cannot be."""
    if path is None:
        return None
    try:
        path.expanduser().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.expanduser()):
            pass
    except OSError as exc:
        raise typer.BadParameter(f"cannot write into {path}: {exc.strerror or exc}") from None
    return path


def cache_dir_option(what: str) -> Any:
    """A ``--cache-dir`` option (or ``$MENTALLAMA_CACHE``), the folder for ``what``, checked writable; the command
    passes its value to :func:`mentallama.locations.set_cache_dir`."""
    return typer.Option(envvar=locations.CACHE_ENV, show_default=False, callback=_writable_folder,
                        help=f"folder for {what} [default: artifacts/ in a checkout, else ~/.cache/mentallama]")


def suggest(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f"; did you mean {original!r}?"


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def endpoint_problem(stub: Any, endpoint: str, model: str, timeout: float = 5.0,
                     metadata: Sequence[tuple[str, str]] = ()) -> str | None:  # fmt: skip
    """Why ``endpoint`` cannot serve ``model`` (one line saying what to do), or None when it can.

    ``stub``: a ``GRPCInferenceServiceStub`` (blocking). Checks that something answers, that it is
    ready, and that ``model`` is ready; for an unknown model it lists the models the server has.
    """
    md = tuple(metadata)
    try:
        stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout, metadata=md)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNAVAILABLE:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if wrong_protocol_hint(details or ""):
                return f"{endpoint}: {HTTP_PORT_HINT}"
            return f"no server at {endpoint} (connection failed); {START_SERVER_HINT}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"the server at {endpoint} did not answer within {timeout:g} s; is it a Triton gRPC port?"
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        return f"the server at {endpoint} refused the health check: {detail}"
    try:
        ready = stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout, metadata=md).ready
        model_ready = stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=timeout, metadata=md).ready
    except grpc.RpcError as exc:
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        return f"the server at {endpoint} failed its readiness check: {detail}"
    if model_ready:
        return None
    models = served_models(stub, timeout, md)
    if not ready and not models:
        return f"the server at {endpoint} is not ready yet (still loading?); try again in a moment"
    listed = ", ".join(models) if models else "none ready"
    return f"model {model!r} is not served at {endpoint}{suggest(model, models)}; it has: {listed} (pick with --model)"


def served_models(stub: Any, timeout: float, metadata: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Ready models: the repository index when it is open, else the models mentallama-serve renders."""
    md = tuple(metadata)
    try:
        index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=timeout, metadata=md)
        return sorted(m.name for m in index.models)
    except grpc.RpcError:  # restricted (admin API) without the key: probe the known names
        pass
    found = []
    for name in KNOWN_MODELS:
        try:
            if stub.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=timeout, metadata=md).ready:
                found.append(name)
        except grpc.RpcError:
            continue
    return found
