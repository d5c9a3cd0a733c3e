"""Start, watch and stop a tritonserver process with hard deadlines.

The Python-backend stub can hang in shutdown while a request is stuck, so stopping escalates:
SIGTERM (Triton drains for `exit_timeout_s`), then SIGKILL of the whole process group (server and
stubs) once the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mentallama_server.front_door.config import read_admin_key as admin_key_of
from mentallama_server.launch.paths import TritonInstall
from mentallama_server.launch.stall_watch import StallWatch, read_progress


class LaunchError(RuntimeError):
    pass


# A stub stopped this long is a health problem (issue 15, finding 4): Triton 2.51 answers its requests with
# "stub process is not healthy" after 1 s but keeps /v2/health/ready at 200, and a stub resumed after that
# segfaulted (tritonserver then aborted on the next request). The launcher stops the server instead, so that
# readiness fails and a supervisor starts a clean one.
STOPPED_STUB_GRACE_S = 1.0
STALL_READ_INTERVAL_S = 5.0  # how often the launcher reads the server's progress (its metrics page)


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    http: bool = True
    exit_timeout_s: int = 10
    log_verbose: int = 0
    tls_cert: Path | None = None
    """PEM server certificate: gRPC over TLS."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """PEM CA that client certificates must chain to: mutual TLS."""
    admin_key: str | None = None
    """Value of the `admin-key` header that admin APIs require (repository, shared memory, stats, ...). None
    (the default) closes them: see `admin_args`."""
    plaintext_http: bool = False
    """Serve HTTP (which has no TLS here) next to gRPC over TLS; refused unless set."""
    extra_args: tuple[str, ...] = ()
    shm_prefix: str = field(default_factory=lambda: f"mentallama_{uuid.uuid4().hex[:12]}_")
    """Name prefix of this server's Python-backend shared-memory regions, removed after it stops."""
    shm_pool_mib: int = 16
    """Initial size (and growth step) of each Python-backend model instance's shared-memory pool. Triton
    2.51's stub grows a full pool by replacing the allocator other threads are using, a crash hazard for the
    multi-threaded `mentallama` front model (docs/RELIABILITY.md); a pool that starts large enough never has
    to grow (the front model's grew to 3 MiB under 32 concurrent streams). The pool is allocated whole:
    4 instances x 16 MiB of /dev/shm per CPU server."""
    stall_timeout_s: float = 60.0
    """A model with requests waiting and none executed for this long makes the server unhealthy (see
    `stall_watch`); 0 turns the check off."""
    front_door: bool = True
    """Serve the public ports through the front door (`mentallama_server.front_door`), tritonserver on loopback
    ports of its own. False (`--direct`): tritonserver on the public ports, unsafe for untrusted clients."""
    api_keys: tuple[str, ...] = ()
    """API keys the front door accepts; none: no authentication."""
    front_door_limits: dict[str, int] = field(default_factory=dict)
    """`FrontDoorConfig` limits given as flags (max_in_flight, max_in_flight_per_client, max_request_bytes)."""
    metrics_host: str | None = None
    """Address of the metrics page; None: `host`."""

    @classmethod
    def on_free_ports(cls, host: str = "127.0.0.1", **changes: Any) -> ServerOptions:
        """Options whose gRPC, HTTP and metrics ports are three distinct free ports of `host`."""
        grpc_port, http_port, metrics_port = free_ports(3, host)
        return cls(host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, **changes)

    @property
    def grpc_url(self) -> str:
        """host:port, as gRPC clients take it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        host = self.metrics_host or self.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.metrics_port}/metrics"


SHM_DIR = Path("/dev/shm")
# tritonserver and its stubs create files (the Python backend's /dev/shm regions: every tensor passing
# between tritonserver and a Python model, i.e. the posts) for the server's user only.
PRIVATE_UMASK = 0o077


def open_private_log(path: Path):
    """A log for appending, readable by the server's user only: logs name request ids and model errors."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.chmod(path, 0o600)  # an existing log keeps its old mode otherwise
    return os.fdopen(fd, "ab")


