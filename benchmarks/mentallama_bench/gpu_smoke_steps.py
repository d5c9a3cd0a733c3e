"""What each step of `mentallama-bench gpu-smoke` checks on a running GPU server (gpu_smoke.py runs them).

Every check returns a `Finding`: passed or not, the figures it measured (they go into the report), and on
failure what was expected and what was seen. None of them logs request text beyond the fixed smoke prompts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mentallama_bench.gpu_smoke_client import greedy_inputs, stream_request
from mentallama_bench.gpu_smoke_reference import STREAMING_PROMPT, Reference, ask_greedy

__all__ = [
    "E2E_CLIENT",
    "E2E_MODES",
    "Finding",
    "check_e2e_client",
    "check_greedy",
    "check_metrics",
    "check_streaming",
    "check_versions",
    "e2e_commands",
    "nvidia_smi_memory",
]

E2E_CLIENT = Path("triton_backend/inflight_batcher_llm/client/end_to_end_grpc_client.py")
"""TensorRT-LLM's end-to-end gRPC client, in the checkout the examples come from."""
E2E_PROMPT = "Consider this post: I cannot sleep before my exams."
# The client's modes, as its flags select them (the smoke engine is built with --max-beam-width 2).
E2E_MODES: dict[str, list[str]] = {
    "non-streamed": [],
    "streamed": ["--streaming"],
    "batch inputs": ["--batch-inputs"],
    "log probs, input excluded": ["--return-log-probs", "--exclude-input-in-output"],
    "stop words": ["--stop-words", "the"],
    "beam width 2": ["--beam-width", "2"],
    "beam width 2, streamed": ["--beam-width", "2", "--streaming"],
    "2 sequences": ["--num-return-sequences", "2"],
}


@dataclass
class Finding:
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_versions(examples_dir: Path) -> Finding:
    """The container, Triton, tensorrt_llm and the examples' release, and whether they agree."""
    from mentallama_build.engine_config import TRTLLM_VERSION, detect_gpu
    from mentallama_build.trtllm_versions import CONTAINER_TRTLLM, triton_versions, version_findings

    found = version_findings(examples_dir)
    triton = triton_versions()
    gpu = detect_gpu()
    figures = {
        "container": triton["container"], "triton": triton["triton"], "tensorrt_llm": found.installed,
        "examples": found.examples, "expected_tensorrt_llm": TRTLLM_VERSION,
        "gpu": None if gpu is None else f"{gpu.name} (cc {gpu.cc_text}, {gpu.memory_gib} GiB, {gpu.count} GPU)",
    }  # fmt: skip
    finding = Finding(not found.problems and gpu is not None, figures, list(found.problems), list(found.warnings))
    if gpu is None:
        finding.problems.append("no NVIDIA GPU visible to nvidia-smi (run with --nv / --gpus all)")
    expected = CONTAINER_TRTLLM.get(triton["container"] or "")
    if triton["container"] is None:
        finding.notes.append("not an NGC tritonserver image (NVIDIA_TRITON_SERVER_VERSION unset)")
    elif expected != found.installed:
        finding.notes.append(
            f"container {triton['container']} ships tensorrt_llm {found.installed}; the table in deploy/README.md "
            f"says {expected or 'nothing for it'}: please report this pair (engine_build/.../trtllm_versions.py)"
        )
    return finding


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def check_greedy(url: str, reference: Reference, cpu_url: str | None = None) -> Finding:
    """Every reference prompt, greedy, on both entry models: the same text and token count as the CPU profile."""
    finding = Finding(True, {"prompts": len(reference.answers), "max_tokens": reference.max_tokens})
    matched = 0
    for answer in reference.answers:
        expected_text, expected_count = answer.text, answer.num_output_tokens
        if cpu_url is not None:
            expected_text, expected_count, errors = ask_greedy(cpu_url, "mentallama", answer.prompt,
                                                               reference.max_tokens)  # fmt: skip
            if errors:
                finding.problems.append(f"the CPU server at {cpu_url} failed: {errors[0]}")
                continue
        for model in ("mentallama", "ensemble"):
            text, count, errors = ask_greedy(url, model, answer.prompt, reference.max_tokens)
            if errors:
                finding.problems.append(f"{model}, prompt {answer.prompt!r}: error {errors[0]}")
            elif (text, count) != (expected_text, expected_count):
                at = _first_difference(text, expected_text)
                finding.problems.append(
                    f"{model}, prompt {answer.prompt!r}: expected {expected_count} tokens {expected_text!r}, got "
                    f"{count} tokens {text!r} (first difference at character {at}; the CPU path's smallest "
                    f"top-2 logit gap is {answer.min_margin:.2g})"
                )
            else:
                matched += 1
    finding.figures["matched"] = f"{matched} of {2 * len(reference.answers)}"
    finding.passed = not finding.problems
    return finding


