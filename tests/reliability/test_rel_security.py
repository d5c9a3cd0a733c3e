"""Security defaults and options of `mentallama-serve`: TLS and mutual TLS on gRPC, loopback binding,
model control off, HTTP off, and the admin key on Triton's admin APIs.

Three servers start together: gRPC over TLS without HTTP, gRPC over mutual TLS without HTTP (both
`TritonProcess` as the launcher builds them), and `mentallama-serve` itself with its defaults and the
admin key from `MENTALLAMA_ADMIN_KEY`. Certificates are made at test time.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace

import grpc
import psutil
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mentallama import Analysis, APIConnectionError, MentaLLaMAClient
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import ADMIN_HEADER, port_free
from tests.reliability.rel_launched import LaunchedServer
from tests.reliability.rel_servers import Replica, start_replicas, stop_all
from tests.server.triton_io import http_generate
from tests.support.pki import Pki, make_pki
from tests.support.servers import HOST, loopback_options

pytestmark = pytest.mark.server
ADMIN_KEY = "s3cret-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton prefixes restricted gRPC headers
POST = "I can't sleep and nothing matters anymore."


@dataclass(frozen=True)
class Servers:
    pki: Pki
    tls: Replica
    mtls: Replica
    admin: LaunchedServer


@pytest.fixture(scope="module")
def servers(tiny_checkpoint, tmp_path_factory) -> Iterator[Servers]:
    pki = make_pki()
    root = tmp_path_factory.mktemp("security")
    cert, key = pki.server.write(root, "server")
    ca = root / "ca.crt"
    ca.write_bytes(pki.ca)
    settings = CpuSettings(max_output_len=64, cache_num_blocks=64)
    tls_opts = loopback_options(http=False, tls_cert=cert, tls_key=key)
    tls = Replica(tiny_checkpoint, settings, tls_opts, root / "tls")
    mtls = Replica(tiny_checkpoint, settings, replace(loopback_options(http=False, tls_cert=cert, tls_key=key),
                                                      tls_ca=ca), root / "mtls")  # fmt: skip
    admin = LaunchedServer(tiny_checkpoint, root / "admin", "--max-output-len=64", "--cache-num-blocks=64",
                           env={"MENTALLAMA_ADMIN_KEY": ADMIN_KEY})  # fmt: skip
    try:
        start_replicas([tls, mtls])
        admin.wait_ready()
        yield Servers(pki, tls, mtls, admin)
    finally:
        with admin:
            stop_all([tls, mtls])


def _analyze(url: str, **tls: object) -> Analysis:
    with MentaLLaMAClient(url, max_retries=0, timeout=20, **tls) as client:  # type: ignore[arg-type]
        return client.analyze(POST, "depression", max_tokens=4)


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of each listening socket; an IPv6 socket bound to `::ffff:127.0.0.1` (Triton's
    metrics service) is written as the IPv4 address it only accepts."""
    sockets = []
    for conn in psutil.Process(pid).net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN:
            address = ipaddress.ip_address(conn.laddr.ip)
            mapped = getattr(address, "ipv4_mapped", None)
            sockets.append((str(mapped or address), conn.laddr.port))
    return sorted(sockets)


# --- TLS -------------------------------------------------------------------------------------------


def test_tls_server_answers_an_sdk_that_trusts_its_ca(servers):
    assert _analyze(servers.tls.grpc_url, root_certificates=servers.pki.ca).num_output_tokens == 4


def test_tls_server_refuses_plaintext_and_clients_trusting_another_ca(servers):
    with pytest.raises(APIConnectionError):
        _analyze(servers.tls.grpc_url, root_certificates=servers.pki.other_ca)
    with pytest.raises(APIConnectionError):
        _analyze(servers.tls.grpc_url)  # plaintext gRPC to a TLS port


def test_mutual_tls_accepts_only_a_client_certificate_from_its_ca(servers):
    pki, url = servers.pki, servers.mtls.grpc_url
    good = dict(root_certificates=pki.ca, certificate_chain=pki.client.cert, private_key=pki.client.key)
    assert _analyze(url, **good).num_output_tokens == 4
    refused = {
        "no client certificate": dict(root_certificates=pki.ca),
        "client certificate from another CA": dict(
            root_certificates=pki.ca, certificate_chain=pki.other_client.cert, private_key=pki.other_client.key
        ),
        "client trusting another CA": {**good, "root_certificates": pki.other_ca},
    }
    for case, options in refused.items():
        with pytest.raises(APIConnectionError):
            _analyze(url, **options)
            pytest.fail(f"{case}: the server answered")
    assert _analyze(url, **good).num_output_tokens == 4  # the refusals left it serving


