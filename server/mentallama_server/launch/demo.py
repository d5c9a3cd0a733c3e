"""The sample analysis `mentallama-serve --demo` runs against a fresh server."""

from __future__ import annotations

import sys

SAMPLE_POST = (
    "I haven't slept properly in weeks. Work keeps piling up and my manager keeps adding deadlines, "
    "and I can't stop worrying about losing my job."
)


RANDOM_WEIGHTS = ("tiny", "bench")


def run_demo(endpoint: str, max_tokens: int = 160, model: str | None = None) -> str:
    from mentallama import MentaLLaMAClient

    with MentaLLaMAClient(endpoint) as client:
        print(f"Post: {SAMPLE_POST}\nTask: stress-cause\nStreaming the model's answer:\n", flush=True)
        with client.analyze_stream(SAMPLE_POST, "stress-cause", max_tokens=max_tokens) as stream:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
            analysis = stream.final()
    print(f"\n\nParsed label: {analysis.label!r} ({analysis.label_source or 'not found'})")
    if analysis.reasoning:
        print(f"Explanation: {analysis.reasoning}")
    if model in RANDOM_WEIGHTS:
        print(f"(the {model} checkpoint has random weights: expect noise)")
    print("Non-clinical research output: not a diagnosis.")
    return analysis.raw
