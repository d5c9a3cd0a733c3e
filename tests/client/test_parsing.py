"""parse_response: hand-written answers in every style, junk, random strings, and the IMHI references."""

from __future__ import annotations

import csv
import json
import random
import string
from pathlib import Path

import pytest

from mentallama.parsing import LABEL_PATTERNS, parse_response
from mentallama.tasks import TASKS
from mentallama.types import Analysis, Generation

FIXTURES = Path(__file__).parent / "fixtures"
IMHI_DIRS = (Path(__file__).resolve().parents[2].parent / "shared" / "imhi", Path("/work/shared/imhi"))
IMHI = next((d for d in IMHI_DIRS if (d / "test_instruction").is_dir()), None)
NO_IMHI = "IMHI data not found at ../shared/imhi (not needed outside dev/CI)"

CASES = [json.loads(line) for line in (FIXTURES / "responses.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['task']}: {c['style']}" for c in CASES])
def test_fixture_answers(case: dict) -> None:
    """What the rules read (``label_model=None``); tests/client/test_label_model.py covers the model."""
    got = parse_response(case["task"], case["text"], label_model=None)
    assert got.label == case["label"]
    assert got.raw == case["text"]
    assert got.task == TASKS[case["task"]].name
    if "reasoning" in case:
        assert got.reasoning == case["reasoning"]
    if "matched_by" in case:
        assert got.matched_by == case["matched_by"]
    assert (got.matched_by is None) == (got.label is None)


def test_fixtures_cover_every_label_of_every_task() -> None:
    seen = {(c["task"], c["label"]) for c in CASES}
    for task in TASKS.values():
        for label in task.labels:
            assert (task.name, label) in seen, (task.name, label)


def test_label_patterns_match_the_catalog() -> None:
    for name, patterns in LABEL_PATTERNS.items():
        assert tuple(patterns) == TASKS[name].labels


def test_reasoning_drops_label_sentence_and_marker() -> None:
    text = "  \nThis post shows the stress cause related to work. Reasoning:  Long shifts.\n"
    got = parse_response("SAD", text)
    assert (got.label, got.reasoning, got.matched_by) == ("work", "Long shifts.", "verdict")


def test_reasoning_without_marker_is_the_text_after_the_verdict() -> None:
    got = parse_response("CAMS", "This post shows no causes of depression.\nThe poster shares a recipe.")
    assert (got.label, got.reasoning) == ("none", "The poster shares a recipe.")


def test_reasoning_first_keeps_the_whole_explanation() -> None:
    text = "Reasoning: The poster lost their job. Therefore, the cause of depression is jobs and career."
    got = parse_response("CAMS", text)
    assert got.label == "jobs and career"
    assert got.reasoning == text[len("Reasoning: ") :]


def test_task_alias_is_accepted_and_canonicalised() -> None:
    assert parse_response("stress", "Yes, the poster suffers from stress.").task == "dreaddit"


def test_unknown_task_raises() -> None:
    with pytest.raises(ValueError, match="valid tasks"):
        parse_response("nope", "Yes.")


def test_non_string_raises_type_error() -> None:
    with pytest.raises(TypeError):
        parse_response("DR", None)  # type: ignore[arg-type]


def test_very_long_text_is_parsed_quickly() -> None:
    filler = "The poster talks about the weather and a new bicycle. " * 4000  # ~220 KB
    verdict = "Therefore, the poster does not suffer from depression."
    got = parse_response("DR", "Reasoning: " + filler + verdict)
    assert got.label == "no"
    assert parse_response("SAD", "work, " * 20000).label == "work"


def test_random_strings_never_raise() -> None:
    """Property test with a seeded generator: any str parses, label is canonical or None."""
    rng = random.Random(20240601)
    alphabet = string.printable + "éüßñ中文😔\u2019\u201c\u00a0\u0000\u200b"
    vocab = [
        "Yes",
        "No",
        "not",
        "n't",
        "Reasoning:",
        "Answer:",
        "Therefore,",
        "while",
        ".",
        ",",
        "\n",
        "suffers from",
        "shows",
        "the stress cause",
        "related to",
        "depression",
        "stress",
        "work",
        "none",
        "no mental disorders",
        "emotion turmoil",
        "such as",
    ]
    names = list(TASKS)
    for i in range(3000):
        if i % 2:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        else:
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 60)))
        task = rng.choice(names)
        got = parse_response(task, text)
        assert got.raw == text
        assert got.label is None or got.label in TASKS[task].labels
        assert isinstance(got.reasoning, str)


def test_analysis_serving_fields_and_to_dict() -> None:
    analysis = parse_response("DR", "Yes, the poster suffers from depression. Reasoning: r")
    assert analysis.parsed
    full = analysis.with_generation(
        Generation(
            "ignored",
            request_id="r1",
            num_input_tokens=10,
            num_output_tokens=5,
            latency_s=0.5,
            ttft_s=0.1,
            finish_reason="stop",
        )
    )
    assert full.label == "yes" and full.raw == analysis.raw  # the generation's text is not re-parsed
    d = full.to_dict()
    assert d == {
        "task": "DR",
        "label": "yes",
        "reasoning": "r",
        "raw": "Yes, the poster suffers from depression. Reasoning: r",
        "matched_by": "verdict",
        "label_source": "stated",
        "confidence": analysis.confidence,
        "conflict": False,
        "off_task": None,
        "note": None,
        "request_id": "r1",
        "num_input_tokens": 10,
        "num_output_tokens": 5,
        "latency_s": 0.5,
        "ttft_s": 0.1,
        "finish_reason": "stop",
    }
    assert json.loads(json.dumps(d)) == d
    assert Generation("t").to_dict()["text"] == "t"
    assert not Analysis("DR", None, "", "").parsed