# --- binding, HTTP off, model control off ----------------------------------------------------------


def test_every_socket_listens_on_loopback_only(servers):
    admin = servers.admin
    triton, front = _listening(admin.tritonserver().pid), _listening(admin.front_door().pid)  # no --host given
    assert {ip for ip, _ in triton + front} == {HOST}, (triton, front)
    # The public ports are the front door's; tritonserver keeps the metrics page and loopback ports of its own.
    assert {admin.opts.grpc_port, admin.opts.http_port} == {port for _, port in front}
    assert admin.opts.metrics_port in {port for _, port in triton}
    assert not {admin.opts.grpc_port, admin.opts.http_port} & {port for _, port in triton}
    for replica in (servers.tls, servers.mtls):
        assert {ip for ip, _ in _listening(replica.pid)} == {HOST}


def test_no_http_leaves_the_http_port_closed(servers):
    for replica in (servers.tls, servers.mtls):
        ports = {port for _, port in _listening(replica.pid)}
        assert ports == {replica.opts.grpc_port, replica.opts.metrics_port}, ports
        assert port_free(HOST, replica.opts.http_port)


def test_model_control_is_off(cpu_server):
    """Loading or unloading a model is refused: the repository API is closed without an admin key, and model
    control is off behind it."""
    with grpc.insecure_channel(cpu_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for rpc, request in (
            (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="mentallama")),
            (stub.RepositoryModelUnload, service_pb2.RepositoryModelUnloadRequest(model_name="mentallama")),
        ):
            with pytest.raises(grpc.RpcError) as info:
                rpc(request, timeout=10)
            assert re.search("not allowed|restricted", info.value.details() or "")
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="mentallama"), timeout=10).ready
    for action in ("load", "unload"):
        status, body = _http(f"{cpu_server.http_url}/v2/repository/models/mentallama/{action}", method="POST")
        assert status >= 400 and re.search("not allowed|restricted", body)
    status, _ = _http(f"{cpu_server.http_url}/v2/models/mentallama/ready")
    assert status == 200


# --- the admin key ---------------------------------------------------------------------------------


def _http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_admin_http_apis_need_the_key(servers):
    base = servers.admin.http_url
    for path, method in (("/v2/models/stats", "GET"), ("/v2/repository/index", "POST"), ("/v2/logging", "GET"),
                         ("/v2/models/mentallama/config", "GET"), ("/v2/trace/setting", "GET")):  # fmt: skip
        status, body = _http(base + path, method)
        assert status == 403 and ADMIN_HEADER in body, (path, status, body)
        assert _http(base + path, method, {ADMIN_HEADER: "wrong"})[0] == 403
        status, body = _http(base + path, method, {ADMIN_HEADER: ADMIN_KEY})
        assert status == 200, (path, status, body)
    stats = json.loads(_http(base + "/v2/models/stats", headers={ADMIN_HEADER: ADMIN_KEY})[1])
    assert {m["name"] for m in stats["model_stats"]} >= {"mentallama", "tensorrt_llm"}


def test_admin_grpc_apis_need_the_key(servers):
    with grpc.insecure_channel(servers.admin.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = (
            (stub.ModelStatistics, service_pb2.ModelStatisticsRequest()),
            (stub.RepositoryIndex, service_pb2.RepositoryIndexRequest()),
            (stub.LogSettings, service_pb2.LogSettingsRequest()),
        )
        for rpc, request in calls:
            for metadata in ((), ((GRPC_ADMIN_HEADER, "wrong"),), ((ADMIN_HEADER, ADMIN_KEY),)):
                with pytest.raises(grpc.RpcError) as info:
                    rpc(request, metadata=metadata, timeout=10)
                assert "restricted" in (info.value.details() or "")
            assert rpc(request, metadata=((GRPC_ADMIN_HEADER, ADMIN_KEY),), timeout=10) is not None
        index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(),
                                     metadata=((GRPC_ADMIN_HEADER, ADMIN_KEY),), timeout=10)  # fmt: skip
        assert {m.name for m in index.models} >= {"mentallama", "ensemble"}


def test_inference_and_health_stay_open_without_the_key(servers):
    admin = servers.admin
    assert _analyze(admin.grpc_url).num_output_tokens == 4
    with MentaLLaMAClient(admin.grpc_url, timeout=10) as client:
        assert client.health()
    status, body = http_generate(admin.http_url, "mentallama", {"text_input": "Hello", "max_tokens": 4})
    assert status == 200 and body[0]["text_output"]
    assert _http(admin.http_url + "/v2/health/ready")[0] == 200
    assert _http(admin.metrics_url)[0] == 200
