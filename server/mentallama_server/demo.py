"""The sample analysis `mentallama-serve --demo` runs against a fresh server."""

from __future__ import annotations

import sys

SAMPLE_POST = (
    "I haven't slept properly in weeks. Work keeps piling up and my manager keeps adding deadlines, "
    "and I can't stop worrying about losing my job."
)


def run_demo(endpoint: str, max_tokens: int = 64) -> str:
    from mentallama import MentaLLaMAClient

    with MentaLLaMAClient(endpoint) as client:
        print(f"Post: {SAMPLE_POST}\nTask: stress-cause\nStreaming the model's answer:\n", flush=True)
        with client.analyze_stream(SAMPLE_POST, "stress-cause", max_tokens=max_tokens) as stream:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
            analysis = stream.final()
    print(f"\n\nParsed label: {analysis.label!r} (the embedded tiny model has random weights: expect noise)")
    return analysis.raw
