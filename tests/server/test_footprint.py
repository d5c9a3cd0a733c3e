"""What the CPU profile's processes load: no torch or transformers in tritonserver or its Python stubs
(serving tokenises with `tokenizers` and generates with OpenVINO), and their memory stays small."""

from __future__ import annotations

from pathlib import Path

import psutil

# Measured here on `tiny`: ~0.45 GB for tritonserver plus its four stubs (the transformers engine took ~1.5 GB).
RSS_BOUND_BYTES = 600 * 2**20
# The front door (grpcio, FastAPI, uvicorn): ~85 MiB after a 10-minute storm of 37,000 cancelled streams.
FRONT_DOOR_RSS_BOUND_BYTES = 150 * 2**20


def server_processes(run_dir: Path) -> list[psutil.Process]:
    """tritonserver and the Python-backend stubs serving the repository rendered in `run_dir`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(run_dir) in arg for arg in cmdline):
            found.append(proc)
    return found


def _is_front_door(proc: psutil.Process) -> bool:
    return "mentallama_server.front_door" in " ".join(proc.cmdline())


def test_serving_processes_load_no_torch_and_stay_small(cpu_server) -> None:
    found = server_processes(cpu_server.run_dir)
    front_doors = [p for p in found if _is_front_door(p)]
    processes = [p for p in found if not _is_front_door(p)]
    # The front door has its own budget, below: a separate process with its own job (none with --direct).
    assert len(front_doors) == (0 if cpu_server.front_door_log is None else 1)
    names = [Path(p.cmdline()[0]).name for p in processes]
    assert names.count("tritonserver") == 1
    assert names.count("triton_python_backend_stub") == 4, names  # mentallama, pre/post, engine step
    for proc in processes:
        libraries = {m.path for m in proc.memory_maps()}
        heavy = sorted(p for p in libraries if "/torch/" in p or "libtorch" in p or "/transformers/" in p)
        assert heavy == [], f"{proc.cmdline()[:2]} maps {heavy[:3]}"
    total = sum(p.memory_info().rss for p in processes)
    assert total < RSS_BOUND_BYTES, f"{total / 2**20:.0f} MiB"
    for front_door in front_doors:
        libraries = {m.path for m in front_door.memory_maps()}
        assert not any("/torch/" in p or "libtorch" in p or "openvino" in p for p in libraries)
        rss = front_door.memory_info().rss
        assert rss < FRONT_DOOR_RSS_BOUND_BYTES, f"front door {rss / 2**20:.0f} MiB"
