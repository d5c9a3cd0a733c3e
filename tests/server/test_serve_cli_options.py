"""`mentallama-serve` takes its flags from the dataclasses the launch code reads (issue 13): every `CpuSettings`
field is a flag or says why it is not, each flag's default is its field's, every flag's value reaches the
settings or the launcher's options, and --help shows the flags in sections by purpose. No server is started:
the render and start functions are replaced by recorders."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
from typer.testing import CliRunner

from mentallama.cli.options import NOT_A_FLAG, field_default, flag_fields
from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.launch import cli, serve_cpu, serve_trtllm
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import LaunchError, ServerOptions
from mentallama_server.launch.serve_trtllm import TrtllmOptions

runner = CliRunner()
COMMAND = typer.main.get_command(cli.app)
OPTIONS = {p.name: p for p in COMMAND.params if isinstance(p, click.Option)}
FLAG_GROUPS = (cli.Endpoints, cli.Security, CpuSettings, TrtllmOptions)

# The flags the command had before its options came from dataclasses: none may disappear.
FLAGS_BEFORE = [
    "--profile", "--checkpoint", "--model", "--engine", "--tokenizer", "--profile-file", "--set", "--tritonserver",
    "--host", "--grpc-port", "--http-port", "--metrics-port", "--http", "--no-http", "--tls-cert", "--tls-key",
    "--tls-ca", "--admin-key", "--admin-key-file", "--plaintext-http", "--no-plaintext-http", "--render",
    "--run-dir", "--demo", "--no-demo", "--shm-pool-mib", "--ready-timeout", "--engine-max-batch-size",
    "--cache-num-blocks", "--max-batch-tokens", "--dynamic-split-fuse", "--no-dynamic-split-fuse",
    "--prefix-caching", "--no-prefix-caching", "--kv-cache-precision", "--inference-precision", "--weight-format",
    "--num-threads", "--max-input-len", "--max-output-len", "--max-queue-size", "--version", "-V",
]


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """The command turns SIGTERM into SystemExit for the server it starts; give pytest its own handler back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_no_flag_is_lost():
    names = {name for p in COMMAND.params for name in (*p.opts, *p.secondary_opts)}
    assert set(FLAGS_BEFORE) - names == set()


def test_every_cpu_setting_is_a_flag_or_says_why_not():
    for f in fields(CpuSettings):
        if f.metadata.get(NOT_A_FLAG):
            assert f.name not in OPTIONS, f"CpuSettings.{f.name} says it is not a flag but is one"
        else:
            assert f.name in OPTIONS, f"CpuSettings.{f.name} has no mentallama-serve flag"
            assert OPTIONS[f.name].opts == [dashed(f.name)]


def test_flag_defaults_are_the_dataclass_defaults():
    for cls in FLAG_GROUPS:
        for f in flag_fields(cls):
            assert OPTIONS[f.name].default == field_default(f), f"{cls.__name__}.{f.name}"
    launcher_defaults, front_defaults = ServerOptions(), FrontDoorConfig(upstream_grpc="")
    for f in fields(cli.Endpoints):  # the endpoint flags repeat no default of the launcher's or the front door's
        if f.name == "direct":
            assert OPTIONS[f.name].default is (not launcher_defaults.front_door)
        else:
            owner = launcher_defaults if hasattr(launcher_defaults, f.name) else front_defaults
            assert OPTIONS[f.name].default == getattr(owner, f.name), f.name


