"""The CPU profile's greedy answers that `mentallama-bench gpu-smoke` holds a GPU engine to.

The smoke test builds its engine from the generated `tiny` checkpoint (float32, random weights, byte-identical
on every build: `mentallama-build tiny`). Its greedy answers on the CPU profile (OpenVINO, float32, equal to
transformers' `generate()` token for token) are recorded here, with the checkpoint's digest, so a GPU node needs
no OpenVINO and no CPU server to compare against them; `--cpu-endpoint` compares with a live CPU server instead.
A server test (tests/benchmarks/test_gpu_smoke.py) re-records them from a real CPU server and fails when this
file no longer matches, so the file cannot go stale.

Each answer carries the smallest gap between the two most likely tokens along its greedy path (logits, from
transformers in float32): float32 on the GPU differs from the CPU in the last bits, so only a path whose every
step is decided by a clear gap is a fair token-for-token test. The prompts were chosen for gaps >= 1e-3, three
orders of magnitude above float32 rounding of these logits (TF32 is turned off for the smoke build:
NVIDIA_TF32_OVERRIDE=0).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mentallama_bench.gpu_smoke_client import greedy_inputs, stream_request

__all__ = ["MAX_TOKENS", "PROMPTS", "REFERENCE_FILE", "Reference", "ReferenceAnswer", "ask_greedy", "load_reference"]

REFERENCE_FILE = Path(__file__).with_name("gpu_smoke_reference.json")
MAX_TOKENS = 24
PROMPTS = (
    "Hello world",
    "I cannot sleep before exams.",
    "Question: does the poster suffer from stress?",
    "Since I moved here I eat alone every night.",
)
STREAMING_PROMPT = "Tired 😞 café 漢字 and ok 🙂"
"""The streaming check's prompt: multi-byte characters in, the engine's chunks (byte-fallback tokens among them)
out."""


@dataclass(frozen=True)
class ReferenceAnswer:
    prompt: str
    text: str
    num_output_tokens: int
    min_margin: float


@dataclass(frozen=True)
class Reference:
    checkpoint: str
    checkpoint_sha256: str
    max_tokens: int
    answers: tuple[ReferenceAnswer, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def load_reference(path: Path = REFERENCE_FILE) -> Reference:
    data = json.loads(path.read_text(encoding="utf-8"))
    answers = tuple(ReferenceAnswer(**a) for a in data.pop("answers"))
    return Reference(answers=answers, **data)


def ask_greedy(url: str, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> tuple[str, int, list[str]]:
    """(text, output tokens, errors) of one non-streamed greedy request for the prompt's continuation."""
    answer = stream_request(url, model, greedy_inputs(prompt, max_tokens, stream=False),
                            ["text_output", "num_output_tokens"])  # fmt: skip
    return answer.text, answer.num_output_tokens.get((0, 0), -1), answer.errors
