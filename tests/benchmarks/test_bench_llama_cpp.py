"""llama.cpp beside the served engine in `mentallama-bench cpu-engine` (issue 22): the request each backend sends
is the same work (the prompt as is, greedy, exactly N new tokens, no prompt cache), the server's own token count
is read, and missing pieces are said before anything is measured. With a real `llama-server` (on PATH or
$LLAMA_SERVER) and the `gguf` converter, the tiny checkpoint is converted to Q8_0 and measured."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_bench.cli import app
from mentallama_bench.cpu_engine_bench import run_load
from mentallama_bench.llama_cpp import LlamaCppBackend
from mentallama_bench.records import SampleRequest
from tests.support.http_double import QuietHandler, serving


class _Completion(QuietHandler):
    """llama-server's /health and /completion, as far as the backend uses them (a test double of its API)."""

    bodies: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(200 if self.path == "/health" else 404, {"status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        self._answer(200, {"content": " word" * body["n_predict"], "tokens_predicted": body["n_predict"],
                           "tokens_evaluated": 7, "stop": True})  # fmt: skip

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_the_backend_sends_the_same_work_and_reads_the_servers_count() -> None:
    with serving(_Completion) as url:
        samples = [SampleRequest(i, f"Consider this post: post {i}\\nQuestion: ...", "DR", 5) for i in range(6)]
        backend = LlamaCppBackend(url)

        async def go() -> dict:
            assert await backend.is_ready()
            try:
                return await run_load(backend, samples, 3)
            finally:
                await backend.close()

        result = asyncio.run(go())
    assert result["tokens"] == 6 * 5 and result["errors"] == [] and result["tok_s"] > 0
    sent = _Completion.bodies[-1]
    assert sent["prompt"].startswith("Consider this post") and sent["n_predict"] == 5
    assert sent["ignore_eos"] is True and sent["cache_prompt"] is False and sent["temperature"] == 0.0


def test_missing_llama_pieces_are_said_before_measuring(tmp_path: Path) -> None:
    gguf = tmp_path / "bench-q8_0.gguf"
    missing = CliRunner().invoke(app, ["cpu-engine", "--gguf", str(gguf)])
    assert missing.exit_code == 2 and "GGUF Q8_0" in missing.stderr
    gguf.write_bytes(b"GGUF")
    absent = CliRunner().invoke(app, ["cpu-engine", "--gguf", str(gguf), "--llama-server", str(tmp_path / "nope")])
    assert absent.exit_code == 2 and "llama-server not found at" in absent.stderr and "--target llama-server" in (
        absent.stderr)


def _real_llama_server() -> str | None:
    return os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")


@pytest.mark.slow
@pytest.mark.skipif(_real_llama_server() is None, reason="no llama-server here ($LLAMA_SERVER or PATH)")
def test_a_real_llama_server_on_the_tiny_checkpoint_in_q8_0(tiny_checkpoint: Path, tmp_path: Path) -> None:
    convert = os.environ.get("LLAMA_CONVERT")  # llama.cpp's convert_hf_to_gguf.py
    if not convert:
        pytest.skip("set LLAMA_CONVERT to llama.cpp's convert_hf_to_gguf.py")
    gguf = tmp_path / "tiny-q8_0.gguf"
    # Its gguf package: installed, or llama.cpp's gguf-py/ folder given in $LLAMA_GGUF_PY (for the converter alone).
    env = dict(os.environ) | ({"PYTHONPATH": os.environ["LLAMA_GGUF_PY"]} if "LLAMA_GGUF_PY" in os.environ else {})
    subprocess.run([sys.executable, convert, str(tiny_checkpoint), "--outtype", "q8_0", "--outfile", str(gguf)],
                   check=True, capture_output=True, timeout=600, env=env)  # fmt: skip
    from mentallama_bench.cpu_engine_bench import measure_llama_cpp

    samples = [SampleRequest(i, f"Post number {i}: I cannot sleep.", "DR", 16) for i in range(4)]
    runs = measure_llama_cpp(Path(str(_real_llama_server())), gguf, samples, [1, 2], 16)
    assert [r["concurrency"] for r in runs] == [1, 2]
    assert all(r["tokens"] == 4 * 16 and not r["errors"] for r in runs)  # exactly 16 new tokens each (ignore_eos)
