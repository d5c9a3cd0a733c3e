"""Run the front door: gRPC (grpcio's asyncio server) and HTTP (uvicorn) on one event loop, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

import grpc
import uvicorn

from mentallama_server.front_door.admission import Admission
from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.front_door.grpc_front import GrpcFront
from mentallama_server.front_door.http_front import HttpFront, build_app
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


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m mentallama_server.front_door CONFIG.json (written by mentallama-serve)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s front door %(levelname)s %(message)s")
    asyncio.run(serve(FrontDoorConfig.load(Path(args[0]))))
