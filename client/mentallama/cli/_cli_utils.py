"""Shared pieces of the ``mentallama`` commands: the app factory, option aliases, the client factory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._client import MentaLLaMAClient
from .._constants import DEFAULT_CONCURRENCY, DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT, ENV_ENDPOINTS, ENV_MODEL
from .._exceptions import MentaLLaMAError

__all__ = [
    "ChatOpt",
    "ConcurrencyOpt",
    "EndpointOpt",
    "MaxTokensOpt",
    "ModelOpt",
    "TaskOpt",
    "TimeoutOpt",
    "TlsOpt",
    "RootCertOpt",
    "CertChainOpt",
    "PrivateKeyOpt",
    "client_from_options",
    "fail",
    "typer_factory",
]

DISCLAIMER = "Predictions are for non-clinical research only: they are not a diagnosis."


def typer_factory(help: str) -> typer.Typer:  # noqa: A002 - Typer's own parameter name
    return typer.Typer(help=help, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


EndpointOpt = Annotated[
    list[str] | None,
    typer.Option("--endpoint", "-e", help=f"gRPC host:port; repeat for several (default: ${ENV_ENDPOINTS} "
                 "or localhost:8001)", show_default=False),  # fmt: skip
]
ModelOpt = Annotated[
    str | None,
    typer.Option(help=f"served model name (default: ${ENV_MODEL} or mentallama)", show_default=False),
]
TimeoutOpt = Annotated[float, typer.Option(help="seconds allowed per request, retries included")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="task name or alias (see `mentallama tasks`)")]
MaxTokensOpt = Annotated[int, typer.Option(help="most tokens to generate per answer")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="requests in flight at once")]
ChatOpt = Annotated[bool, typer.Option(help="wrap the query in the LLaMA-2 chat format")]
TlsOpt = Annotated[bool, typer.Option(help="connect with TLS (system CA roots unless --root-certificates)")]
RootCertOpt = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="PEM CA bundle (implies --tls)",
                              show_default=False),  # fmt: skip
]
CertChainOpt = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="PEM client certificate (mutual TLS)",
                              show_default=False),  # fmt: skip
]
PrivateKeyOpt = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="PEM client key (mutual TLS)",
                              show_default=False),  # fmt: skip
]

DEFAULTS = {"timeout": DEFAULT_TIMEOUT, "max_tokens": DEFAULT_MAX_TOKENS, "concurrency": DEFAULT_CONCURRENCY}


def client_from_options(
    endpoint: list[str] | None,
    model: str | None,
    timeout: float,
    tls: bool = False,
    root_certificates: Path | None = None,
    certificate_chain: Path | None = None,
    private_key: Path | None = None,
) -> MentaLLaMAClient:
    try:
        return MentaLLaMAClient(
            endpoint or None, model=model, timeout=timeout, tls=tls or None,
            root_certificates=root_certificates, certificate_chain=certificate_chain, private_key=private_key,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc), code=2)
        raise  # unreachable; keeps type checkers calm


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` to stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def describe_error(error: MentaLLaMAError) -> str:
    return f"{type(error).__name__}: {error}"
