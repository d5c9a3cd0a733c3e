"""Launcher defaults of issue 15 (no server): admin APIs closed without a key, the key from a file, TLS not
paired with plaintext HTTP unless asked, /dev/shm regions made private."""

from __future__ import annotations

import stat

import pytest

from mentallama_server.launch import launcher
from mentallama_server.launch.launcher import (
    ADMIN_APIS,
    LaunchError,
    ServerOptions,
    admin_args,
    make_shm_regions_private,
    read_admin_key,
    tls_args,
)


def test_admin_apis_are_closed_without_a_key():
    args = admin_args(ServerOptions())
    assert [a.split("=", 1)[0] for a in args] == ["--grpc-restricted-protocol", "--http-restricted-api"]
    for arg in args:
        apis, key = arg.split("=", 1)[1].split(":", 1)
        assert apis == ADMIN_APIS and "shared-memory" in apis
        assert "\n" in key.split("=", 1)[1]  # no header can carry it
    assert args != admin_args(ServerOptions())  # random each time


def test_a_given_key_protects_them_and_must_be_one_line():
    assert admin_args(ServerOptions(admin_key="k3y"))[0].endswith(":admin-key=k3y")
    with pytest.raises(LaunchError, match="one line"):
        admin_args(ServerOptions(admin_key="a\nb"))


def test_admin_key_from_a_file(tmp_path):
    path = tmp_path / "key"
    path.write_text("s3cret\n")
    assert read_admin_key(path) == "s3cret"
    path.write_text("\n")
    with pytest.raises(LaunchError, match="empty"):
        read_admin_key(path)
    with pytest.raises(LaunchError, match="cannot read"):
        read_admin_key(tmp_path / "missing")


def test_tls_with_plaintext_http_is_refused_unless_asked(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    with pytest.raises(LaunchError, match="plaintext"):
        tls_args(ServerOptions(tls_cert=cert, tls_key=key))
    assert tls_args(ServerOptions(tls_cert=cert, tls_key=key, http=False))
    assert tls_args(ServerOptions(tls_cert=cert, tls_key=key, plaintext_http=True))


def test_shm_regions_are_made_private(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "SHM_DIR", tmp_path)
    mine, other = tmp_path / "srv_a", tmp_path / "other_a"
    for path in (mine, other):
        path.write_bytes(b"")
        path.chmod(0o644)
    assert make_shm_regions_private("srv_") == [mine]
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert stat.S_IMODE(other.stat().st_mode) == 0o644
