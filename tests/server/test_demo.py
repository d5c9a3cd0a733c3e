"""`mentallama-serve --demo` (issue 22): the sample post is one the shipped nano checkpoint gets right, and the
demo says where the label comes from, how sure the label model is, and when the explanation disagrees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mentallama import parse_response
from mentallama.types import Generation
from mentallama_server.launch.demo import SAMPLE_LABEL, SAMPLE_TASK, run_demo, summary

WORK = ("This post shows the stress cause related to work. Reasoning: The poster's boss keeps adding shifts and they "
        "worry about getting fired at work, so work is the cause.")  # fmt: skip
SCHOOL = WORK.replace("related to work.", "related to school.")


def test_summary_of_an_agreeing_answer_names_label_source_and_confidence() -> None:
    text = summary(parse_response(SAMPLE_TASK, WORK), "nano")
    first = text.splitlines()[0]
    assert first.startswith("Parsed label: work (stated in the answer; label model 0.")
    assert "Note:" not in text and "disagree" not in text
    assert "demonstration model" in text and "often wrong" in text
    assert text.endswith("not a diagnosis.")


def test_summary_says_plainly_when_the_explanation_disagrees() -> None:
    text = summary(parse_response(SAMPLE_TASK, SCHOOL), "nano")
    assert "Parsed label: school (stated in the answer; label model 0.0" in text
    note = next(line for line in text.splitlines() if line.startswith("Note:"))
    assert "the explanation and the label disagree" in note and "'work'" in note


def test_summary_of_an_off_task_or_cut_answer() -> None:
    off = parse_response(SAMPLE_TASK, "Yes, the poster suffers from depression.")
    text = summary(off, "tiny")
    assert "Parsed label: (none found)" in text and "Note: The answer's verdict is about depression" in text
    assert "random weights" in text and "demonstration" not in text
    cut = parse_response(SAMPLE_TASK, WORK).with_generation(Generation("", finish_reason="length"))
    assert "cut at --max-tokens" in summary(cut, "bench")


@pytest.fixture(scope="module")
def nano_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The shipped nano checkpoint as `make run` serves it (`mentallama-serve --checkpoint nano`), front door
    included; the engine is built on first use into the cache."""
    from mentallama_server.launch.cpu_profile import CpuSettings
    from mentallama_server.launch.front_door_process import FrontDoorProcess, upstream_options
    from mentallama_server.launch.serve_cpu import start_cpu_server
    from tests.support.servers import loopback_options

    public = loopback_options()
    triton = upstream_options(public)
    run_dir: Path = tmp_path_factory.mktemp("nano-run")
    server = start_cpu_server("nano", CpuSettings(), triton, run_dir, ready_timeout_s=900)
    front = None
    try:
        front = FrontDoorProcess.start(public, triton, run_dir)
        yield public
    finally:
        if front is not None:
            front.stop()
        server.stop()


@pytest.mark.server
@pytest.mark.slow
def test_the_demo_on_nano_is_right_and_says_so(nano_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    raw = run_demo(nano_server.grpc_url, model="nano")
    printed = capsys.readouterr().out
    analysis = parse_response(SAMPLE_TASK, raw)
    assert (analysis.label, analysis.label_source, analysis.conflict) == (SAMPLE_LABEL, "stated", False), raw
    assert analysis.confidence is not None and analysis.confidence >= 0.5
    assert f"Parsed label: {SAMPLE_LABEL} (stated in the answer; label model" in printed
    assert "Note:" not in printed and "demonstration model" in printed
