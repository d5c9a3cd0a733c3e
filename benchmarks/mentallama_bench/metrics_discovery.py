"""Where the server's Prometheus page is, when `--metrics` does not say: found on each endpoint's host.

`mentallama-serve` puts gRPC, HTTP and metrics on three ports that are, by default, 8001, 8000 and 8002; `make
serve GRPC_PORT=... HTTP_PORT=... METRICS_PORT=...` keeps that layout when given consecutive ports. So for an
endpoint the candidates are its gRPC port + 1 (or its HTTP port + 2), then 8002, and a candidate counts only
when it answers with Triton's counters for the model measured (`nv_inference_request_success{model="..."}`):
another server's page on the same host is not taken for this one. When none answers, the benchmark still
runs, without server-side counters, and the terminal says which URLs were tried and how to name the right one.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence

__all__ = ["METRICS_FIX", "candidate_urls", "find_metrics_urls", "probe"]

TRITON_METRICS_PORT = 8002
METRICS_FIX = ("pass --metrics http://HOST:PORT/metrics (mentallama-serve prints it on start as "
               "'metrics http://...'), or --no-metrics")  # fmt: skip


def _host_port(endpoint: str) -> tuple[str, int | None]:
    address = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = address.rpartition(":")
    if not host:
        return address, None
    try:
        return host, int(port)
    except ValueError:
        return host, None


def candidate_urls(grpc_endpoints: Sequence[str], http_endpoints: Sequence[str] = ()) -> dict[str, list[str]]:
    """Host -> metrics URLs to try, in order: the ports mentallama-serve lays out, then Triton's default."""
    found: dict[str, list[str]] = {}
    for endpoints, offset in ((grpc_endpoints, 1), (http_endpoints, 2)):
        for endpoint in endpoints:
            host, port = _host_port(endpoint)
            urls = found.setdefault(host, [])
            if port is not None:
                urls.append(f"http://{host}:{port + offset}/metrics")
    for host, urls in found.items():
        urls.append(f"http://{host}:{TRITON_METRICS_PORT}/metrics")
        found[host] = list(dict.fromkeys(urls))
    return found


def probe(url: str, model: str, timeout_s: float = 2.0) -> str | None:
    """``None`` when ``url`` serves Triton's counters for ``model``, else why not (one short phrase)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - built from the user's endpoint
            body = resp.read(4_000_000).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"{url}: {reason}"
    if "nv_inference_request_success" not in body:
        return f"{url}: not a Triton metrics page"
    if f'model="{model}"' not in body:
        return f"{url}: another server's metrics (no model {model!r})"
    return None


def find_metrics_urls(grpc_endpoints: Sequence[str], http_endpoints: Sequence[str], model: str,
                      timeout_s: float = 2.0) -> tuple[list[str], list[str]]:  # fmt: skip
    """``(metrics URLs found, one warning per host without one)``."""
    urls, warnings = [], []
    for host, candidates in candidate_urls(grpc_endpoints, http_endpoints).items():
        reasons = []
        for url in candidates:
            reason = probe(url, model, timeout_s)
            if reason is None:
                urls.append(url)
                break
            reasons.append(reason)
        else:
            warnings.append(f"no metrics page found for {host} ({'; '.join(reasons)}): server-side counters are "
                            f"left out; {METRICS_FIX}")  # fmt: skip
    return urls, warnings
