"""`mentallama-bench gpu-smoke` (issue 21): the dry run CI can run, and the CPU answers it holds a GPU to.

- The dry run prints every step with what it expects and what to check, runs nothing and needs no GPU; each
  command it would run parses with the real parser of the tool it names (mentallama-build engine/tiny,
  mentallama-serve, mentallama-bench), so the plan cannot drift from the tools.
- The recorded CPU answers (benchmarks/mentallama_bench/gpu_smoke_reference.json) equal what the CPU profile
  serves now for the tiny checkpoint, through both entry models, and transformers' greedy path (float32) decides
  every step by a clear gap. `python -m tests.benchmarks.test_gpu_smoke` rewrites the file from a fresh server.
- The report names the failed step, what it expected and what to check.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from mentallama_bench.cli import app as bench_app
from mentallama_bench.gpu_smoke import SmokeOptions, StepResult, plan_steps, write_report
from mentallama_bench.gpu_smoke_reference import (
    MAX_TOKENS,
    PROMPTS,
    REFERENCE_FILE,
    Reference,
    ReferenceAnswer,
    ask_greedy,
    load_reference,
)

MIN_MARGIN = 1e-3  # the smallest top-2 logit gap a reference path may have (gpu_smoke_reference.py says why)


def dry_run(tmp_path: Path) -> str:
    result = CliRunner().invoke(bench_app, ["gpu-smoke", "--dry-run", "--trtllm-examples", "/opt/trtllm/examples",
                                            "--work-dir", str(tmp_path / "smoke")])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def test_the_dry_run_prints_every_step_and_runs_nothing(tmp_path: Path) -> None:
    text = dry_run(tmp_path)
    keys = ["versions", "checkpoint", "engine", "serve", "greedy", "streaming", "e2e-client", "load", "metrics"]
    positions = [text.index(f"] {key}: ") for key in keys]
    assert positions == sorted(positions)
    assert text.count("expects: ") == text.count("on failure, check: ") == len(keys)
    assert "NVIDIA_TF32_OVERRIDE=0" in text and "dry run: nothing executed" in text
    assert "end_to_end_grpc_client.py" in text and "--beam-width 2" in text and "--num-return-sequences 2" in text
    assert not (tmp_path / "smoke").exists()


def _parse(command: typer.Typer, argv: list[str], sub: str | None = None) -> dict:
    group = typer.main.get_command(command)
    if sub is None:
        return group.make_context("tool", argv).params
    return group.get_command(group.make_context("tool", [sub, "--help"], resilient_parsing=True), sub).make_context(
        sub, argv
    ).params


def test_each_command_of_the_plan_parses_with_its_tools_parser(tmp_path: Path) -> None:
    from mentallama_build.cli import app as build_app
    from mentallama_server.launch.cli import app as serve_app

    options = SmokeOptions(tmp_path, Path("/opt/trtllm/examples"), bin_dir=Path("/venv/bin"))
    commands = {step.key: step.commands for step in plan_steps(options)}
    (tiny,) = commands["checkpoint"]
    assert Path(_parse(build_app, list(tiny[2:]), "tiny")["output"]) == tmp_path / "checkpoint"
    (engine,) = commands["engine"]
    params = _parse(build_app, list(engine[2:]), "engine")
    assert (params["dtype"], params["max_beam_width"]) == ("float32", 2)
    assert Path(params["checkpoint_dir"]) == tmp_path / "checkpoint"
    (serve,) = commands["serve"]
    params = _parse(serve_app, list(serve[1:]))
    assert params["profile"] == "trtllm" and params["ready_timeout"] == 1800.0
    assert set(params["overrides"]) == {"enable_chunked_context=false", "enable_kv_cache_reuse=false"}
    (load,) = commands["load"]
    params = _parse(bench_app, list(load[1:]))
    assert params["duration"] == 60.0 and list(params["endpoint"]) == [options.grpc_url]
    for argv in commands["e2e-client"]:
        assert argv[0] == sys.executable and argv[1].endswith("client/end_to_end_grpc_client.py"), shlex.join(argv)


def test_the_report_names_the_failed_step_what_it_expected_and_what_to_check(tmp_path: Path) -> None:
    options = SmokeOptions(tmp_path, Path("/x"))
    results = [
        StepResult("versions", "v", "passed", 0.1, {"tensorrt_llm": "1.2.1"}),
        StepResult("engine", "e", "failed", 3.0, {}, ["exit code 1"], [], "exit 0; rank0.engine", "the build log"),
        StepResult("serve", "s", "skipped", 0.0, {}, ["skipped: engine did not pass"]),
    ]
    json_path, md_path = write_report(options, results)
    text = md_path.read_text()
    assert text.startswith("# mentallama-bench gpu-smoke: FAILED")
    assert "## engine failed" in text and "- expected: exit 0; rank0.engine" in text
    assert "- check: the build log" in text
    assert '"passed": false' in json_path.read_text()


# ---- The recorded CPU answers ------------------------------------------------------------------------------


def record(url: str, checkpoint: Path) -> Reference:
    """The CPU server's greedy answers, with transformers' smallest top-2 gap along each path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentallama_build.manifest import checkpoint_digest

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    answers = []
    for prompt in PROMPTS:
        text, count, errors = ask_greedy(url, "mentallama", prompt, MAX_TOKENS)
        assert errors == [], errors
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)  # fmt: skip
        # The CPU profile's answer is transformers' greedy path, token for token (the text contract: prompt +
        # text_output is the decoded sequence).
        assert tokenizer.decode(out.sequences[0].tolist(), skip_special_tokens=True) == prompt + text
        margin = min(float(torch.topk(s[0], 2).values.diff().abs()) for s in out.scores)
        answers.append(ReferenceAnswer(prompt, text, count, round(margin, 6)))
    return Reference("tiny", checkpoint_digest(checkpoint)["sha256"], MAX_TOKENS, tuple(answers))


