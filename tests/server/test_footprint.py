"""What the CPU profile's processes load: no torch or transformers in tritonserver or its Python stubs
(serving tokenises with `tokenizers` and generates with OpenVINO), and their memory stays small."""

from __future__ import annotations

from pathlib import Path

import psutil

# Measured here on `tiny`: ~0.45 GB for tritonserver plus its four stubs (the transformers engine took ~1.5 GB).
RSS_BOUND_BYTES = 600 * 2**20


def server_processes(run_dir: Path) -> list[psutil.Process]:
    """tritonserver and the Python-backend stubs serving the repository rendered in `run_dir`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(run_dir) in arg for arg in cmdline):
            found.append(proc)
    return found


def test_serving_processes_load_no_torch_and_stay_small(cpu_server) -> None:
    processes = server_processes(cpu_server.run_dir)
    names = [Path(p.cmdline()[0]).name for p in processes]
    assert names.count("tritonserver") == 1
    assert names.count("triton_python_backend_stub") == 4, names  # mentallama, pre/post, engine step
    for proc in processes:
        libraries = {m.path for m in proc.memory_maps()}
        heavy = sorted(p for p in libraries if "/torch/" in p or "libtorch" in p or "/transformers/" in p)
        assert heavy == [], f"{proc.cmdline()[:2]} maps {heavy[:3]}"
    total = sum(p.memory_info().rss for p in processes)
    assert total < RSS_BOUND_BYTES, f"{total / 2**20:.0f} MiB"