def make_shm_regions_private(prefix: str) -> list[Path]:
    """chmod 0600 this server's /dev/shm regions that another user could open; returns those changed.
    Boost.Interprocess, which the Python backend uses, sets a region's mode itself (0644), so the umask
    alone does not keep it private; the launcher tightens each region while the server starts (every 0.5 s)
    and once it is ready. A local user who opened a region in the fraction of a second between its creation
    and the chmod keeps that file handle: no request has passed through it yet, but later ones would."""
    changed = []
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            if region.stat().st_mode & 0o077:
                region.chmod(0o600)
                changed.append(region)
    return changed


def remove_shm_regions(prefix: str) -> None:
    """Unlink the Python-backend regions a killed server leaves in /dev/shm (1 MiB or more each: on a
    shared HPC node or a container with a small /dev/shm they add up until no stub can start)."""
    for region in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a process's log, for an error message ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (connections in TIME_WAIT from a previous server don't count)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago. Held open together while chosen: ports picked one
    at a time can repeat (a run got the same port for gRPC and metrics, and tritonserver refused to start)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def endpoint_args(opts: ServerOptions) -> list[str]:
    """Flags every server of ours gets: loopback by default, no model control, bounded shutdown."""
    return [
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={opts.exit_timeout_s}",
        f"--log-verbose={opts.log_verbose}",
        f"--grpc-address={opts.host}",
        f"--allow-http={'true' if opts.http else 'false'}",
        f"--http-address={opts.host}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        f"--metrics-address={opts.metrics_host or opts.host}",
        *shm_pool_args(opts),
        *tls_args(opts),
        *admin_args(opts),
        *opts.extra_args,
    ]


def shm_pool_args(opts: ServerOptions) -> list[str]:
    if opts.shm_pool_mib < 1:
        raise LaunchError(f"the shared-memory pool needs at least 1 MiB, got {opts.shm_pool_mib}")
    size = opts.shm_pool_mib * 2**20
    return [
        f"--backend-config=python,shm-default-byte-size={size}",
        f"--backend-config=python,shm-growth-byte-size={size}",
    ]


# Triton APIs that change or expose server state; inference, health and metadata stay open.
ADMIN_APIS = "model-repository,model-config,shared-memory,statistics,trace,logging"
ADMIN_HEADER = "admin-key"


def tls_args(opts: ServerOptions) -> list[str]:
    if opts.tls_cert is None and opts.tls_key is None and opts.tls_ca is None:
        return []
    if opts.tls_cert is None or opts.tls_key is None:
        raise LaunchError("TLS needs both --tls-cert and --tls-key")
    if opts.http and not opts.plaintext_http:
        raise LaunchError(
            "--tls-cert protects gRPC only: HTTP would still serve plaintext. Add --no-http, or --plaintext-http "
            "to serve it anyway (e.g. behind a TLS proxy)"
        )
    for path in (opts.tls_cert, opts.tls_key, opts.tls_ca):
        if path is not None and not Path(path).is_file():
            raise LaunchError(f"TLS file {path} does not exist")
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={opts.tls_cert}", f"--grpc-server-key={opts.tls_key}"]
    if opts.tls_ca is not None:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={opts.tls_ca}"]
    return args


def closed_admin_key() -> str:
    """A key for admin APIs that nobody can send: random, and split by a line break, which neither an HTTP
    header nor gRPC metadata can carry. Seeing it in `ps` (Triton takes the key on its command line) is of
    no use. Without it, anyone who reached the gRPC port could register the Python backend's own /dev/shm
    region as a shared-memory region and have outputs written into it: tritonserver aborted
    (docs/RELIABILITY.md, issue 15)."""
    return f"closed-{secrets.token_hex(8)}\n{secrets.token_hex(8)}"