def check_streaming(url: str, max_tokens: int = 48) -> Finding:
    """Streamed chunks of `mentallama` join to exactly the non-streamed text, and no chunk ends inside a
    character (a split character would show as U+FFFD in a chunk while the whole text has none there); then the
    SDK's analyze_stream on a post with multi-byte characters."""
    finding = Finding(True)
    whole = stream_request(url, "mentallama", greedy_inputs(STREAMING_PROMPT, max_tokens, stream=False),
                           ["text_output"])  # fmt: skip
    streamed = stream_request(url, "mentallama", greedy_inputs(STREAMING_PROMPT, max_tokens, stream=True),
                              ["text_output"])  # fmt: skip
    for name, answer in (("non-streamed", whole), ("streamed", streamed)):
        finding.problems += [f"{name}: {error}" for error in answer.errors]
    joined = "".join(streamed.chunks)
    finding.figures.update(
        chunks=len(streamed.chunks), characters=len(whole.text),
        multi_byte_characters=sum(1 for c in whole.text if len(c.encode("utf-8")) > 1 and c != "\ufffd"),
        replacement_characters=whole.text.count("\ufffd"),
    )  # fmt: skip
    if finding.problems:
        pass  # the errors say it
    elif joined != whole.text:
        finding.problems.append(
            f"streamed chunks join to {joined!r}, the non-streamed text is {whole.text!r} (first difference at "
            f"character {_first_difference(joined, whole.text)})"
        )
    elif len(streamed.chunks) < 2:
        finding.problems.append(f"the answer came in {len(streamed.chunks)} chunk(s): nothing was streamed")
    finding.problems += _sdk_stream(url)
    finding.passed = not finding.problems
    return finding


def _sdk_stream(url: str) -> list[str]:
    from mentallama import MentaLLaMAClient, MentaLLaMAError

    post = "Since I moved here 😞 I eat alone every night. 我很累. Ich bin müde."
    try:
        with MentaLLaMAClient(url, timeout=120) as client, client.analyze_stream(post, "loneliness",
                                                                                 max_tokens=32) as stream:  # fmt: skip
            deltas = "".join(stream)
            final = stream.final()
    except MentaLLaMAError as exc:
        return [f"SDK analyze_stream: {type(exc).__name__}: {exc}"]
    if deltas != final.raw:
        return [f"SDK analyze_stream: deltas join to {deltas!r}, the final text is {final.raw!r}"]
    return []


def e2e_commands(script: Path, url: str) -> dict[str, list[str]]:
    """The upstream client's command line per mode."""
    base = [sys.executable, str(script), "-u", url, "-o", "16", "--model-name", "ensemble"]
    commands = {}
    for mode, flags in E2E_MODES.items():
        prompt = json.dumps([E2E_PROMPT, "Hello world"]) if mode == "batch inputs" else E2E_PROMPT
        commands[mode] = [*base, "-p", prompt, *flags]
    return commands


def check_e2e_client(script: Path, url: str, log_dir: Path) -> Finding:
    """Each mode of TensorRT-LLM's end_to_end_grpc_client.py: exit 0 and no error response printed."""
    finding = Finding(True, {"client": str(script)})
    if not script.is_file():
        finding.problems.append(f"{script} not found: the TensorRT-LLM checkout of --trtllm-examples has no client")
        finding.passed = False
        return finding
    passed = []
    for mode, argv in e2e_commands(script, url).items():
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        log = log_dir / f"e2e-{mode.replace(' ', '-').replace(',', '')}.log"
        log.write_text(f"$ {' '.join(argv)}\n{run.stdout}\n{run.stderr}", encoding="utf-8")
        if run.returncode != 0 or "Received an error from server" in run.stdout:
            tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
            finding.problems.append(f"mode {mode!r}: exit {run.returncode}; {' | '.join(tail)} (log {log})")
        else:
            passed.append(mode)
    finding.figures["modes passed"] = f"{len(passed)} of {len(E2E_MODES)}"
    finding.passed = not finding.problems
    return finding


def nvidia_smi_memory() -> list[str]:
    """`used / total MiB` per GPU, from nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    out = subprocess.run([exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return [f"{line.split(',')[0].strip()} / {line.split(',')[1].strip()} MiB"
            for line in out.stdout.splitlines() if line.count(",") == 1]  # fmt: skip


def check_metrics(metrics_url: str) -> Finding:
    """GPU memory and the KV cache as the server reports them (TensorRT-LLM's and Triton's GPU metrics)."""
    from mentallama_bench.prometheus import scrape

    try:
        snap = scrape(metrics_url, timeout_s=10)
    except (OSError, ValueError) as exc:
        return Finding(False, problems=[f"{metrics_url} did not answer: {exc}"])
    kv = {kind: snap.value("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type=kind)
          for kind in ("max", "used", "free", "tokens_per")}  # fmt: skip
    gib = 1024**3
    figures: dict[str, Any] = {
        "kv_cache_blocks_max": kv["max"], "kv_cache_blocks_used": kv["used"], "kv_cache_blocks_free": kv["free"],
        "kv_cache_tokens_per_block": kv["tokens_per"], "kv_cache_tokens": kv["max"] * kv["tokens_per"],
        "gpu_memory_used_gib": round(snap.value("nv_gpu_memory_used_bytes") / gib, 2),
        "gpu_memory_total_gib": round(snap.value("nv_gpu_memory_total_bytes") / gib, 2),
        "nvidia_smi": nvidia_smi_memory(),
    }  # fmt: skip
    finding = Finding(kv["max"] > 0, figures)
    if kv["max"] <= 0:
        finding.problems.append("no nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"max\"} > 0 on the "
                                "metrics page: the tensorrtllm backend did not report its KV cache")  # fmt: skip
    if figures["gpu_memory_total_gib"] == 0:
        finding.notes.append("Triton's GPU metrics are absent (nv_gpu_memory_*): nvidia-smi's figures are reported")
    return finding