# ---------------------------------------------------------------- IMHI reference answers

# Every verdict sentence the IMHI references use, mapped to its label by hand (independent of the
# parser's rules). "emotion turmoil" is the references' spelling of "emotional turmoil".
_YES_NO = {
    "DR": ("the poster suffers from depression", "the poster does not suffer from depression"),
    "CLP": ("the poster suffers from depression", "the poster does not suffer from depression"),
    "dreaddit": ("the poster suffers from stress", "the poster does not suffer from stress"),
    "loneliness": ("the poster suffers from loneliness", "the poster does not suffer from loneliness"),
    "Irf": ("the post shows this risk", "the post does not show this risk"),
    "MultiWD": (
        "this wellness dimension exists in the post",
        "this wellness dimension does not exist in the post",
    ),
}
REFERENCE_VERDICTS: dict[str, dict[str, str]] = {
    name: {f"Yes, {yes}.": "yes", f"No, {no}.": "no"} for name, (yes, no) in _YES_NO.items()
}
REFERENCE_VERDICTS["SAD"] = {
    f"This post shows the stress cause related to {phrase}.": label
    for phrase, label in [
        ("school", "school"),
        ("financial problem", "financial problem"),
        ("family issues", "family issues"),
        ("social relationships", "social relationships"),
        ("work", "work"),
        ("health issues", "health issues"),
        ("emotion turmoil", "emotional turmoil"),
        ("everyday decision making", "everyday decision making"),
    ]
} | {"This post shows other stress causes.": "other causes"}
REFERENCE_VERDICTS["CAMS"] = {
    f"This post shows causes of depression related to {label}.": label
    for label in ("bias or abuse", "jobs and career", "medication", "relationship", "alienation")
} | {"This post shows no causes of depression.": "none"}
REFERENCE_VERDICTS["T-SID"] = {
    "This post shows no mental disorders.": "no mental disorders",
    "This post shows suicide or self-harm tendency.": "suicide or self-harm tendency",
    "This post shows depression.": "depression",
    "This post shows PTSD.": "ptsd",
}
REFERENCE_VERDICTS["SWMH"] = {
    f"This post shows mental disorder symptoms related to {label}.": label
    for label in ("suicide", "depression", "anxiety", "bipolar disorder")
} | {"This post shows no mental disorder symptoms.": "no mental disorders"}


def _imhi_files() -> list[Path]:
    assert IMHI is not None
    return sorted((IMHI / "test_instruction").glob("*.csv")) + sorted((IMHI / "expert").glob("*.csv"))


@pytest.mark.skipif(IMHI is None, reason=NO_IMHI)
def test_parser_recovers_every_imhi_reference_label() -> None:
    """100% on every reference answer of test_instruction and expert, as given and reworded:
    with an ``Answer:`` prefix after blank lines, and with the verdict moved after the explanation."""
    rows = 0
    for path in _imhi_files():
        task = TASKS[next(n for n in TASKS if n.lower() == path.stem.lower())]
        verdicts = REFERENCE_VERDICTS[task.name]
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                answer = row["gpt-3.5-turbo"]
                head, marker, explanation = answer.partition("Reasoning:")
                assert marker, f"{path.name} row {i}: no 'Reasoning:'"
                expected = verdicts[head.strip()]  # KeyError = a phrasing this table does not know
                verdict = head.strip()
                variants = {
                    "as given": answer,
                    "answer prefix": "\n\n  Answer: " + answer,
                    "verdict last": f"Reasoning:{explanation} Therefore, {verdict[0].lower()}{verdict[1:]}",
                }
                for style, text in variants.items():
                    got = parse_response(task.name, text)
                    where = f"{path.name} row {i} ({style})"
                    assert got.label == expected, f"{where}: {got.label!r} != {expected!r}"
                assert parse_response(task.name, answer).reasoning == explanation.strip()
                rows += 1
    assert rows > 8000


@pytest.mark.skipif(IMHI is None, reason=NO_IMHI)
def test_imhi_reference_phrasings_cover_every_label() -> None:
    """Every canonical label except CLP's (no CLP file) occurs in the reference answers."""
    seen: set[tuple[str, str]] = set()
    for path in _imhi_files():
        task = next(n for n in TASKS if n.lower() == path.stem.lower())
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                verdict = row["gpt-3.5-turbo"].partition("Reasoning:")[0].strip()
                seen.add((task, REFERENCE_VERDICTS[task][verdict]))
    missing = {(t.name, lab) for t in TASKS.values() for lab in t.labels} - seen
    assert missing == {("CLP", "yes"), ("CLP", "no")}
