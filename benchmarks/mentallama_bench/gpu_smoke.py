"""`mentallama-bench gpu-smoke`: the first command on a fresh GPU node, inside the pinned NGC container.

It proves the whole TensorRT-LLM path in minutes and writes a report (`gpu-smoke-report.json` and `.md` in the
work folder). The steps, each with what it expects and what to check when it fails:

1. versions  - the container, Triton, tensorrt_llm and the TensorRT-LLM examples' release; they must agree.
2. checkpoint - `mentallama-build tiny`: a small float32 LLaMA (random weights, byte-identical on every build).
3. engine    - `mentallama-build engine` on it, the same steps as for MentaLLaMA-7B (float32, beam width 2,
               TF32 off so that float32 means float32).
4. serve     - `mentallama-serve --profile trtllm` with the GPU profile, behind the front door.
5. greedy    - greedy answers of both entry models equal the CPU profile's, token for token.
6. streaming - streamed chunks of `mentallama` join to the non-streamed text, none ends inside a character;
               the SDK's analyze_stream on a post with multi-byte characters.
7. e2e-client - TensorRT-LLM's own end_to_end_grpc_client.py in each of its modes.
8. load      - 60 s of `mentallama-bench` load.
9. metrics   - GPU memory and KV-cache figures from the metrics page.
The server is stopped at the end, whatever happened. `--dry-run` prints every step and command, runs nothing and
needs no GPU.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mentallama_bench.gpu_smoke_reference import load_reference
from mentallama_bench.gpu_smoke_steps import (
    E2E_CLIENT,
    Finding,
    check_e2e_client,
    check_greedy,
    check_metrics,
    check_streaming,
    check_versions,
    e2e_commands,
)

__all__ = ["SmokeOptions", "SmokeStep", "describe", "plan_steps", "run_study", "write_report"]

# Float32 means float32: TensorRT and cuBLAS use TF32 for float32 GEMMs unless told not to, and TF32's 10-bit
# mantissa would move logits by more than the smallest gap of the reference paths.
SMOKE_ENV = {"NVIDIA_TF32_OVERRIDE": "0"}
# The fp32 engine has no paged context FMHA (TensorRT-LLM has no fp32 kernels for it), which chunked context
# and KV-cache reuse need.
SERVE_SETTINGS = ("enable_chunked_context=false", "enable_kv_cache_reuse=false")


@dataclass(frozen=True)
class SmokeOptions:
    work_dir: Path
    trtllm_examples: Path
    checkpoint: Path | None = None
    cpu_endpoint: str | None = None
    grpc_port: int = 18701
    http_port: int = 18700
    metrics_port: int = 18702
    load_seconds: float = 60.0
    concurrency: int = 16
    ready_timeout_s: float = 1800.0
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint or self.work_dir / "checkpoint"

    @property
    def engine_dir(self) -> Path:
        return self.work_dir / "engine"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def e2e_client(self) -> Path:
        return self.trtllm_examples.parent / E2E_CLIENT


@dataclass(frozen=True)
class SmokeStep:
    """One step: what it proves, what it expects, what to check when it fails, and its commands (shown by
    --dry-run; the steps without commands run their checks in-process)."""

    key: str
    title: str
    expect: str
    check: str
    commands: tuple[tuple[str, ...], ...] = ()
    needs: tuple[str, ...] = ()


def plan_steps(o: SmokeOptions) -> list[SmokeStep]:
    """The steps for these options, in order."""
    tiny = (o.tool("mentallama-build"), "tiny", "--output", str(o.checkpoint_dir), "--force")
    engine = (
        o.tool("mentallama-build"), "engine", "--checkpoint", str(o.checkpoint_dir), "--output", str(o.engine_dir),
        "--preset", "7b", "--dtype", "float32", "--max-batch-size", "16", "--max-input-len", "512",
        "--max-seq-len", "1024", "--max-num-tokens", "2048", "--max-beam-width", "2",
        "--trtllm-examples", str(o.trtllm_examples), "--work-dir", str(o.work_dir / "engine.tllm_checkpoint"),
        "--force",
    )  # fmt: skip
    serve = (
        o.tool("mentallama-serve"), "--profile", "trtllm", "--engine", str(o.engine_dir), "--tokenizer",
        str(o.checkpoint_dir), "--grpc-port", str(o.grpc_port), "--http-port", str(o.http_port), "--metrics-port",
        str(o.metrics_port), "--run-dir", str(o.work_dir / "run"), "--ready-timeout", f"{o.ready_timeout_s:g}",
        *(arg for setting in SERVE_SETTINGS for arg in ("--set", setting)),
    )  # fmt: skip
    load = (
        o.tool("mentallama-bench"), "--endpoint", o.grpc_url, "--concurrency", str(o.concurrency), "--duration",
        f"{o.load_seconds:g}", "--requests", "1000000", "--tokenizer", str(o.checkpoint_dir), "--input-len", "128",
        "--output-len", "64", "--metrics-url", o.metrics_url, "--ready-timeout", "120", "--no-progress",
        "--output", str(o.work_dir / "bench"), "--name", "load",
    )  # fmt: skip
    reference = "--cpu-endpoint " + o.cpu_endpoint if o.cpu_endpoint else "the recorded CPU-profile answers"
    return [
        SmokeStep("versions", "container, Triton, tensorrt_llm, examples, GPU",
                  "the container's tensorrt_llm is the examples' release; a GPU is visible",
                  "run inside the NGC image with --nv/--gpus; check out the examples at the container's release"),
        SmokeStep("checkpoint", "a small LLaMA checkpoint (tiny, float32)",
                  "mentallama-build tiny exits 0 (skipped with --checkpoint)",
                  "the venv has torch and sentencepiece (the image's, through --system-site-packages)",
                  () if o.checkpoint else (tiny,)),
        SmokeStep("engine", "its TensorRT-LLM engine, through mentallama-build engine",
                  "exit 0; rank0.engine, config.json and mentallama_build_manifest.json in the engine folder",
                  f"the output above and {o.engine_dir / 'mentallama_build.log'}", (engine,), ("versions",)),
        SmokeStep("serve", "the GPU profile: tritonserver (tensorrtllm backend) behind the front door",
                  f"ready within {o.ready_timeout_s:g} s",
                  f"{o.work_dir / 'serve.log'} and the Triton log in {o.work_dir / 'run'}", (serve,), ("engine",)),
        SmokeStep("greedy", f"greedy tokens of mentallama and ensemble equal the CPU profile's ({reference})",
                  "the same text and output token count for every prompt (float32, short prompts)",
                  "NVIDIA_TF32_OVERRIDE=0 reached the build and the server; the engine is float32; the first "
                  "differing character and the reference path's logit gap are in the report", (), ("serve",)),
        SmokeStep("streaming", "streaming through mentallama: multi-byte characters, the SDK",
                  "streamed chunks join to the non-streamed text; no chunk ends inside a character",
                  "the front model's log lines in the Triton log; README 'Text contract'", (), ("serve",)),
        SmokeStep("e2e-client", "TensorRT-LLM's end_to_end_grpc_client.py in each mode (ensemble)",
                  "every mode exits 0 without an error response",
                  f"the mode's log in {o.work_dir} (e2e-*.log)",
                  tuple(tuple(argv) for argv in e2e_commands(o.e2e_client, o.grpc_url).values()), ("serve",)),
        SmokeStep("load", f"{o.load_seconds:g} s of load at concurrency {o.concurrency} (mentallama-bench)",
                  "exit 0 and no failed request", f"{o.work_dir / 'bench' / 'load'} (summary.json, report.md)",
                  (load,), ("serve",)),
        SmokeStep("metrics", "GPU memory and KV-cache figures from the metrics page",
                  "nv_trt_llm_kv_cache_block_metrics reports a KV cache", f"{o.metrics_url}", (), ("serve",)),
    ]  # fmt: skip


def describe(o: SmokeOptions, steps: list[SmokeStep]) -> str:
    """The dry run's text: every step, its commands, what it expects and what to check."""
    env = " ".join(f"{k}={v}" for k, v in SMOKE_ENV.items())
    lines = [f"mentallama-bench gpu-smoke: {len(steps)} steps; work folder {o.work_dir}; commands run with {env}"]
    for i, step in enumerate(steps, 1):
        lines.append(f"\n[{i}/{len(steps)}] {step.key}: {step.title}")
        lines += [f"    $ {shlex.join(argv)}" for argv in step.commands]
        lines.append(f"    expects: {step.expect}")
        lines.append(f"    on failure, check: {step.check}")
    lines.append(f"\nreport: {o.work_dir / 'gpu-smoke-report.json'} and .md (written whatever happens)")
    return "\n".join(lines)


