"""llama.cpp's `llama-server` as the fourth side of `mentallama-bench cpu-engine`: the same checkpoint converted to
GGUF Q8_0, the same IMHI prompts and the same number of new tokens, measured in the same run.

The server is started here on a free loopback port with one slot per request in flight (`--parallel`, its
continuous batching), as many threads as the machine has cores, and a context of the longest prompt plus the
new tokens per slot. Requests go to its native `POST /completion` with the prompt as is (no chat template,
as the served `mentallama` model gets it; llama.cpp adds BOS as the tokenizer says), greedy, `ignore_eos` so
that every request makes exactly `n_predict` tokens as `min_tokens` makes the others, and `cache_prompt` off
(the served engine reuses no prefix either). Tokens are the server's own count (`tokens_predicted`).

Getting the two files (llama.cpp's converter comes with its source, e.g. the `vendor/llama.cpp` folder of the
llama-cpp-python source package):

    python llama.cpp/convert_hf_to_gguf.py CHECKPOINT --outtype q8_0 --outfile bench-q8_0.gguf
    cmake -S llama.cpp -B build -DLLAMA_CURL=OFF && cmake --build build --target llama-server -j
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mentallama_bench.backends import AiohttpBackend, _short
from mentallama_bench.records import RequestOutcome, SampleRequest, SamplingParams

__all__ = ["LlamaCppBackend", "find_llama_server", "llama_server"]


def find_llama_server(given: Path | None) -> Path:
    """The `llama-server` binary: ``given``, else the one on PATH; ``FileNotFoundError`` saying how to get one."""
    found = given if given is not None else (Path(p) if (p := shutil.which("llama-server")) else None)
    if found is None or not Path(found).is_file():
        where = f" at {given}" if given else " on PATH"
        raise FileNotFoundError(f"llama-server not found{where}: build it from llama.cpp's source (cmake --build "
                                "build --target llama-server) and pass --llama-server PATH")  # fmt: skip
    return Path(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(binary: Path, gguf: Path, slots: int, context_per_slot: int, *, threads: int | None = None,
                 ready_timeout_s: float = 300.0) -> Iterator[str]:  # fmt: skip
    """A running `llama-server` for ``gguf``; yields its base URL and stops it on exit."""
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf} (convert the checkpoint: convert_hf_to_gguf.py "
                                "CHECKPOINT --outtype q8_0)")  # fmt: skip
    port = _free_port()
    threads = threads or os.cpu_count() or 1
    argv = [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(slots), "--ctx-size", str(slots * context_per_slot), "--threads", str(threads),
            "--threads-batch", str(threads), "--no-webui"]  # fmt: skip
    log = (gguf.parent / f".{gguf.stem}.llama-server.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode} (log: {log.name})")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 - our own server
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not ready within {ready_timeout_s:g} s (log: {log.name})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class LlamaCppBackend(AiohttpBackend):
    """One `POST /completion` per request, not streamed: the benchmark reads tokens per second, not latencies."""

    kind = "llama-cpp"
    count_label = "llama.cpp"
    uses_server = False  # no Triton metrics to scrape

    def __init__(self, endpoint: str, model: str = "gguf", request_timeout_s: float = 600.0) -> None:
        super().__init__(endpoint.rstrip("/"), model, request_timeout_s)

    async def is_ready(self) -> bool:
        await self.open()
        try:
            async with self._session.get(f"{self.endpoint}/health") as resp:
                return resp.status == 200
        except Exception:  # noqa: BLE001 - unreachable or loading: not ready yet
            return False

    @staticmethod
    def payload(sample: SampleRequest, params: SamplingParams) -> dict[str, Any]:
        return {"prompt": sample.prompt, "n_predict": sample.max_tokens, "temperature": 0.0, "top_k": 1,
                "ignore_eos": bool(params.force_output_len), "cache_prompt": False, "stream": False}  # fmt: skip

    async def generate(self, sample: SampleRequest, params: SamplingParams) -> RequestOutcome:
        await self.open()
        out = RequestOutcome(start=time.perf_counter())
        try:
            async with self._session.post(f"{self.endpoint}/completion", json=self.payload(sample, params)) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    out.error_code, out.error = f"HTTP_{resp.status}", _short(body)
                else:
                    out.text = body.get("content") or ""
                    out.server_output_tokens = int(body.get("tokens_predicted") or 0)
                    out.server_input_tokens = body.get("tokens_evaluated")
                    out.num_responses, out.final_seen = 1, True
                    out.chunk_times.append(time.perf_counter())
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise
            out.error_code, out.error = "CLIENT_ERROR", _short(f"{type(exc).__name__}: {exc}")
        out.end = time.perf_counter()
        return out
