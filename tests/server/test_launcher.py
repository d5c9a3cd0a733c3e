"""`mentallama-serve` as a user runs it: fail fast, serve, stop on signals, exit when a model process dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mentallama_server.launch.launcher import free_ports, port_free
from tests.server.triton_io import infer

SERVE = str(Path(sys.executable).parent / "mentallama-serve")


def serve_args(tmp_path: Path, checkpoint: Path, **ports: int) -> list[str]:
    return [
        SERVE,
        "--profile=cpu",
        f"--model={checkpoint}",
        f"--grpc-port={ports['grpc']}",
        f"--http-port={ports['http']}",
        f"--metrics-port={ports['metrics']}",
        f"--run-dir={tmp_path}",
        "--max-output-len=64",
        "--cache-num-blocks=64",
    ]


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill the launcher and the tritonserver it started (its own process group) after a failed test."""
    import psutil

    if proc.poll() is None:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()


def ports() -> dict[str, int]:
    return dict(zip(("grpc", "http", "metrics"), free_ports(3), strict=True))


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} not printed; output:\n{''.join(seen)}")


@contextmanager
def serving(tmp_path: Path, checkpoint: Path) -> Iterator[tuple[subprocess.Popen, dict[str, int], str]]:
    """`mentallama-serve` on free ports, up to its banner: yields the process, its ports and the banner; then kills
    what is left of it and checks that every port is free again."""
    p = ports()
    proc = subprocess.Popen(
        serve_args(tmp_path, checkpoint, **p), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc, p, wait_for_line(proc, "metrics http://")
    finally:
        kill_tree(proc)
    assert all(port_free("127.0.0.1", port) for port in p.values())


def test_taken_port_fails_fast_with_a_clear_message(tmp_path, tiny_checkpoint):
    p = ports()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", p["grpc"]))
        blocker.listen()
        started = time.monotonic()
        out = subprocess.run(serve_args(tmp_path, tiny_checkpoint, **p), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"grpc port {p['grpc']} on 127.0.0.1 is already in use" in out.stderr
    assert time.monotonic() - started < 60


def test_invalid_checkpoint_is_refused_before_starting(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    out = subprocess.run(serve_args(tmp_path, broken, **ports()), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "not servable" in out.stderr and "broken" in out.stderr


def test_render_writes_the_repository_and_exits(tmp_path, tiny_checkpoint):
    out = subprocess.run(
        [*serve_args(tmp_path, tiny_checkpoint, **ports()), f"--render={tmp_path / 'repo'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [
        "ensemble",
        "mentallama",
        "postprocessing",
        "preprocessing",
        "tensorrt_llm",
    ]


@pytest.mark.server
def test_serves_then_stops_on_sigterm(tmp_path, tiny_checkpoint):
    with serving(tmp_path, tiny_checkpoint) as (proc, p, banner):
        assert f"127.0.0.1:{p['grpc']}" in banner
        assert infer(f"127.0.0.1:{p['grpc']}", "mentallama", "Hello", 4).text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


@pytest.mark.server
def test_dead_engine_process_stops_the_server_with_an_error(tmp_path, tiny_checkpoint):
    import psutil

    with serving(tmp_path, tiny_checkpoint) as (proc, p, _):
        stubs = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "tensorrt_llm/1/model.py" in " ".join(c.cmdline())
        ]
        assert len(stubs) == 1
        os.kill(stubs[0].pid, signal.SIGKILL)
        # Requests fail fast (no hang) while the launcher notices and exits.
        result = infer(f"127.0.0.1:{p['grpc']}", "mentallama", "Hello", 4)
        assert result.error is not None
        assert proc.wait(60) == 3
        assert "tensorrt_llm" in proc.stdout.read()


@pytest.mark.server
def test_shared_memory_is_preallocated_and_removed_even_after_a_kill(tmp_path, tiny_checkpoint):
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.launcher import SHM_DIR, ServerOptions
    from mentallama_server.launch.serve_cpu import start_cpu_server

    opts = ServerOptions.on_free_ports()
    settings = CpuSettings(max_output_len=64, cache_num_blocks=64)
    server = start_cpu_server(str(tiny_checkpoint), settings, opts, tmp_path)
    try:
        regions = list(SHM_DIR.glob(f"{opts.shm_prefix}*"))
        assert len(regions) >= 4  # one per Python-backend model instance, named with this server's prefix
        # Allocated whole at start, so the stub never grows (re-maps) it under load.
        assert {region.stat().st_size for region in regions} == {opts.shm_pool_mib * 2**20}
        os.killpg(server.proc.pid, signal.SIGKILL)  # as an OOM kill or the launcher's hard deadline does
        server.proc.wait(30)
        assert all(region.exists() for region in regions)  # nobody left to unlink them...
    finally:
        server.stop()
    assert not list(SHM_DIR.glob(f"{opts.shm_prefix}*"))  # ...but stop() does


@pytest.mark.server
def test_a_dead_stub_is_named_even_when_tritonserver_dies_after_it(tmp_path, tiny_checkpoint):
    # Triton 2.51 sometimes aborts right after a stub dies; the launcher must still report the cause.
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.launcher import ServerOptions
    from mentallama_server.launch.serve_cpu import start_cpu_server

    opts = ServerOptions.on_free_ports()
    server = start_cpu_server(str(tiny_checkpoint), CpuSettings(max_output_len=64, cache_num_blocks=64), opts, tmp_path)
    try:
        assert server.health_problem() is None
        engine = next(pid for pid, model in server.expected_stubs.items() if model == "tensorrt_llm")
        os.kill(engine, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.dead_stub_models() != ["tensorrt_llm"] and time.monotonic() < deadline:
            time.sleep(0.05)  # a killed process takes a moment to become a zombie
        os.kill(server.proc.pid, signal.SIGKILL)  # then tritonserver goes down too, as when it aborts
        server.proc.wait(30)
        problem = server.health_problem()
        assert problem is not None and "tensorrt_llm" in problem and "died" in problem
        assert "tritonserver then exited with code -9" in problem
    finally:
        server.stop()


def test_ports_chosen_together_are_distinct_and_free() -> None:
    from mentallama_server.launch.launcher import ServerOptions

    for _ in range(50):  # one at a time, two of three came out equal in a CI run
        ports = free_ports(3)
        assert len(set(ports)) == 3 and all(port_free("127.0.0.1", p) for p in ports)
    opts = ServerOptions.on_free_ports(exit_timeout_s=3)
    assert len({opts.grpc_port, opts.http_port, opts.metrics_port}) == 3 and opts.exit_timeout_s == 3
