"""Run the front door: gRPC (grpcio's asyncio server) and HTTP (uvicorn) on one event loop, until SIGTERM/SIGINT.

Settings come from the launcher's 0600 file (`CONFIG.json`) or, in containers and batch jobs, from flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

import grpc
import uvicorn

from mentallama_server.front_door.admission import Admission
from mentallama_server.front_door.config import API_KEYS_ENV, FrontDoorConfig, read_admin_key, read_api_keys
from mentallama_server.front_door.grpc_front import GrpcFront
from mentallama_server.front_door.http_app import build_app
from mentallama_server.front_door.http_front import HttpFront
from mentallama_server.front_door.upstream import UpstreamPool

log = logging.getLogger("mentallama.front_door")


def grpc_credentials(config: FrontDoorConfig) -> grpc.ServerCredentials | None:
    if not config.tls:
        return None
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    ca = Path(config.tls_ca).read_bytes() if config.tls_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


async def serve(config: FrontDoorConfig) -> None:
    pool = UpstreamPool(config.upstream_grpc, config.upstream_streams, config.max_request_bytes)
    admission = Admission(config.max_in_flight, config.max_in_flight_per_client)
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_in_flight * 2,  # beyond it grpc answers RESOURCE_EXHAUSTED
    )
    grpc_server.add_generic_rpc_handlers((GrpcFront(config, pool, admission).handler(),))
    address = f"{config.host}:{config.grpc_port}"
    credentials = grpc_credentials(config)
    if credentials is None:
        grpc_server.add_insecure_port(address)
    else:
        grpc_server.add_secure_port(address, credentials)
    await grpc_server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http_server = None
    if config.http_port is not None:
        http_server = uvicorn.Server(_uvicorn_config(config, HttpFront(config, pool, admission)))
        http_server.install_signal_handlers = lambda: None  # ours, above
        http_task = asyncio.create_task(http_server.serve())
    log.warning("front door listening: gRPC %s, HTTP %s", address, config.http_port)
    await stop.wait()
    if http_server is not None:
        http_server.should_exit = True
        await http_task
    await grpc_server.stop(grace=3)
    await pool.close()


def _uvicorn_config(config: FrontDoorConfig, front: HttpFront) -> uvicorn.Config:
    tls: dict = {}
    if config.tls:
        tls = dict(ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key)
        if config.tls_ca:
            tls.update(ssl_ca_certs=config.tls_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return uvicorn.Config(
        build_app(front),
        host=config.host,
        port=config.http_port,
        log_level="warning",
        access_log=False,  # paths only, but nothing about requests is logged by default
        limit_concurrency=config.max_in_flight * 2,  # beyond it uvicorn answers 503
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
        **tls,
    )


USAGE = """python -m mentallama_server.front_door CONFIG.json              (written by mentallama-serve)
       python -m mentallama_server.front_door --upstream-grpc HOST:PORT [options]   (containers, batch jobs)"""
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {value}")
    return value


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, got {text!r}")
    return text


def _http_url(text: str) -> str:
    if not text.startswith("http://"):  # tritonserver's own HTTP, on loopback: never TLS
        raise argparse.ArgumentTypeError(f"must be an http:// URL, got {text!r}")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    defaults = FrontDoorConfig(upstream_grpc="")
    parser = argparse.ArgumentParser(
        prog="python -m mentallama_server.front_door",
        usage=USAGE,
        description="The public KServe v2 gRPC and HTTP endpoints in front of a tritonserver on loopback ports.",
    )
    parser.add_argument("config", nargs="?", type=Path, help="settings file written by mentallama-serve (0600)")
    up = parser.add_argument_group("upstream (tritonserver, loopback)")
    up.add_argument("--upstream-grpc", type=_host_port, metavar="HOST:PORT", help="tritonserver's gRPC endpoint")
    up.add_argument(
        "--upstream-http",
        type=_http_url,
        metavar="URL",
        help="tritonserver's HTTP endpoint (http://HOST:PORT): admin APIs over HTTP go there",
    )
    public = parser.add_argument_group("public endpoints")
    public.add_argument("--host", default=defaults.host, help=f"address to bind (default {defaults.host})")
    public.add_argument("--grpc-port", type=_port, default=defaults.grpc_port, help=f"(default {defaults.grpc_port})")
    http = public.add_mutually_exclusive_group()
    http.add_argument("--http-port", type=_port, default=defaults.http_port, help=f"(default {defaults.http_port})")
    http.add_argument("--no-http", action="store_true", help="serve gRPC only")
    security = parser.add_argument_group("security")
    security.add_argument("--tls-cert", type=Path, help="PEM server certificate: gRPC and HTTP over TLS")
    security.add_argument("--tls-key", type=Path, help="PEM server private key")
    security.add_argument("--tls-ca", type=Path, help="PEM CA for client certificates: mutual TLS")
    security.add_argument(
        "--api-key-file", type=Path, help=f"accepted API keys, one per line (also ${API_KEYS_ENV}, comma-separated)"
    )
    security.add_argument("--admin-key-file", type=Path, help="the admin APIs' key (first line); none: closed")
    limits = parser.add_argument_group("limits")
    for name, what in (("max_in_flight", "requests in flight in all, then UNAVAILABLE / 503"),
                       ("max_in_flight_per_client", "per connection or API key, then UNAVAILABLE / 429"),
                       ("max_request_bytes", "largest request, then RESOURCE_EXHAUSTED / 413"),
                       ("max_sequences", "beams or sequences per prompt (beam_width, num_return_sequences, OpenAI's "
                        "n), then INVALID_ARGUMENT / 400")):  # fmt: skip
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        limits.add_argument(flag, type=_positive, default=default, metavar="N", help=f"{what} (default {default})")
    parser.add_argument(
        "--tokenizer-dir",
        type=Path,
        metavar="DIR",
        help="the served checkpoint's tokenizer folder: /v1/chat/completions uses its chat template "
        "(default: the LLaMA-2-chat format)",
    )
    return parser


def _flags_given(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    return [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.dest != "help" and getattr(args, action.dest) != action.default
    ]


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> FrontDoorConfig:
    """The settings of a command line: a launcher's CONFIG.json, or flags (API keys also from the environment).
    Mistakes exit 2 with a message, before any port is bound."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        if flags := _flags_given(parser, args):  # one source of truth: a file and flags would disagree silently
            parser.error(f"give CONFIG.json or flags, not both ({', '.join(flags)})")
        try:
            return FrontDoorConfig.load(args.config)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"cannot read {args.config}: {exc}")
    if args.upstream_grpc is None:
        parser.error("give CONFIG.json or --upstream-grpc HOST:PORT")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("TLS needs both --tls-cert and --tls-key")
    if args.tls_ca is not None and args.tls_cert is None:
        parser.error("--tls-ca (mutual TLS) needs --tls-cert and --tls-key")
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        if path is not None and not path.is_file():
            parser.error(f"TLS file {path} does not exist")
    try:
        api_keys = read_api_keys(args.api_key_file, environ)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read the API keys: {exc}")
    admin_key = None
    if args.admin_key_file is not None:
        try:
            admin_key = read_admin_key(args.admin_key_file)
        except ValueError as exc:
            parser.error(str(exc))
    if args.tokenizer_dir is not None and not args.tokenizer_dir.is_dir():
        parser.error(f"--tokenizer-dir {args.tokenizer_dir} is not a folder")
    return FrontDoorConfig(
        tokenizer_dir=_text(args.tokenizer_dir),
        upstream_grpc=args.upstream_grpc, upstream_http=args.upstream_http, host=args.host,
        grpc_port=args.grpc_port, http_port=None if args.no_http else args.http_port,
        tls_cert=_text(args.tls_cert), tls_key=_text(args.tls_key), tls_ca=_text(args.tls_ca),
        api_keys=api_keys, admin_key=admin_key, max_in_flight=args.max_in_flight,
        max_in_flight_per_client=args.max_in_flight_per_client, max_request_bytes=args.max_request_bytes,
        max_sequences=args.max_sequences,
    )  # fmt: skip


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s front door %(levelname)s %(message)s")
    if not config.api_keys and config.host not in LOOPBACK:
        log.warning("serving %s without API keys: any client that reaches it may use it (see --api-key-file)",
                    config.host)  # fmt: skip
    asyncio.run(serve(config))
