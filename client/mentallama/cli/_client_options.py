"""What ``mentallama analyze`` and ``eval`` share: the connection and generation flags, the client they make,
the preflight check before a batch, the progress bar and the disclaimer (the helpers every command shares
are in :mod:`mentallama.cli.common`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .._client import AsyncMentaLLaMAClient, MentaLLaMAClient
from .._constants import DEFAULT_CONCURRENCY, DEFAULT_MAX_TOKENS, DEFAULT_TIMEOUT, ENV_ENDPOINTS, ENV_MODEL
from .._exceptions import MentaLLaMAError
from .._ordered_writer import OrderedWriter
from .common import endpoint_problem, fail

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
    "DEFAULTS",
    "DISCLAIMER",
    "OrderedWriter",
    "client_from_options",
    "describe_error",
    "preflight",
    "progress_bar",
]

DISCLAIMER = "Predictions are for non-clinical research only: they are not a diagnosis."


def progress_bar(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, shown only when stderr is a terminal (no carriage returns in logs)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty())


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
    *,
    asynchronous: bool = False,
) -> Any:
    """A :class:`MentaLLaMAClient` (or, with ``asynchronous``, an :class:`AsyncMentaLLaMAClient`)."""
    cls = AsyncMentaLLaMAClient if asynchronous else MentaLLaMAClient
    try:
        return cls(
            endpoint or None, model=model, timeout=timeout, tls=tls or None,
            root_certificates=root_certificates, certificate_chain=certificate_chain, private_key=private_key,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc), code=2)
        raise  # unreachable; keeps type checkers calm


def describe_error(error: MentaLLaMAError) -> str:
    return f"{type(error).__name__}: {error}"


def preflight(client: MentaLLaMAClient, timeout: float = 5.0) -> None:
    """Fail in one line (exit 1) unless at least one of the client's endpoints serves its model.

    Done once before a batch, so that a missing server is one error, not one per post."""
    problems = []
    metadata = tuple((k.lower(), str(v)) for k, v in client.headers.items())
    for endpoint in client.endpoints:
        problem = endpoint_problem(client._transport.stub(endpoint), endpoint, client.model, timeout, metadata)
        if problem is None:
            return
        problems.append(problem)
    fail("; ".join(problems))