def test_the_recorded_answers_are_what_the_cpu_profile_serves(cpu_server) -> None:
    reference = load_reference()
    fresh = record(cpu_server.grpc_url, cpu_server.checkpoint)
    assert fresh.checkpoint_sha256 == reference.checkpoint_sha256, "tiny changed: rewrite the reference file"
    assert [(a.prompt, a.text, a.num_output_tokens) for a in fresh.answers] == [
        (a.prompt, a.text, a.num_output_tokens) for a in reference.answers
    ], "run `python -m tests.benchmarks.test_gpu_smoke` to rewrite the reference file"
    assert all(a.min_margin >= MIN_MARGIN for a in fresh.answers), fresh.answers
    assert all(a.num_output_tokens == MAX_TOKENS for a in reference.answers)
    for answer in reference.answers:  # the ensemble answers the same (the smoke test asks both)
        assert ask_greedy(cpu_server.grpc_url, "ensemble", answer.prompt)[:2] == (answer.text, MAX_TOKENS)


def test_the_smoke_checks_pass_on_the_cpu_profile(cpu_server) -> None:
    """The greedy and streaming checks the GPU node runs, run here against the CPU profile they are held to."""
    from mentallama_bench.gpu_smoke_steps import check_greedy, check_streaming

    greedy = check_greedy(cpu_server.grpc_url, load_reference())
    assert greedy.passed, greedy.problems
    assert greedy.figures["matched"] == f"{2 * len(PROMPTS)} of {2 * len(PROMPTS)}"
    streaming = check_streaming(cpu_server.grpc_url)
    assert streaming.passed, streaming.problems
    # Two chunks at least: on the fast tiny engine held tokens may all share the response after the first.
    assert streaming.figures["chunks"] >= 2 and streaming.figures["replacement_characters"] >= 0


def test_a_run_without_a_gpu_fails_at_versions_and_says_what_to_check(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """This machine has no GPU and no TensorRT-LLM: a real run stops at the versions step, skips what needs it,
    and still writes the report."""
    from mentallama_bench.gpu_smoke import run_study

    lines: list[str] = []
    code = run_study(tmp_path / "smoke", tmp_path / "examples", checkpoint=tiny_checkpoint, say=lines.append)
    assert code == 1
    report = (tmp_path / "smoke" / "gpu-smoke-report.md").read_text()
    assert "## versions failed" in report and "no tensorrt_llm package" in report
    assert "run inside the NGC image" in report
    assert "| engine | skipped |" in report and "| load | skipped |" in report
    assert "| checkpoint | passed |" in report  # the given checkpoint is digested, not rebuilt
    assert lines[-1].startswith("\nFAILED: versions, engine, serve")


def main() -> None:  # pragma: no cover - rewrites the reference file from a fresh CPU server
    from mentallama_build.tiny import ensure_checkpoint
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.launcher import ServerOptions
    from mentallama_server.launch.serve_cpu import start_cpu_server

    checkpoint = ensure_checkpoint("tiny")
    opts = ServerOptions.on_free_ports()
    server = start_cpu_server(str(checkpoint), CpuSettings(), opts, None)
    try:
        REFERENCE_FILE.write_text(record(opts.grpc_url, checkpoint).to_json(), encoding="utf-8")
    finally:
        server.stop()
    print(f"wrote {REFERENCE_FILE}")


if __name__ == "__main__":
    main()
