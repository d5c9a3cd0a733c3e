"""API keys, TLS and mutual TLS on both of the front door's protocols (issue 18), on the real server."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mentallama import AuthenticationError, MentaLLaMAClient
from mentallama._transport import build_request
from tests.support.pki import make_pki

pytestmark = pytest.mark.server
BODY = json.dumps({"text_input": "Hi", "max_tokens": 2}).encode()


def http_post(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> int:
    request = urllib.request.Request(url, data=BODY, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_api_keys_are_required_on_both_protocols(front_door_with) -> None:
    door = front_door_with(api_keys=["k-right"])
    url = f"{door.http_url}/v2/models/mentallama/generate"
    assert http_post(url) == 401
    assert http_post(url, {"Authorization": "Bearer k-wrong"}) == 401
    assert http_post(url, {"Authorization": "Bearer k-right"}) == 200
    with urllib.request.urlopen(f"{door.http_url}/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200  # probes (Kubernetes, the launcher) need no key

    with MentaLLaMAClient(door.grpc_url, max_retries=0, timeout=30) as client, pytest.raises(AuthenticationError):
        client.generate("Hi", max_tokens=2)
    with MentaLLaMAClient(door.grpc_url, max_retries=0, timeout=30,
                          headers={"authorization": "Bearer k-right"}) as client:  # fmt: skip
        assert client.generate("Hi", max_tokens=2).text


def test_tls_and_mutual_tls_on_grpc_and_http(front_door_with, tmp_path: Path) -> None:
    pki = make_pki()
    cert, key = pki.server.write(tmp_path, "server")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.ca)
    client_cert, client_key = pki.client.write(tmp_path, "client")
    other_cert, other_key = pki.other_client.write(tmp_path, "other")
    door = front_door_with(tls_cert=str(cert), tls_key=str(key), tls_ca=str(ca))

    def grpc_ready(cert_path: Path | None, key_path: Path | None) -> bool:
        creds = grpc.ssl_channel_credentials(
            pki.ca,
            None if key_path is None else key_path.read_bytes(),
            None if cert_path is None else cert_path.read_bytes(),
        )
        with grpc.secure_channel(door.grpc_url, creds) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10)
                messages = list(stub.ModelStreamInfer(iter([build_request("mentallama", "t", {
                    "text_input": "Hi", "max_tokens": 2})]), timeout=30))  # fmt: skip
                return not any(m.error_message for m in messages)
            except grpc.RpcError:
                return False

    assert grpc_ready(client_cert, client_key)
    assert not grpc_ready(None, None)  # no client certificate
    assert not grpc_ready(other_cert, other_key)  # one from a CA the server does not trust

    def context(cert_path: Path | None, key_path: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=pki.ca.decode())
        if cert_path is not None:
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    url = f"{door.http_url}/v2/models/mentallama/generate"
    assert url.startswith("https://")
    assert http_post(url, context=context(client_cert, client_key)) == 200
    for bad in (context(None, None), context(other_cert, other_key)):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            http_post(url, context=bad)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext HTTP is not served beside TLS
        http_post(url.replace("https://", "http://"))
