"""The front door's link to tritonserver on the real server, through a TCP relay the test can watch and cut:
an idle link stays quiet (no keepalive pings, which Triton answers with GOAWAY "too_many_pings" after ~2.5
minutes, breaking every open stream), and a link that breaks stops the requests it carried in band, since the
models never ask Triton whether a request was cancelled."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from mentallama._transport import build_request
from tests.support.metrics import scrape_metric, wait_engine
from tests.support.servers import loopback_options

pytestmark = pytest.mark.server
LONG = {"text_input": "Tell me a story", "stream": True, "max_tokens": 1000, "min_tokens": 1000}


class Relay:
    """Forwards TCP connections to `target`, counting the bytes sent upstream; `cut()` closes them all."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.upstream_bytes = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream:
                    with self._lock:
                        self.upstream_bytes += len(data)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture()
def relayed(cpu_server, tmp_path: Path) -> Iterator[tuple[str, Relay, Path]]:
    """A second front door on the shared tritonserver, its gRPC link through a relay: (its gRPC URL, relay, its
    log)."""
    from mentallama_server.launch.front_door_process import FrontDoorProcess

    relay = Relay(("127.0.0.1", cpu_server.triton.grpc_port))
    public = loopback_options()
    front = FrontDoorProcess.start(public, replace(cpu_server.triton, grpc_port=relay.port), tmp_path)
    try:
        yield public.grpc_url, relay, front.log_path
    finally:
        front.stop()
        relay.close()


def stream(url: str, inputs: dict, *request_ids: str):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
    requests = [build_request("mentallama", request_id, inputs) for request_id in request_ids or ("1",)]
    return stub.ModelStreamInfer(iter(requests), timeout=60)


def tokens(metrics_url: str) -> float:
    value = scrape_metric(metrics_url, "mentallama_engine_tokens_total")
    assert value is not None, "mentallama_engine_tokens_total missing from the server's metrics"
    return value


def test_a_broken_link_stops_what_it_carried_and_the_next_request_is_served(cpu_server, relayed) -> None:
    url, relay, log = relayed
    wait_engine(cpu_server.metrics_url, busy=False, within_s=10)
    before = tokens(cpu_server.metrics_url)
    running = stream(url, LONG, *"abcd")
    next(running)
    relay.cut()
    with pytest.raises(grpc.RpcError) as lost:
        list(running)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE  # what a client of a dead Triton sees, and retries
    # Triton is alive and went on generating for no one (before the fix, 1,008 tokens: request "a" to its end):
    # the front door stops what the link carried, in band. The tiny engine makes 1,000 tokens in under a second,
    # so how many it made before the stop arrived depends on the machine's load (57 idle, 528 in a CI run).
    wait_engine(cpu_server.metrics_url, busy=False, within_s=10)
    spent = tokens(cpu_server.metrics_url) - before
    assert spent < 4 * LONG["max_tokens"], f"{spent:.0f} tokens generated in all"
    assert "stopping them in band" in log.read_text(encoding="utf-8")
    answers = list(stream(url, {"text_input": "Hello", "max_tokens": 4, "stream": True}, "2"))
    assert answers and not any(m.error_message for m in answers)


def test_an_idle_link_sends_nothing(relayed) -> None:
    """Client keepalive pings every 30 s broke the front door's streams after ~2.5 idle minutes (Triton's
    server allows one ping per 5 minutes without data, then sends GOAWAY "too_many_pings"), and the request that
    came next failed UNAVAILABLE."""
    url, relay, _ = relayed
    assert list(stream(url, {"text_input": "Hello", "max_tokens": 2, "stream": True}))  # the streams are open
    time.sleep(2)  # the frames that follow a response (window updates) have gone by
    before = relay.upstream_bytes
    time.sleep(35)  # longer than the 30 s keepalive that broke it
    assert relay.upstream_bytes == before
    answers = list(stream(url, {"text_input": "Hello", "max_tokens": 2, "stream": True}, "2"))
    assert answers and not any(m.error_message for m in answers)