@dataclass
class StepResult:
    key: str
    title: str
    status: str  # passed, failed, skipped
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    expect: str = ""
    check: str = ""


def _run_command(argv: tuple[str, ...], log: Path, timeout_s: float, say: Callable[[str], None]) -> Finding:
    say(f"    $ {shlex.join(argv)}")
    with log.open("a", encoding="utf-8") as out:
        try:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
                                env={**os.environ, **SMOKE_ENV}).returncode  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Finding(False, problems=[f"{argv[0]}: {exc}"])
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        return Finding(False, problems=[f"exit code {rc}; last lines of {log}:", *tail])
    return Finding(True)


class SmokeRun:
    """Runs the steps in order, skipping those whose prerequisite failed; owns the server process."""

    def __init__(self, options: SmokeOptions, say: Callable[[str], None]) -> None:
        self.o = options
        self.say = say
        self.server: subprocess.Popen | None = None

    def run(self, steps: list[SmokeStep]) -> list[StepResult]:
        results: dict[str, StepResult] = {}
        try:
            for i, step in enumerate(steps, 1):
                self.say(f"[{i}/{len(steps)}] {step.key}: {step.title}")
                blocked = [need for need in step.needs if results.get(need) and results[need].status != "passed"]
                started = time.monotonic()
                if blocked:
                    finding = Finding(False, problems=[f"skipped: {', '.join(blocked)} did not pass"])
                    status = "skipped"
                else:
                    finding = self._step(step)
                    status = "passed" if finding.passed else "failed"
                results[step.key] = StepResult(step.key, step.title, status, round(time.monotonic() - started, 1),
                                               finding.figures, finding.problems, finding.notes, step.expect,
                                               step.check)  # fmt: skip
                shown = finding.problems if status == "failed" else []
                self.say(f"    {status.upper()}" + "".join(f"\n    - {p}" for p in shown))
        finally:
            self.stop_server()
        return list(results.values())

    def _step(self, step: SmokeStep) -> Finding:
        o = self.o
        if step.key == "versions":
            return check_versions(o.trtllm_examples)
        if step.key in ("checkpoint", "engine", "load"):
            finding = Finding(True)
            for argv in step.commands:
                finding = _run_command(argv, o.work_dir / f"{step.key}.log", 3 * 3600, self.say)
                if not finding.passed:
                    return finding
            return self._after(step.key, finding)
        if step.key == "serve":
            return self.start_server(step.commands[0])
        if step.key == "greedy":
            return check_greedy(o.grpc_url, load_reference(), o.cpu_endpoint)
        if step.key == "streaming":
            return check_streaming(o.grpc_url)
        if step.key == "e2e-client":
            return check_e2e_client(o.e2e_client, o.grpc_url, o.work_dir)
        if step.key == "metrics":
            return check_metrics(o.metrics_url)
        raise ValueError(f"unknown step {step.key}")

    def _after(self, key: str, finding: Finding) -> Finding:
        """Figures of a command step: the checkpoint's digest against the reference's, the load's summary."""
        if key == "checkpoint":
            from mentallama_build.manifest import checkpoint_digest

            digest = checkpoint_digest(self.o.checkpoint_dir)["sha256"]
            finding.figures["checkpoint_sha256"] = digest
            if digest != load_reference().checkpoint_sha256 and not self.o.cpu_endpoint:
                finding.notes.append(
                    "this checkpoint is not the one the CPU answers were recorded from: the greedy step will "
                    "differ; give --cpu-endpoint of a CPU server of this checkpoint"
                )
        if key == "load":
            summaries = sorted((self.o.work_dir / "bench" / "load").glob("*/summary.json"))
            if not summaries:
                return Finding(False, problems=["mentallama-bench wrote no summary.json"])
            summary = json.loads(summaries[-1].read_text(encoding="utf-8"))
            requests = summary["requests"]
            finding.figures.update(
                requests=requests, output_tok_per_s=round(summary["output_token_throughput"] or 0, 1),
                ttft_p50_ms=(summary.get("ttft") or {}).get("p50"), itl_p50_ms=(summary.get("itl") or {}).get("p50"),
                errors=summary.get("errors"),
            )  # fmt: skip
            if requests["failed"] or not requests["completed"]:
                finding.passed = False
                finding.problems.append(f"{requests['failed']} of {requests['total']} requests failed: "
                                        f"{summary.get('errors')}")  # fmt: skip
        return finding

    def start_server(self, argv: tuple[str, ...]) -> Finding:
        log = self.o.work_dir / "serve.log"
        self.say(f"    $ {shlex.join(argv)}")
        out = log.open("ab")
        self.server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, **SMOKE_ENV})  # fmt: skip
        out.close()
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.o.http_port}/v2/health/ready"
        while time.monotonic() - started < self.o.ready_timeout_s + 60:
            if self.server.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
                return Finding(False, problems=[f"mentallama-serve exited with {self.server.returncode}:", *tail])
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own loopback port
                    if resp.status == 200:
                        return Finding(True, {"ready_s": round(time.monotonic() - started, 1)})
            except OSError:
                pass
            time.sleep(2)
        return Finding(False, problems=[f"not ready after {self.o.ready_timeout_s:g} s ({url}); see {log}"])

    def stop_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        self.server.send_signal(signal.SIGTERM)  # the launcher stops tritonserver and the front door
        try:
            self.server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()


