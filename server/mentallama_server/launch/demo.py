"""The sample analysis `mentallama-serve --demo` runs against a fresh server."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mentallama import Analysis

# A post the shipped nano checkpoint gets right (greedy, as served: "work", stated, its explanation agrees);
# tests/server/test_demo.py checks it on the real server.
SAMPLE_POST = (
    "My boss keeps giving me more shifts and yelled at me in front of everyone today. I dread going to work "
    "every morning and I can't stop worrying about getting fired."
)
SAMPLE_TASK = "stress-cause"
SAMPLE_LABEL = "work"

RANDOM_WEIGHTS = ("tiny", "bench")
NANO = "nano"


def run_demo(endpoint: str, max_tokens: int = 160, model: str | None = None) -> str:
    from mentallama import MentaLLaMAClient, get_task

    task = get_task(SAMPLE_TASK)
    with MentaLLaMAClient(endpoint) as client:
        print(f"Post: {SAMPLE_POST}\nTask: {SAMPLE_TASK} ({task.name}: {task.question})", flush=True)
        print("Streaming the model's answer:\n", flush=True)
        with client.analyze_stream(SAMPLE_POST, SAMPLE_TASK, max_tokens=max_tokens) as stream:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
            analysis = stream.final()
    print("\n\n" + summary(analysis, model))
    return analysis.raw


def summary(analysis: Analysis, model: str | None = None) -> str:
    """What the demo prints after the answer: the label, where it comes from and how sure the label model
    is, a plain note when the explanation and the label disagree (or the answer is about another task),
    what kind of model answered, and the disclaimer."""
    lines = [f"Parsed label: {analysis.describe_label()}"]
    if analysis.reasoning:
        lines.append(f"Explanation: {analysis.reasoning}")
    if analysis.conflict:
        lines.append(f"Note: the explanation and the label disagree. {analysis.note} Treat this label with doubt.")
    elif analysis.note:
        lines.append(f"Note: {analysis.note}")
    if analysis.finish_reason == "length":
        lines.append("(the answer was cut at --max-tokens; the label may be incomplete)")
    if model in (None, NANO):  # None: no --checkpoint, so the shipped nano
        lines.append("(nano is a 6.8M-parameter demonstration model this project trained on the IMHI training data: "
                     "it shows the serving stack working, and its answers are often wrong; serve MentaLLaMA-7B "
                     "with --checkpoint DIR for real analyses)")  # fmt: skip
    elif model in RANDOM_WEIGHTS:
        lines.append(f"(the {model} checkpoint has random weights: expect noise)")
    lines.append("Non-clinical research output: not a diagnosis.")
    return "\n".join(lines)
