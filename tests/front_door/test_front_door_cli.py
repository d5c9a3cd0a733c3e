"""`python -m mentallama_server.front_door`: the launcher's CONFIG.json, or flags (containers and batch jobs in
deploy/). The parsing is checked without a server; one test starts the front door with flags in front of the
session's tritonserver and generates through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mentallama_server.front_door.config import API_KEYS_ENV, FrontDoorConfig
from mentallama_server.front_door.server import parse_args
from tests.support.endpoints import HOST, free_port

UPSTREAM = ["--upstream-grpc", "127.0.0.1:18001"]


def parse_error(capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str] | None = None) -> str:
    """The usage error (exit 2) that `argv` gets, before anything binds a port."""
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, environ or {})
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_defaults_are_the_config_defaults() -> None:
    config = parse_args(UPSTREAM, {})
    assert config == FrontDoorConfig(upstream_grpc="127.0.0.1:18001")
    assert (config.host, config.grpc_port, config.http_port, config.api_keys) == ("127.0.0.1", 8001, 8000, [])


def test_every_flag_reaches_the_config(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("pem")
    (tmp_path / "keys").write_text("# service keys\nkey-a\n\nkey-b\n")
    (tmp_path / "admin").write_text("admin-secret\nignored\n")
    config = parse_args(
        ["--upstream-grpc", "127.0.0.1:18011", "--upstream-http", "http://127.0.0.1:18010/", "--host", "0.0.0.0",
         "--grpc-port", "8011", "--http-port", "8010", "--tls-cert", str(cert), "--tls-key", str(key),
         "--tls-ca", str(ca), "--api-key-file", str(tmp_path / "keys"), "--admin-key-file", str(tmp_path / "admin"),
         "--max-in-flight", "64", "--max-in-flight-per-client", "8", "--max-request-bytes", "4096",
         "--max-sequences", "8"],
        {API_KEYS_ENV: "key-c, key-d"},
    )  # fmt: skip
    assert config == FrontDoorConfig(
        upstream_grpc="127.0.0.1:18011", upstream_http="http://127.0.0.1:18010", host="0.0.0.0", grpc_port=8011,
        http_port=8010, tls_cert=str(cert), tls_key=str(key), tls_ca=str(ca),
        api_keys=["key-a", "key-b", "key-c", "key-d"], admin_key="admin-secret", max_in_flight=64,
        max_in_flight_per_client=8, max_request_bytes=4096, max_sequences=8,
    )  # fmt: skip


def test_api_keys_from_the_environment_alone() -> None:
    assert parse_args(UPSTREAM, {API_KEYS_ENV: "k1,k2"}).api_keys == ["k1", "k2"]


def test_no_http_serves_grpc_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args([*UPSTREAM, "--no-http"], {}).http_port is None
    assert "not allowed with argument" in parse_error(capsys, [*UPSTREAM, "--no-http", "--http-port", "8000"])


def test_the_launchers_config_file_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = FrontDoorConfig(upstream_grpc="127.0.0.1:5", grpc_port=9001, http_port=None, api_keys=["k"])
    path = saved.save(tmp_path / "front_door.json")
    assert parse_args([str(path)], {API_KEYS_ENV: "not-read"}) == saved  # the launcher already put the keys in
    assert "not both (--upstream-grpc, --grpc-port)" in parse_error(
        capsys, [str(path), "--upstream-grpc", "h:1", "--grpc-port", "9"]
    )
    (tmp_path / "bad.json").write_text(json.dumps({"upstream_grpc": "h:1", "no_such_setting": 1}))
    assert "cannot read" in parse_error(capsys, [str(tmp_path / "bad.json")])
    assert "cannot read" in parse_error(capsys, [str(tmp_path / "missing.json")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give CONFIG.json or --upstream-grpc HOST:PORT"),
        (["--upstream-grpc", "18001"], "must be HOST:PORT"),
        (["--upstream-grpc", "h:port"], "must be HOST:PORT"),
        ([*UPSTREAM, "--upstream-http", "127.0.0.1:18000"], "must be an http:// URL"),
        ([*UPSTREAM, "--grpc-port", "0"], "must be a port number"),
        ([*UPSTREAM, "--http-port", "70000"], "must be a port number"),
        ([*UPSTREAM, "--grpc-port", "x"], "invalid _port value"),
        ([*UPSTREAM, "--max-in-flight", "0"], "must be >= 1"),
        ([*UPSTREAM, "--max-request-bytes", "-5"], "must be >= 1"),
        ([*UPSTREAM, "--max-sequences", "0"], "must be >= 1"),
        ([*UPSTREAM, "--tls-cert", "/no/cert.pem"], "TLS needs both --tls-cert and --tls-key"),
        ([*UPSTREAM, "--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"], "TLS file /no/cert.pem does not"),
        ([*UPSTREAM, "--tls-ca", "/no/ca.pem"], "--tls-ca (mutual TLS) needs --tls-cert"),
        ([*UPSTREAM, "--api-key-file", "/no/keys"], "cannot read the API keys"),
        ([*UPSTREAM, "--admin-key-file", "/no/admin"], "cannot read the admin key file /no/admin"),
        ([*UPSTREAM, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_mistakes_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert message in parse_error(capsys, argv)


def test_bad_key_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keys").write_text("a key with spaces\n")
    (tmp_path / "admin").write_text("\n")
    assert "no spaces" in parse_error(capsys, [*UPSTREAM, "--api-key-file", str(tmp_path / "keys")])
    assert "contain no spaces" in parse_error(capsys, UPSTREAM, {API_KEYS_ENV: "bad\tkey"})
    assert "must start with a line" in parse_error(capsys, [*UPSTREAM, "--admin-key-file", str(tmp_path / "admin")])


# ---- a real front door started with flags ----------------------------------------------------------------


def _post(url: str, body: dict, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.server
def test_flags_start_a_front_door_that_generates(cpu_server, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    grpc_port, http_port = free_port(), free_port()
    (tmp_path / "keys").write_text("file-key\n")
    argv = [
        sys.executable, "-m", "mentallama_server.front_door", "--upstream-grpc", cpu_server.triton.grpc_url,
        "--upstream-http", cpu_server.triton.http_url, "--host", HOST, "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--api-key-file", str(tmp_path / "keys"), "--max-request-bytes", "2048",
    ]  # fmt: skip
    log = (tmp_path / "front.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, API_KEYS_ENV: "env-key"})
    try:
        deadline = time.monotonic() + 30
        while not (_listening(grpc_port) and _listening(http_port)):
            assert proc.poll() is None, (tmp_path / "front.log").read_text()
            assert time.monotonic() < deadline, "the front door did not listen within 30 s"
            time.sleep(0.2)
        url = f"http://{HOST}:{http_port}/v2/models/mentallama/generate"
        canary = "zebra-canary-post"
        for key in ("file-key", "env-key"):  # both sources of keys are in force
            status, body = _post(url, {"text_input": f"Hello {canary}", "max_tokens": 4}, key)
            assert status == 200, body
            assert body["text_output"] and body["model_name"] == "mentallama"
        assert _post(url, {"text_input": "Hello", "max_tokens": 4}, None)[0] == 401
        assert _post(url, {"text_input": "x" * 4096, "max_tokens": 4}, "env-key")[0] == 413  # --max-request-bytes
        with urllib.request.urlopen(f"http://{HOST}:{http_port}/v2/health/ready", timeout=10) as response:
            assert response.status == 200  # forwarded to tritonserver: what deploy/'s probes ask
        client = grpcclient.InferenceServerClient(f"{HOST}:{grpc_port}")
        assert client.is_server_ready()
        with pytest.raises(grpcclient.InferenceServerException, match="API key"):
            client.get_model_metadata("mentallama")
        assert client.get_model_metadata("mentallama", headers={"authorization": "Bearer file-key"}).name == (
            "mentallama"
        )
        client.close()
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0  # SIGTERM is a clean stop
    assert canary not in (tmp_path / "front.log").read_text()  # request contents are never logged


def test_the_tokenizer_folder_is_read_from_the_rendered_front_model_config(tmp_path) -> None:
    from mentallama_server.launch.front_door_process import rendered_tokenizer_dir

    config = tmp_path / "model_repository" / "mentallama" / "config.pbtxt"
    config.parent.mkdir(parents=True)
    config.write_text('name: "mentallama"\nparameters { key: "tokenizer_dir" value: { string_value: "/e/ngine" } }\n')
    assert rendered_tokenizer_dir(tmp_path) == "/e/ngine"
    config.write_text('parameters { key: "tokenizer_dir" value: { string_value: "" } }\n')
    assert rendered_tokenizer_dir(tmp_path) is None
    assert rendered_tokenizer_dir(tmp_path / "none") is None


def test_a_tokenizer_folder_flag_must_name_a_folder(tmp_path) -> None:
    from mentallama_server.front_door.server import parse_args

    assert parse_args(["--upstream-grpc", "127.0.0.1:1", "--tokenizer-dir", str(tmp_path)]).tokenizer_dir == str(
        tmp_path
    )
    with pytest.raises(SystemExit):
        parse_args(["--upstream-grpc", "127.0.0.1:1", "--tokenizer-dir", str(tmp_path / "missing")])