def write_report(o: SmokeOptions, results: list[StepResult]) -> tuple[Path, Path]:
    """gpu-smoke-report.json (everything) and .md (a table, then each failure with what to check)."""
    passed = all(r.status == "passed" for r in results)
    data = {"passed": passed, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": {k: str(v) for k, v in asdict(o).items()}, "steps": [asdict(r) for r in results]}  # fmt: skip
    json_path = o.work_dir / "gpu-smoke-report.json"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    lines = [f"# mentallama-bench gpu-smoke: {'PASSED' if passed else 'FAILED'}", "",
             "| step | status | seconds | figures |", "|---|---|---|---|"]  # fmt: skip
    for r in results:
        figures = "; ".join(f"{k}: {v}" for k, v in r.figures.items())
        lines.append(f"| {r.key} | {r.status} | {r.seconds} | {figures} |")
    for r in results:
        if r.status == "failed":
            lines += ["", f"## {r.key} failed", f"- expected: {r.expect}", *[f"- {p}" for p in r.problems],
                      f"- check: {r.check}"]  # fmt: skip
        lines += [f"- note ({r.key}): {n}" for n in r.notes]
    md_path = o.work_dir / "gpu-smoke-report.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


def run_study(
    work_dir: Path | None,
    trtllm_examples: Path,
    checkpoint: Path | None = None,
    cpu_endpoint: str | None = None,
    grpc_port: int = 18701,
    http_port: int = 18700,
    metrics_port: int = 18702,
    load_seconds: float = 60.0,
    concurrency: int = 16,
    ready_timeout: float = 1800.0,
    dry_run: bool = False,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> int:
    """`mentallama-bench gpu-smoke` (flags in studies.py). Exit code 0 when every step passed, else 1."""
    from mentallama import locations

    work = Path(work_dir or locations.cache_dir() / "gpu-smoke").resolve()
    options = SmokeOptions(work, Path(trtllm_examples).resolve(), checkpoint, cpu_endpoint, grpc_port, http_port,
                           metrics_port, load_seconds, concurrency, ready_timeout)  # fmt: skip
    steps = plan_steps(options)
    if dry_run:
        say(describe(options, steps))
        say("\n(dry run: nothing executed)")
        return 0
    options.work_dir.mkdir(parents=True, exist_ok=True)
    results = SmokeRun(options, say).run(steps)
    json_path, md_path = write_report(options, results)
    failed = [r for r in results if r.status != "passed"]
    verdict = "FAILED: " + ", ".join(r.key for r in failed) if failed else "PASSED"
    say(f"\n{verdict}; report {md_path} ({json_path.name})")
    return 1 if failed else 0