def other_value(default: Any) -> Any:
    """A value that is not the default, of the same type (bool before int: a bool is an int)."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    return f"{default}-x"


def test_every_cpu_flag_reaches_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rendered: dict[str, Any] = {}

    def record(checkpoint: Path | None, settings: CpuSettings, output: Path, engine: Path | None = None) -> Path:
        rendered.update(checkpoint=checkpoint, settings=settings, engine=engine)
        return output

    monkeypatch.setattr(serve_cpu, "render_cpu", record)
    args: list[str] = []
    expected = {}
    for f in flag_fields(CpuSettings):
        expected[f.name] = value = other_value(f.default)
        if isinstance(value, bool):
            args.append(dashed(f.name) if value else "--no-" + dashed(f.name)[2:])
        else:
            args += [dashed(f.name), str(value)]
    engine = tmp_path / "engine"
    result = runner.invoke(cli.app, ["--render", str(tmp_path / "repo"), "--engine", str(engine), *args])
    assert result.exit_code == 0, result.output
    assert rendered == {"checkpoint": None, "settings": replace(CpuSettings(), **expected), "engine": engine}


def _without_front_door(launch: Any, opts: ServerOptions, run_dir: Path | None, ready_timeout: float) -> tuple:
    """`cli.start_serving` with the profile's start recorded and no processes (the front door's own start is
    tested in tests/front_door and by the launcher tests)."""
    return launch.start(opts, run_dir, ready_timeout), None


def test_the_front_door_flags_reach_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENTALLAMA_API_KEYS", "k1,k2")
    endpoints = cli.Endpoints(max_in_flight=9, max_in_flight_per_client=3, max_request_bytes=4096)
    opts = cli.server_options(endpoints, cli.Security())
    assert opts.front_door and opts.api_keys == ("k1", "k2")
    assert opts.front_door_limits == {"max_in_flight": 9, "max_in_flight_per_client": 3, "max_request_bytes": 4096}
    with pytest.raises(LaunchError, match="drop --direct"):
        cli.server_options(cli.Endpoints(direct=True), cli.Security())
    monkeypatch.delenv("MENTALLAMA_API_KEYS")
    assert not cli.server_options(cli.Endpoints(direct=True), cli.Security()).front_door
    with pytest.raises(LaunchError, match="must be positive"):
        cli.server_options(cli.Endpoints(max_in_flight=0), cli.Security())


def test_endpoint_and_security_flags_reach_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started: dict[str, Any] = {}
    monkeypatch.setattr(serve_cpu, "start_cpu_server", lambda *args: started.setdefault("args", args))
    monkeypatch.setattr(cli, "start_serving", _without_front_door)
    monkeypatch.setattr(cli, "_serve", lambda server, front, profile, opts, demo, model: started.update(opts=opts))
    key = tmp_path / "admin"
    key.write_text("s3cret\n")
    argv = ["--host", "0.0.0.0", "--grpc-port", "9001", "--http-port", "9000", "--metrics-port", "9002", "--no-http",
            "--shm-pool-mib", "32", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem",
            "--admin-key-file", str(key), "--plaintext-http", "--checkpoint", "tiny",
            "--run-dir", str(tmp_path)]  # fmt: skip
    result = runner.invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    opts: ServerOptions = started["opts"]
    assert (opts.host, opts.grpc_port, opts.http_port, opts.metrics_port, opts.http) == ("0.0.0.0", 9001, 9000, 9002,
                                                                                         False)  # fmt: skip
    assert (opts.shm_pool_mib, opts.tls_cert, opts.tls_key, opts.tls_ca) == (32, Path("c.pem"), Path("k.pem"),
                                                                               Path("ca.pem"))  # fmt: skip
    assert (opts.admin_key, opts.plaintext_http) == ("s3cret", True)
    assert started["args"][0] == "tiny" and started["args"][2] is opts and started["args"][3] == tmp_path


def test_trtllm_flags_reach_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started: dict[str, Any] = {}

    def record(profile, opts, run_dir, *, tritonserver, ready_timeout_s):  # noqa: ANN001 - a recorder
        started.update(profile=profile, run_dir=run_dir, tritonserver=tritonserver, ready_timeout_s=ready_timeout_s)

    monkeypatch.setattr(serve_trtllm, "start_trtllm_server", record)
    monkeypatch.setattr(cli, "start_serving", _without_front_door)
    monkeypatch.setattr(cli, "_serve", lambda *args: None)
    argv = ["--profile", "trtllm", "--engine", "e", "--tokenizer", "t", "--set", "preprocessing_instances=3",
            "--tritonserver", "/x/tritonserver", "--run-dir", str(tmp_path), "--ready-timeout", "7"]  # fmt: skip
    result = runner.invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    profile = started.pop("profile")
    assert (profile.engine_dir, profile.tokenizer_dir, profile.preprocessing_instances) == ("e", "t", 3)
    assert started == {"run_dir": tmp_path, "tritonserver": "/x/tritonserver", "ready_timeout_s": 7.0}


@pytest.mark.parametrize(("profile", "expected"), [("cpu", 300.0), ("trtllm", 1800.0)])
def test_ready_timeout_defaults_per_profile(profile: str, expected: float, monkeypatch: pytest.MonkeyPatch):
    """Loading a 13B engine onto GPUs takes longer than the CPU profile's first engine build (issue 21)."""
    waited: list[float] = []
    monkeypatch.setattr(cli, "start_serving", lambda launch, opts, run_dir, timeout: waited.append(timeout) or (1, 2))
    monkeypatch.setattr(cli, "_serve", lambda *args: None)
    args = ["--engine", "e", "--tokenizer", "t"] if profile == "trtllm" else []
    result = runner.invoke(cli.app, ["--profile", profile, *args])
    assert result.exit_code == 0, result.output
    assert waited == [expected]
    help_text = " ".join(runner.invoke(cli.app, ["--help"]).output.split())  # wrapped to the terminal
    assert "1800 for trtllm" in help_text


def test_a_bad_profile_or_setting_is_a_launch_error():
    assert runner.invoke(cli.app, ["--profile", "gpu", "--render", "x"]).exit_code == 1
    bad = runner.invoke(cli.app, ["--profile", "trtllm", "--set", "no_such_setting=1", "--render", "x"])
    assert bad.exit_code == 1 and "no_such_setting" in bad.output


def help_sections(text: str) -> dict[str, list[str]]:
    """Section title -> the flags listed under it, from click's plain help."""
    sections: dict[str, list[str]] = {}
    title = None
    for line in text.splitlines():
        if re.fullmatch(r"\S.*:", line):
            title = line[:-1]
            sections[title] = []
        elif title and line.startswith("  -"):
            sections[title] += re.findall(r"(?:^|[ ,/]\s*)(--?[\w-]+)", line.split("  ", 2)[1])
    return sections


def test_help_groups_the_flags_by_purpose():
    result = runner.invoke(cli.app, ["-h"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    sections = help_sections(result.stdout)
    assert list(sections) == ["Options", "Server and endpoints", "Security", "CPU profile (--profile cpu)",
                              "TensorRT-LLM profile (--profile trtllm)"]  # fmt: skip
    expected = {
        "Server and endpoints": cli.Endpoints,
        "Security": cli.Security,
        "CPU profile (--profile cpu)": CpuSettings,
        "TensorRT-LLM profile (--profile trtllm)": TrtllmOptions,
    }
    for title, cls in expected.items():
        flags = {OPTIONS[f.name].opts[0] for f in flag_fields(cls)}
        assert flags <= set(sections[title]), title
    assert {"--profile", "--checkpoint", "--engine", "--render", "--help"} <= set(sections["Options"])


def test_profile_specific_flags_say_which_profile():
    for cls, prefix in ((CpuSettings, "cpu: "), (TrtllmOptions, "trtllm: ")):
        for f in flag_fields(cls):
            assert OPTIONS[f.name].help.startswith(prefix), f.name