def read_admin_key(path: Path) -> str:
    """The admin key from the first line of a file (`front_door.config.read_admin_key`), as a LaunchError."""
    try:
        return admin_key_of(path)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def admin_args(opts: ServerOptions) -> list[str]:
    """Admin APIs (ADMIN_APIS) need the `admin-key` header: the given key, or none can open them."""
    key = opts.admin_key or closed_admin_key()
    if any(c in key for c in "\r\n\0") and opts.admin_key:
        raise LaunchError("the admin key must be one line of printable characters")
    restriction = f"{ADMIN_APIS}:{ADMIN_HEADER}={key}"
    return [f"--grpc-restricted-protocol={restriction}", f"--http-restricted-api={restriction}"]


def bundled_server(repository: Path, run_dir: Path, opts: ServerOptions) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the tritonserver bundled in the nvidia-pytriton wheel (CPU profile)."""
    install = TritonInstall()
    backend_dir = install.make_backend_dir(Path(run_dir) / "backends")
    argv = [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        f"--grpc-port={opts.grpc_port}",
        f"--http-port={opts.http_port}",
        f"--metrics-port={opts.metrics_port}",
        f"--backend-config=python,shm-region-prefix-name={opts.shm_prefix}",
        *endpoint_args(opts),
    ]
    return argv, install.env()


def check_ports(opts: ServerOptions) -> None:
    ports = (("grpc", opts.grpc_port), ("http", opts.http_port if opts.http else None), ("metrics", opts.metrics_port))
    hosts = {"metrics": opts.metrics_host or opts.host}
    taken = [
        (name, port) for name, port in ports if port is not None and not port_free(hosts.get(name, opts.host), port)
    ]
    if taken:  # all of them at once, not one per attempt
        used = "; ".join(f"{name} port {port} on {opts.host} is already in use" for name, port in taken)
        flags = " / ".join(f"--{name}-port" for name, _ in taken)
        raise LaunchError(f"{used}; pick {'another' if len(taken) == 1 else 'others'} with {flags}")


class TritonProcess:
    """One running tritonserver; use as a context manager or call `stop()`."""

    def __init__(self, argv: list[str], env: dict[str, str], run_dir: Path, opts: ServerOptions) -> None:
        self.opts = opts
        self.run_dir = Path(run_dir)
        self.log_path = self.run_dir / "tritonserver.log"
        check_ports(opts)
        self.args = argv
        self.expected_stubs: dict[int, str] = {}  # recorded once ready: the processes that must stay alive
        self._stopped_since: dict[int, float] = {}
        self._stall_watch = StallWatch(opts.stall_timeout_s)
        self._next_progress_read = 0.0
        self._stalled: list[str] = []
        self._log = open_private_log(self.log_path)
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stop() can kill the stubs with the server
            umask=PRIVATE_UMASK,
        )

    @property
    def ready_url(self) -> str:
        return f"{self.opts.http_url}/v2/health/ready"

    def is_ready(self) -> bool:
        if self.opts.http:
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False
        if self.opts.tls_cert is not None:
            # Without HTTP, and with gRPC behind (mutual) TLS the launcher holds no client certificate:
            # Triton starts its endpoints only after every model loaded (strict readiness, no model control).
            try:
                return "Started GRPCInferenceService" in self.log_path.read_text(errors="replace")
            except OSError:
                return False
        import tritonclient.grpc as grpcclient

        try:
            with grpcclient.InferenceServerClient(self.opts.grpc_url) as client:
                return client.is_server_ready(client_timeout=2)
        except Exception:
            return False

    def stub_pids(self) -> dict[int, str]:
        """Python-backend stub processes of this server, by pid, with the model each one serves."""
        import psutil

        stubs = {}
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:  # killed, not reaped by tritonserver
                    continue
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if cmdline and cmdline[0].endswith("triton_python_backend_stub") and len(cmdline) > 1:
                stubs[child.pid] = Path(cmdline[1]).parent.parent.name
        return stubs

    def health_problem(self) -> str | None:
        """Why this server can no longer serve, or None. Triton 2.51 keeps reporting ready after a
        Python-backend stub died (requests then fail with "stub process is not healthy"), so the
        launcher watches the stubs itself. A dead stub is named first: tritonserver sometimes aborts right
        after one dies, and its exit is then the consequence, not the cause."""
        dead = self.dead_stub_models()
        exited = self.proc.poll()
        if dead:
            then = "" if exited is None else f"; tritonserver then exited with code {exited}"
            return f"the Python-backend process of model(s) {', '.join(dead)} died{then}"
        if exited is not None:
            return f"tritonserver exited with code {exited}"
        stopped = self.stopped_stub_models()
        if stopped:
            return (
                f"the Python-backend process of model(s) {', '.join(stopped)} is stopped (SIGSTOP or a debugger) "
                f"for over {STOPPED_STUB_GRACE_S:g} s: Triton fails its requests while still reporting ready, "
                "and the stub crashes when resumed"
            )
        stalled = self.stalled_models()
        if stalled:
            return (
                f"model(s) {', '.join(stalled)} have had requests waiting and none executed for "
                f"{self.opts.stall_timeout_s:g} s: the server is wedged while it reports ready"
            )
        return None

    def stalled_models(self) -> list[str]:
        """Models that stopped executing their waiting requests (`stall_watch`); read every few seconds."""
        now = time.monotonic()
        if self.opts.stall_timeout_s <= 0 or now < self._next_progress_read:
            return self._stalled
        self._next_progress_read = now + STALL_READ_INTERVAL_S
        progress = read_progress(self.opts.metrics_url)
        if progress is not None:
            self._stalled = self._stall_watch.update(progress, now)
        return self._stalled

    def stopped_stub_models(self) -> list[str]:
        """Models whose stub has been stopped (state T) since at least STOPPED_STUB_GRACE_S ago."""
        import psutil

        now = time.monotonic()
        stopped = set()
        for pid, model in self.expected_stubs.items():
            try:
                is_stopped = psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
            except psutil.NoSuchProcess:
                is_stopped = False
            if not is_stopped:
                self._stopped_since.pop(pid, None)
                continue
            since = self._stopped_since.setdefault(pid, now)
            if now - since >= STOPPED_STUB_GRACE_S:
                stopped.add(model)
        return sorted(stopped)

    def dead_stub_models(self) -> list[str]:
        """Models whose stub, recorded when the server became ready, is gone or a zombie. Checked pid by pid
        (not as children of tritonserver) so that the answer holds after tritonserver itself has died."""
        import psutil

        dead = set()
        for pid, model in self.expected_stubs.items():
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    dead.add(model)
            except psutil.NoSuchProcess:
                dead.add(model)
        return sorted(dead)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(
                    f"tritonserver exited with code {self.proc.returncode}; log {self.log_path}:\n{self.log_tail()}"
                )
            make_shm_regions_private(self.opts.shm_prefix)  # as soon as each appears, long before any request
            if self.is_ready():
                self.expected_stubs = self.stub_pids()
                make_shm_regions_private(self.opts.shm_prefix)
                return
            time.sleep(0.5)
        self.stop()
        raise LaunchError(f"tritonserver not ready after {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, grace_s: float | None = None) -> int:
        """Stop the server; returns its exit code (negative: killed by that signal)."""
        grace = self.opts.exit_timeout_s + 5 if grace_s is None else grace_s
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        self._signal(signal.SIGKILL)  # leftover stubs of a server that exited on its own
        remove_shm_regions(self.opts.shm_prefix)
        self._log.close()
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(
    argv: list[str], env: dict[str, str], run_dir: Path, opts: ServerOptions, ready_timeout_s: float
) -> TritonProcess:
    """Start a server and return it once ready; a server that fails to become ready is stopped."""
    server = TritonProcess(argv, env, run_dir, opts)
    try:
        server.wait_ready(ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server
