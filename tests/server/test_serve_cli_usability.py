"""`mentallama-serve` as a newcomer meets it (issue 14): help for every option, -h/--version, the
checkpoint flag's name, all taken ports in one error, a banner that says how to stop."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
import typer
from typer.testing import CliRunner

from mentallama_server.launch import cli
from mentallama_server.launch.launcher import LaunchError, ServerOptions, check_ports

runner = CliRunner()


def test_every_option_has_a_description_and_help_fits_80_columns():
    command = typer.main.get_command(cli.app)
    missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == []
    short = runner.invoke(cli.app, ["-h"], env={"COLUMNS": "80"})
    assert short.exit_code == 0 and "--checkpoint" in short.stdout
    assert "…" not in short.stdout and "\\[" not in short.stdout
    assert max(len(line) for line in short.stdout.splitlines()) <= 80


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("mentallama-serve ")


def test_checkpoint_flag_and_the_deprecated_model_spelling(tmp_path, tiny_checkpoint: Path):
    new = runner.invoke(cli.app, ["--render", str(tmp_path / "a"), "--checkpoint", str(tiny_checkpoint)])
    assert new.exit_code == 0, new.output
    assert "deprecated" not in new.stderr and (tmp_path / "a").is_dir()
    old = runner.invoke(cli.app, ["--render", str(tmp_path / "b"), "--model", str(tiny_checkpoint)])
    assert old.exit_code == 0, old.output
    assert "--model is deprecated here; use --checkpoint" in old.stderr and (tmp_path / "b").is_dir()
    both = runner.invoke(cli.app, ["--render", str(tmp_path / "c"), "--model", "tiny", "--checkpoint", "bench"])
    assert both.exit_code == 2


def test_all_taken_ports_in_one_error():
    with socket.socket() as grpc_sock, socket.socket() as metrics_sock:
        for sock in (grpc_sock, metrics_sock):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        grpc_port, metrics_port = grpc_sock.getsockname()[1], metrics_sock.getsockname()[1]
        opts = ServerOptions(host="127.0.0.1", grpc_port=grpc_port, metrics_port=metrics_port, http=False)
        with pytest.raises(LaunchError) as info:
            check_ports(opts)
    message = str(info.value)
    assert f"grpc port {grpc_port} on 127.0.0.1 is already in use" in message
    assert f"metrics port {metrics_port} on 127.0.0.1 is already in use" in message
    assert "--grpc-port / --metrics-port" in message


def test_banner_says_how_to_stop(capsys):
    server = SimpleNamespace(log_path="/tmp/x.log", health_problem=lambda: "tritonserver exited", opts=ServerOptions(),
                             log_tail=lambda: "", stop=lambda grace_s=None: 0)  # fmt: skip
    with pytest.raises(SystemExit):
        cli._serve(server, None, "cpu", ServerOptions(), demo=False)
    assert "Press Ctrl-C to stop the server" in capsys.readouterr().out
