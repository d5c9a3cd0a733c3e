"""deploy/ for CPU-only nodes: the Apptainer definition's pins, the Slurm job's plan (replicas, OpenVINO threads,
ports) for several allocations, the engine built once under a lock, and a whole job run outside Slurm.

No Slurm, Apptainer or OpenVINO export here: a stand-in container runtime runs the command after the image
name on the host, where stand-ins for `mentallama-build openvino` (writes an engine folder with a real build
manifest) and `mentallama-serve` (answers Triton's health endpoints on its --http-port) record what they got.
Syntax and ShellCheck of the new scripts are covered by test_deploy_scripts.py, which checks every script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mentallama_build.openvino_build import OpenVinoOptions, cached_engine_dir, verify_engine
from tests.deploy.deploy_support import (
    DEPLOY,
    REPO,
    alive,
    free_base_port,
    port_free,
    script_env,
    stop,
    wait_for,
)
from tests.support.pins import constraint_pins

SBATCH = DEPLOY / "slurm" / "cpu_replicas.sbatch"
BUILD = DEPLOY / "apptainer" / "build_cpu_engine.sh"
RUN_CPU = DEPLOY / "apptainer" / "run_cpu.sh"
DEF = DEPLOY / "apptainer" / "mentallama-cpu.def"


def test_cpu_files_found() -> None:
    for path in (SBATCH, BUILD, RUN_CPU, DEPLOY / "slurm" / "cpu_replica.sh"):
        assert os.access(path, os.X_OK), path
    assert (DEPLOY / "lib" / "cpu.sh").is_file() and DEF.is_file()


# ---- The Apptainer definition ----------------------------------------------------------------------------


def pyproject_pins() -> dict[str, str]:
    return constraint_pins()


def def_sections() -> dict[str, str]:
    sections, name = {"header": ""}, "header"
    for line in DEF.read_text().splitlines(keepends=True):
        if line.startswith("%"):
            name = line.split()[0][1:]
            sections[name] = ""
        else:
            sections[name] += line
    return sections


def test_definition_installs_the_pinned_versions() -> None:
    pins = pyproject_pins()
    post = def_sections()["post"]
    in_def = {m[1].lower(): m[2] for m in re.finditer(r"\b([A-Za-z][A-Za-z0-9_.\-]*)==([0-9][^\s\"']*)", post)}
    in_def |= {m[1].lower(): m[2] for m in re.finditer(r'"([a-z][a-z0-9\-]*)": "([0-9][^"]*)"', post)}
    assert {"nvidia-pytriton", "numpy", "torch", "openvino", "openvino-genai", "openvino-tokenizers"} <= set(in_def)
    assert {name: version for name, version in in_def.items() if pins.get(name) != version} == {}
    assert pins["numpy"].startswith("1.")  # the Triton 2.51 stub is built against numpy 1

    lines = [line.strip() for line in post.splitlines()]
    torch = next(i for i, line in enumerate(lines) if f"torch=={pins['torch']}" in line and "pip install" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch]  # no CUDA wheels
    project = lines.index(
        "python3 -m pip install -c constraints.txt --find-links /tmp/wheels 'mentallama-server[build]'"
    )
    wheels = lines.index("python3 -m pip wheel --no-deps --wheel-dir /tmp/wheels ./client ./engine_build ./server")
    assert torch < wheels < project
    uninstall = lines.index("python3 -m pip uninstall --yes torchvision")
    assert torch < project < uninstall
    assert 'get_config_var("Py_ENABLE_SHARED")' in post  # shared libpython for the Python-backend stub


def test_definition_base_and_files() -> None:
    sections = def_sections()
    header = dict(line.split(":", 1) for line in sections["header"].splitlines() if line and line[0] != "#")
    assert header["Bootstrap"].strip() == "docker"
    image = header["From"].strip()
    match = re.fullmatch(r"python:3\.(\d+)-slim-bookworm", image)  # Debian 12: glibc 2.36 >= 2.35
    assert match, image
    server = (REPO / "server" / "pyproject.toml").read_text()
    low, high = re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"', server).groups()
    assert int(low) <= int(match[1]) < int(high)
    assert "--nv" not in DEF.read_text() and "nvcr.io" not in DEF.read_text()

    copied = {line.split()[0] for line in sections["files"].splitlines() if line.strip()}
    # The parts the image installs as wheels, and the templates the server's wheel carries.
    assert {"constraints.txt", "client", "server", "engine_build", "model_repository"} <= copied
    assert all((REPO / path).exists() for path in copied)


# ---- The job's plan (dry runs) -----------------------------------------------------------------------------


def dry_run(**env: str) -> dict:
    result = subprocess.run(
        ["bash", str(SBATCH), "--dry-run", "--", "--cache-num-blocks", "1024"],
        capture_output=True, text=True, timeout=60, env=script_env(**env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out: dict = {"replicas": [], "serve": {}}
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "plan":
            out["plan"] = dict(item.split("=") for item in rest.split())
        elif kind == "replica":
            out["replicas"].append({k: int(v) if v.isdigit() else v for k, v in (i.split("=") for i in rest.split())})
        elif kind == "serve":
            local, _, command = rest.partition(" ")
            out["serve"][int(local.split("=")[1])] = shlex.split(command)
        elif kind in ("launch", "build"):
            out[kind] = shlex.split(rest)
        elif kind == "engine":
            out["engine"] = rest
    return out


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


SLURM_CASES = {
    # name: (environment, replicas per node, CPUs per replica, threads)
    "4 tasks x 16 cpus": (
        {"SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "16", "SLURM_CPUS_ON_NODE": "64"},
        [4], 16, 16,
    ),
    "5 tasks on 2 nodes": (
        {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "5", "SLURM_TASKS_PER_NODE": "3,2", "SLURM_CPUS_PER_TASK": "8"},
        [3, 2], 8, 8,
    ),
    "no --cpus-per-task: the node's cpus split": (
        {"SLURM_JOB_NUM_NODES": "3", "SLURM_NTASKS": "6", "SLURM_TASKS_PER_NODE": "2(x3)", "SLURM_CPUS_ON_NODE": "48"},
        [2, 2, 2], 24, 24,
    ),
    "NUM_REPLICAS splits one big task": (
        {"NUM_REPLICAS": "3", "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "48",
         "SLURM_CPUS_ON_NODE": "48"},
        [3], 16, 16,
    ),
    "OV_THREADS overrides": (
        {"OV_THREADS": "12", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "16"},
        [2], 16, 12,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", SLURM_CASES, ids=list(SLURM_CASES))
def test_plan_derives_replicas_threads_and_ports_from_the_allocation(case: str) -> None:
    env, per_node, cpus, threads = SLURM_CASES[case]
    out = dry_run(SLURM_JOB_ID="4242", ENGINE_DIR="/shared/engines/7b-int8", **env)
    assert out["plan"] == {
        "replicas": str(sum(per_node)), "nodes": str(len(per_node)), "per_node": ",".join(map(str, per_node)),
        "cpus_per_replica": str(cpus), "threads": str(threads),
    }  # fmt: skip
    expected = [(node, local) for node, count in enumerate(per_node) for local in range(count)]
    assert [(r["node"], r["local"]) for r in out["replicas"]] == expected
    for r in out["replicas"]:
        assert (r["http"], r["grpc"], r["metrics"]) == (8000 + 10 * r["local"], 8001 + 10 * r["local"],
                                                        8002 + 10 * r["local"])  # fmt: skip
        assert r["threads"] == threads
    # One srun task per replica with the replica's CPUs, bound to cores; fail-fast across nodes.
    launch = out["launch"]
    assert launch[0] == "srun" and "--kill-on-bad-exit=1" in launch and "--cpu-bind=cores" in launch
    assert {f"--nodes={len(per_node)}", f"--ntasks={sum(per_node)}", f"--cpus-per-task={cpus}"} <= set(launch)
    assert launch[-3:] == [str(DEPLOY / "slurm" / "cpu_replica.sh"), "--cache-num-blocks", "1024"]
    # What each replica of the first node runs: the CPU image, mentallama-serve with the derived values.
    assert sorted(out["serve"]) == list(range(per_node[0]))
    for local, argv in out["serve"].items():
        assert argv[:3] == ["apptainer", "exec", "--cleanenv"] and "--nv" not in argv
        server = argv[argv.index("mentallama-serve") :]
        assert server[:5] == ["mentallama-serve", "--profile", "cpu", "--engine", "/shared/engines/7b-int8"]
        assert flag(server, "--num-threads") == str(threads)
        assert flag(server, "--http-port") == str(8000 + 10 * local)
        assert flag(server, "--grpc-port") == str(8001 + 10 * local)
        assert flag(server, "--metrics-port") == str(8002 + 10 * local)
        assert flag(server, "--host") == "0.0.0.0" and server[-2:] == ["--cache-num-blocks", "1024"]
        run_dir = flag(server, "--run-dir")
        assert run_dir.startswith(f"{REPO}/artifacts/runs/slurm-4242/") and f"{run_dir}:{run_dir}" in argv


def test_launch_leaves_binding_to_an_inherited_hint() -> None:
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "4",
           "ENGINE_DIR": "/e"}  # fmt: skip
    hinted = dry_run(SLURM_HINT="nomultithread", **env)["launch"]  # srun refuses --hint with --cpu-bind
    assert not any(a.startswith("--cpu-bind") for a in hinted) and "--cpus-per-task=4" in hinted
    assert "--cpu-bind=sockets" in dry_run(SLURM_HINT="nomultithread", ML_CPU_BIND="sockets", **env)["launch"]


def test_plan_port_bases_and_stride() -> None:
    out = dry_run(
        SLURM_JOB_ID="1", SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="2", SLURM_CPUS_PER_TASK="4", ENGINE_DIR="/e",
        BASE_HTTP_PORT="9000", BASE_GRPC_PORT="9100", BASE_METRICS_PORT="9200", PORT_STRIDE="3",
    )  # fmt: skip
    assert [(r["http"], r["grpc"], r["metrics"]) for r in out["replicas"]] == [(9000, 9100, 9200), (9003, 9103, 9203)]


def test_plan_outside_slurm_pins_replicas_to_disjoint_cpus() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    single = dry_run(ENGINE_DIR="/e")
    assert single["plan"]["replicas"] == "1" and single["plan"]["threads"] == str(len(allowed))
    assert "launch" not in single and "cpus" not in single["replicas"][0]
    if len(allowed) < 2 or shutil.which("taskset") is None:
        pytest.skip("needs 2 CPUs and taskset")
    out = dry_run(ENGINE_DIR="/e", NUM_REPLICAS="2", SLURM_CPUS_ON_NODE="2")
    assert [str(r["cpus"]) for r in out["replicas"]] == [str(allowed[0]), str(allowed[1])]
    for local in (0, 1):
        assert out["serve"][local][:3] == ["taskset", "-c", str(allowed[local])]
        assert flag(out["serve"][local], "--num-threads") == "1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set CHECKPOINT"),
        ({"ENGINE_DIR": "/e", "NUM_REPLICAS": "4", "SLURM_CPUS_ON_NODE": "2"}, "fewer replicas"),
        ({"ENGINE_DIR": "/e", "NUM_REPLICAS": "0"}, "NUM_REPLICAS must be >= 1"),
        ({"ENGINE_DIR": "/e", "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "1(x2)"}, "need srun"),
        ({"ENGINE_DIR": "/e", "OV_THREADS": "many"}, "OV_THREADS must be a number"),
        ({"CHECKPOINT": "/no/such/checkpoint"}, "no checkpoint folder"),
    ],
)
def test_plan_refuses_what_cannot_run(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(SBATCH), "--dry-run"], capture_output=True, text=True, timeout=60, env=script_env(**env)
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("env", "options", "flags"),
    [
        ({}, OpenVinoOptions("int8"), ["--weight-format", "int8"]),
        ({"WEIGHT_FORMAT": "int4", "GROUP_SIZE": "64", "RATIO": "0.8"}, OpenVinoOptions("int4", 64, 0.8),
         ["--weight-format", "int4", "--group-size", "64", "--ratio", "0.8"]),
    ],
)  # fmt: skip
def test_dry_run_names_the_engine_as_ensure_engine_does(
    tiny_checkpoint: Path, tmp_path: Path, env: dict[str, str], options: OpenVinoOptions, flags: list[str]
) -> None:
    out = dry_run(CHECKPOINT=str(tiny_checkpoint), ENGINE_ROOT=str(tmp_path / "engines"), **env)
    engine = tmp_path / "engines" / cached_engine_dir(tiny_checkpoint, options).name
    assert out["engine"] == str(engine)
    build = out["build"]
    checkpoint = str(tiny_checkpoint.resolve())
    assert build[build.index("mentallama-build") :] == [
        "mentallama-build", "openvino", "--checkpoint", checkpoint, "--output", str(engine), *flags,
    ]  # fmt: skip
    assert f"{checkpoint}:{checkpoint}" in build and f"{tmp_path}/engines:{tmp_path}/engines" in build
    server = out["serve"][0]
    assert flag(server, "--engine") == str(engine) and flag(server, "--model") == checkpoint
    assert not (tmp_path / "engines").exists()  # a dry run writes nothing


def test_job_commands_parse_with_the_real_clis(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The build and serve argv the job prints are accepted, value for value, by mentallama-build and -serve."""
    import typer.main

    from mentallama_build import cli as build_cli
    from mentallama_server.launch import cli as serve_cli

    out = dry_run(
        CHECKPOINT=str(tiny_checkpoint), ENGINE_ROOT=str(tmp_path), WEIGHT_FORMAT="int4", GROUP_SIZE="64",
        SLURM_JOB_ID="7", SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="2", SLURM_CPUS_PER_TASK="6",
    )  # fmt: skip
    group = typer.main.get_command(build_cli.app)
    build_args = out["build"][out["build"].index("mentallama-build") + 1 :]
    build = group.get_command(group.make_context("mentallama-build", ["--help"], resilient_parsing=True), "openvino")
    params = build.make_context("openvino", build_args[1:]).params
    assert (params["weight_format"], params["group_size"], params["ratio"]) == ("int4", 64, None)
    assert str(params["output"]) == out["engine"] and not params["dry_run"]

    serve = typer.main.get_command(serve_cli.app)
    for local, argv in out["serve"].items():
        params = serve.make_context("mentallama-serve", argv[argv.index("mentallama-serve") + 1 :]).params
        assert params["profile"] == "cpu" and params["num_threads"] == 6 and params["cache_num_blocks"] == 1024
        assert str(params["engine"]) == out["engine"] and params["http_port"] == 8000 + 10 * local


