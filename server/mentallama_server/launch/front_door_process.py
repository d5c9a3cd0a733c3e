"""Start, watch and stop the front door (`mentallama_server.front_door`) in front of a started tritonserver.

The launcher gives tritonserver loopback ports of its own (`upstream_options`) and the front door the public
ones; the front door's settings travel in a 0600 file in the run folder, so API keys never appear in `ps`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.launch.launcher import (
    PRIVATE_UMASK,
    LaunchError,
    ServerOptions,
    check_ports,
    free_ports,
    log_tail,
    open_private_log,
)

UPSTREAM_HOST = "127.0.0.1"


def upstream_options(public: ServerOptions) -> ServerOptions:
    """tritonserver's options behind the front door: gRPC and HTTP on free loopback ports, no TLS (the front
    door terminates it); the metrics page stays where it was asked for (Prometheus scrapes it)."""
    grpc_port, http_port = free_ports(2, UPSTREAM_HOST)
    return replace(
        public, host=UPSTREAM_HOST, grpc_port=grpc_port, http_port=http_port, http=True,
        metrics_host=public.metrics_host or public.host, tls_cert=None, tls_key=None, tls_ca=None,
        plaintext_http=False,
    )  # fmt: skip


def _rendered_parameter(run_dir: Path, model: str, key: str) -> str | None:
    """A string parameter of a rendered model's config (one line on the CPU profile, may wrap on trtllm); None
    when the config or the parameter is missing."""
    config = Path(run_dir) / "model_repository" / model / "config.pbtxt"
    pattern = rf'key:\s*"{key}"\s*value:\s*\{{\s*string_value:\s*"([^"]*)"'
    try:
        match = re.search(pattern, config.read_text(encoding="utf-8"))
    except OSError:
        return None
    return match[1] if match else None


def rendered_tokenizer_dir(run_dir: Path) -> str | None:
    """The tokenizer folder the rendered front model was configured with, for the front door's chat template
    (Triton's ModelConfig API, where it also stands, is closed to the front door without an admin key)."""
    return _rendered_parameter(run_dir, "mentallama", "tokenizer_dir") or None


def _engine_parameter(run_dir: Path, key: str) -> int | None:
    """An integer parameter of the rendered engine step's config."""
    value = _rendered_parameter(run_dir, "tensorrt_llm", key)
    return int(value) if value and value.isdigit() else None


def rendered_max_sequences(run_dir: Path) -> int:
    """The front door's cap on beams and sequences per prompt, from what the rendered profile serves: the CPU
    profile's --max-sequences; on TensorRT-LLM the engine's beam width, at least the default (samples are bounded
    by nothing there, beams by the engine, which refuses wider ones itself)."""
    default = FrontDoorConfig.max_sequences
    cpu = _engine_parameter(run_dir, "max_sequences")
    if cpu is not None:
        return max(cpu, 1)
    beams = _engine_parameter(run_dir, "max_beam_width")
    return max(default, beams or 1)


def front_door_config(public: ServerOptions, upstream: ServerOptions, run_dir: Path | None = None) -> FrontDoorConfig:
    config = FrontDoorConfig(
        tokenizer_dir=None if run_dir is None else rendered_tokenizer_dir(run_dir),
        max_sequences=FrontDoorConfig.max_sequences if run_dir is None else rendered_max_sequences(run_dir),
        upstream_grpc=upstream.grpc_url,
        upstream_http=upstream.http_url,
        host=public.host,
        grpc_port=public.grpc_port,
        http_port=public.http_port if public.http else None,
        tls_cert=None if public.tls_cert is None else str(public.tls_cert),
        tls_key=None if public.tls_key is None else str(public.tls_key),
        tls_ca=None if public.tls_ca is None else str(public.tls_ca),
        api_keys=list(public.api_keys),
        admin_key=public.admin_key,
    )
    for name, value in public.front_door_limits.items():
        setattr(config, name, value)
    return config


class FrontDoorProcess:
    """The running front door; `stop()` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, config: FrontDoorConfig, run_dir: Path) -> None:
        self.config = config
        self.log_path = Path(run_dir) / "front_door.log"
        config_path = config.save(Path(run_dir) / "front_door.json")
        self._log = open_private_log(self.log_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mentallama_server.front_door", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )

    @classmethod
    def start(
        cls, public: ServerOptions, upstream: ServerOptions, run_dir: Path, timeout_s: float = 60
    ) -> FrontDoorProcess:
        check_ports(replace(public, metrics_port=None))
        front = cls(front_door_config(public, upstream, run_dir), run_dir)
        try:
            front.wait_ready(timeout_s)
        except BaseException:
            front.stop()
            raise
        return front

    def _listening(self, port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.connect_host, port), timeout=1):
            return True
        return False

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        ports = [self.config.grpc_port] + ([self.config.http_port] if self.config.http_port else [])
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"the front door exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if all(self._listening(port) for port in ports):
                return
            time.sleep(0.2)
        raise LaunchError(f"the front door did not listen within {timeout_s:.0f} s:\n{self.log_tail()}")

    def problem(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"the front door exited with code {code}"

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, grace_s: float = 8) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> FrontDoorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def health_url(front: FrontDoorProcess) -> str | None:
    if not front.config.http_port or front.config.tls:
        return None
    return f"http://{front.connect_host}:{front.config.http_port}/v2/health/live"


def is_live(front: FrontDoorProcess) -> bool:
    url = health_url(front)
    if url is None:
        return front.proc.poll() is None
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own server
            return response.status == 200
    except OSError:
        return False
