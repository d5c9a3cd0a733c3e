"""benchmarks/gpu_serving.py end to end on the CPU (tiny checkpoint): the same script the GPU run uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_serving import main

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_serving.py"
SMALL_RUN = [
    "--model=tiny", "--device=cpu", "--dtype=auto", "--input-len=8", "--output-len=4", "--requests=2",
    "--warmup=0", "--engine-max-batch-size=4", "--cache-num-blocks=64", "--max-batch-tokens=256",
]


@pytest.mark.server
def test_served_run_measures_every_level_with_forced_output_length(tmp_path, tiny_checkpoint):
    result_file = tmp_path / "gpu_serving.json"
    assert main([*SMALL_RUN, "--concurrency=1,2", f"--json={result_file}"]) == 0
    result = json.loads(result_file.read_text())
    assert result["served"] is True and result["device"] == "cpu" and result["card"].startswith("CPU")
    assert [level["concurrency"] for level in result["levels"]] == [1, 2]
    for level in result["levels"]:
        assert level["requests"] == {"total": 2, "completed": 2, "failed": 0}
        assert level["total_output_tokens"] == 2 * 4  # min_tokens = max_tokens: no early end
        assert level["output_tokens_per_s"] > 0
    assert result["settings"]["device"] == "cpu" and result["server_start_s"] > 0


def test_in_process_run_uses_the_bare_engine(tmp_path, tiny_checkpoint):
    result_file = tmp_path / "engine.json"
    assert main([*SMALL_RUN, "--in-process", "--concurrency=2", f"--json={result_file}"]) == 0
    result = json.loads(result_file.read_text())
    assert result["served"] is False and "server_start_s" not in result
    assert result["levels"][0]["total_output_tokens"] == 2 * 4


@pytest.mark.server
def test_dead_engine_process_ends_the_run_at_once_with_the_reason(tmp_path, tiny_checkpoint):
    import psutil

    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *SMALL_RUN, "--concurrency=1", "--requests=100000", "--output-len=64",
         f"--json={tmp_path / 'r.json'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while "server ready" not in (proc.stdout.readline() or "") and time.monotonic() < deadline:
            assert proc.poll() is None, "the script ended before the server was ready"
        time.sleep(2)  # requests are flowing
        stubs = [c for c in psutil.Process(proc.pid).children(recursive=True)
                 if "tensorrt_llm/1/model.py" in " ".join(c.cmdline())]
        assert len(stubs) == 1
        os.kill(stubs[0].pid, signal.SIGKILL)
        assert proc.wait(60) == 2
        output = proc.stdout.read()
        assert "tensorrt_llm" in output and "died" in output
        assert "tensorrt_llm" in json.loads((tmp_path / "r.json").read_text())["error"]
    finally:
        if proc.poll() is None:
            proc.kill()