def test_build_refuses_bad_options(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BUILD), "--checkpoint", str(tiny_checkpoint), "--engine-root", str(tmp_path), "--weight-format", "int3",
         "--dry-run"],
        capture_output=True, text=True, timeout=60, env=script_env(),
    )  # fmt: skip
    assert result.returncode == 1 and "--weight-format must be one of" in result.stderr


def test_run_cpu_dry_run(tmp_path: Path) -> None:
    result = subprocess.run(  # relative paths (from tmp_path) become absolute binds
        [str(RUN_CPU), "--engine", "engine", "--checkpoint", "ckpt", "--threads", "8", "--http-port", "9000",
         "--grpc-port", "9001", "--metrics-port", "9002", "--run-dir", "run", "--bind", "/keys", "--image", "cpu.sif",
         "--dry-run", "--", "--admin-key-file", "/keys/admin"],
        capture_output=True, text=True, timeout=60, env=script_env(ML_CONTAINER_RUNTIME="singularity"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    image_at = argv.index("cpu.sif")
    assert argv[:3] == ["singularity", "exec", "--cleanenv"] and "--nv" not in argv
    for folder in (f"{tmp_path}/engine", f"{tmp_path}/ckpt", f"{tmp_path}/run", "/keys"):
        assert f"{folder}:{folder}" in argv[:image_at]
    assert argv[image_at + 1 :] == [
        "mentallama-serve", "--profile", "cpu", "--engine", f"{tmp_path}/engine", "--model", f"{tmp_path}/ckpt",
        "--num-threads", "8", "--host", "127.0.0.1", "--http-port", "9000", "--grpc-port", "9001",
        "--metrics-port", "9002", "--run-dir", f"{tmp_path}/run", "--ready-timeout", "1800",
        "--admin-key-file", "/keys/admin",
    ]  # fmt: skip
    assert not (tmp_path / "run").exists()


# ---- Stand-ins for the image's commands --------------------------------------------------------------------

FAKE_BUILD = """#!{python}
# Stand-in for `mentallama-build openvino`: a small engine folder with a real build manifest, written as the
# real build does (a temporary folder renamed into place), after FAKE_BUILD_SLEEP seconds.
import os, shutil, sys, time
from pathlib import Path
from mentallama_build.openvino_build import OpenVinoOptions, _shape, _write_manifest
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
checkpoint, output = Path(args["--checkpoint"]), Path(args["--output"])
with open(os.environ["FAKE_RECORD"] + "/builds", "a") as f:
    f.write(f"{{os.getpid()}} {{output}}\\n")
time.sleep(float(os.environ.get("FAKE_BUILD_SLEEP", "1")))
work = output.parent / f".{{output.name}}.building.{{os.getpid()}}"
work.mkdir(parents=True)
(work / "openvino_model.xml").write_text("<net/>")
(work / "openvino_model.bin").write_bytes(bytes(64))
for name in ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
    if (checkpoint / name).is_file():
        shutil.copy(checkpoint / name, work / name)
options = OpenVinoOptions(args["--weight-format"])
_write_manifest(work, checkpoint, options, _shape(checkpoint))
os.rename(work, output)
"""

FAKE_SERVE = """#!{python}
# Stand-in for `mentallama-serve --profile cpu`: answers Triton's health endpoints on --http-port (loopback),
# records its argv, PID and CPU affinity; exits on SIGTERM.
import http.server, json, os, signal, sys
argv = sys.argv[1:]
port = int(argv[argv.index("--http-port") + 1])
with open(os.path.join(os.environ["FAKE_RECORD"], f"serve-{{port}}.json"), "w") as f:
    json.dump({{"argv": argv, "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0))}}, f)
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
def fake_image(tmp_path: Path) -> dict[str, str]:
    """Environment under which the scripts' container runs the image's command on the host, with stand-ins."""
    record, bin_dir = tmp_path / "record", tmp_path / "bin"
    record.mkdir()
    bin_dir.mkdir()
    runtime = bin_dir / "fake-apptainer"
    # `apptainer exec <options> IMAGE argv...`: skip everything up to the image, run the argv after it.
    runtime.write_text(
        '#!/usr/bin/env bash\nwhile [[ $# -gt 0 && $1 != "$FAKE_IMAGE" ]]; do shift; done\nshift\nexec "$@"\n'
    )
    (bin_dir / "mentallama-build").write_text(FAKE_BUILD.format(python=sys.executable))
    (bin_dir / "mentallama-serve").write_text(FAKE_SERVE.format(python=sys.executable))
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    env = script_env(ML_CONTAINER_RUNTIME=str(runtime), ML_IMAGE="fake.sif", FAKE_IMAGE="fake.sif",
                     FAKE_RECORD=str(record), PYTHONPATH=str(REPO / "src"))  # fmt: skip
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def builds(env: dict[str, str]) -> list[str]:
    path = Path(env["FAKE_RECORD"]) / "builds"
    return path.read_text().splitlines() if path.exists() else []


def start_build(env: dict[str, str], checkpoint: Path, root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BUILD), "--checkpoint", str(checkpoint), "--engine-root", str(root), "--weight-format", "int8", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_engine_is_built_once_for_concurrent_jobs_and_reused(
    tiny_checkpoint: Path, tmp_path: Path, fake_image: dict[str, str]
) -> None:
    root = tmp_path / "engines"
    engine = root / cached_engine_dir(tiny_checkpoint, OpenVinoOptions("int8")).name
    procs = [start_build(fake_image, tiny_checkpoint, root) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            stop(p)
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.splitlines()[-1] == str(engine)
    assert len(builds(fake_image)) == 1  # the second builder waited on the lock, then reused the engine
    assert any("built while this job waited" in err for _, err in outputs)
    assert verify_engine(engine, tiny_checkpoint) == []
    assert sorted(p.name for p in root.iterdir()) == [engine.name]  # lock released, no leftovers

    again = start_build(fake_image, tiny_checkpoint, root)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and out.strip() == str(engine) and "reusing the engine" in err
    assert len(builds(fake_image)) == 1


def test_stale_lock_is_broken_and_a_live_one_waited_for(
    tiny_checkpoint: Path, tmp_path: Path, fake_image: dict[str, str]
) -> None:
    root = tmp_path / "engines"
    lock = root / f".{cached_engine_dir(tiny_checkpoint, OpenVinoOptions('int8')).name}.lock"
    lock.mkdir(parents=True)
    host = socket.gethostname()
    (lock / "owner").write_text(f"{host} {os.getpid()} -\n")  # alive: this test
    waiting = start_build(fake_image, tiny_checkpoint, root, "--lock-timeout", "1")
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1 and "waited 1s" in err and f"remove {lock}" in err
    assert (lock / "owner").read_text() == f"{host} {os.getpid()} -\n" and builds(fake_image) == []

    dead = subprocess.Popen(["true"])
    dead.wait()
    (lock / "owner").write_text(f"{host} {dead.pid} -\n")
    breaking = start_build(fake_image, tiny_checkpoint, root)
    _, err = breaking.communicate(timeout=120)
    assert breaking.returncode == 0, err
    assert "removing the stale build lock" in err and len(builds(fake_image)) == 1 and not lock.exists()


def test_sigterm_during_the_build_stops_it_and_releases_the_lock(
    tiny_checkpoint: Path, tmp_path: Path, fake_image: dict[str, str]
) -> None:
    root = tmp_path / "engines"
    proc = start_build({**fake_image, "FAKE_BUILD_SLEEP": "60", "ML_STOP_GRACE_S": "2"}, tiny_checkpoint, root)
    try:
        wait_for(lambda: len(builds(fake_image)) == 1, timeout=60)
        build_pid = int(builds(fake_image)[0].split()[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        wait_for(lambda: not alive(build_pid), timeout=10)
        assert [p.name for p in root.iterdir()] == []  # no lock, no engine
    finally:
        stop(proc)


# ---- A whole job outside Slurm -----------------------------------------------------------------------------


def test_job_builds_then_serves_replicas_and_tears_down(
    tiny_checkpoint: Path, tmp_path: Path, fake_image: dict[str, str]
) -> None:
    base = free_base_port(stride=10, count=2)
    run_dir, root = tmp_path / "run", tmp_path / "engines"
    env = {
        **fake_image, "CHECKPOINT": str(tiny_checkpoint), "ENGINE_ROOT": str(root), "NUM_REPLICAS": "2",
        "SLURM_CPUS_ON_NODE": "2", "SERVE_HOST": "127.0.0.1", "RUN_DIR": str(run_dir), "READY_TIMEOUT_S": "60",
        "BASE_HTTP_PORT": str(base), "BASE_GRPC_PORT": str(base + 1), "BASE_METRICS_PORT": str(base + 2),
    }  # fmt: skip
    proc = subprocess.Popen(["bash", str(SBATCH)], env=env, stderr=subprocess.PIPE, text=True)
    endpoints = run_dir / "endpoints.d"
    host = socket.gethostname()
    try:
        wait_for(lambda: endpoints.exists() and len(list(endpoints.iterdir())) == 2, timeout=120)
        assert (endpoints / f"{host}-replica1").read_text() == (
            f"{host} http={base + 10} grpc={base + 11} metrics={base + 12}\n"
        )
        engine = root / cached_engine_dir(tiny_checkpoint, OpenVinoOptions("int8")).name
        assert len(builds(fake_image)) == 1 and verify_engine(engine, tiny_checkpoint) == []
        record = Path(fake_image["FAKE_RECORD"])
        servers = [json.loads((record / f"serve-{base + 10 * i}.json").read_text()) for i in (0, 1)]
        for i, server in enumerate(servers):
            argv = server["argv"]
            assert flag(argv, "--engine") == str(engine) and flag(argv, "--model") == str(tiny_checkpoint.resolve())
            assert flag(argv, "--num-threads") == "1" and flag(argv, "--grpc-port") == str(base + 10 * i + 1)
        if len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset"):
            assert len(servers[0]["cpus"]) == len(servers[1]["cpus"]) == 1
            assert servers[0]["cpus"] != servers[1]["cpus"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        assert list(endpoints.iterdir()) == []
        wait_for(lambda: not any(alive(s["pid"]) for s in servers), timeout=20)
        assert port_free(base) and port_free(base + 10)
    finally:
        stop(proc)
