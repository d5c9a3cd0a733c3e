"""Labels tied to the task asked (issue 22): verdicts about another task, conflicts, option letters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mentallama.parsing import CONFLICT_BELOW, parse_response, read_rules
from mentallama.tasks import get_task

FIXTURES = Path(__file__).parent / "fixtures"
IMHI_DIRS = (Path(__file__).resolve().parents[2].parent / "shared" / "imhi", Path("/work/shared/imhi"))
IMHI = next((d for d in IMHI_DIRS if (d / "test_instruction").is_dir()), None)

WORK = ("The poster's manager keeps adding deadlines at work and they worry about losing their job, so work "
        "is the main source of their stress.")  # fmt: skip


def test_a_stress_verdict_is_no_label_for_loneliness() -> None:
    got = parse_response("loneliness", "Yes, the poster suffers from stress.")
    assert (got.label, got.label_source, got.matched_by) == (None, None, None)
    assert got.off_task == "stress"
    assert got.note is not None and "stress" in got.note and "loneliness" in got.note


def test_off_task_verdict_with_an_explanation_about_the_task_reads_the_explanation() -> None:
    text = ("Yes, the poster suffers from stress. Reasoning: Since their friends moved away the poster feels "
            "alone every evening, which indicates loneliness.")  # fmt: skip
    got = parse_response("loneliness", text)
    assert (got.label, got.matched_by, got.off_task) == ("yes", "explanation", "stress")
    assert "read from its explanation" in (got.note or "")
    # "No" about stress is not "no" for loneliness either.
    text = "No, the poster does not suffer from stress. Reasoning: The poster says they feel lonely and isolated."
    assert parse_response("loneliness", text).label == "yes"


def test_off_task_explanation_is_not_read_by_the_label_model() -> None:
    """DR has a label model; an explanation about stress alone must not become a depression label."""
    text = "Yes, the poster suffers from stress. Reasoning: The poster has deadlines at work and cannot sleep."
    got = parse_response("DR", text)
    assert (got.label, got.confidence, got.off_task) == (None, None, "stress")
    # About depression: the model may read it.
    text = "Yes, the poster suffers from stress. Reasoning: The poster feels hopeless and empty, signs of depression."
    assert parse_response("DR", text).label == "yes"


@pytest.mark.parametrize(
    ("task", "text", "subject"),
    [
        ("dreaddit", "This post shows the stress cause related to work. Reasoning: Deadlines.", "stress cause"),
        ("DR", "This post shows causes of depression related to alienation. Reasoning: r", "depression cause"),
        ("CAMS", "This post shows the stress cause related to relationships. Reasoning: r", "stress cause"),
        ("SAD", "Yes, the poster suffers from depression. Reasoning: r", "depression"),
        ("SWMH", "This post shows PTSD. Reasoning: r", "ptsd"),
        ("Irf", "Yes, this wellness dimension exists in the post. Reasoning: r", "wellness dimension"),
        ("MultiWD", "Yes, the post shows this risk.", "interpersonal risk"),
    ],
)
def test_verdicts_of_other_tasks_are_off_task(task: str, text: str, subject: str) -> None:
    assert read_rules(task, text).off_task == subject
    assert parse_response(task, text, label_model=None).off_task == subject


@pytest.mark.parametrize(
    ("task", "text", "label"),
    [
        ("SAD", "The poster is stressed about exams.", "school"),  # a label of the task beside "stressed"
        ("T-SID", "This post shows depression. Reasoning: r", "depression"),
        ("DR", "Yes, the poster suffers from depression and stress. Reasoning: r", "yes"),
        ("loneliness", "Yes. Reasoning: The poster feels alone.", "yes"),  # no subject named: on-task
        ("DR", "The poster describes stress at work. They feel hopeless, a sign of depression.", "yes"),
    ],
)
def test_on_task_verdicts_are_not_flagged(task: str, text: str, label: str) -> None:
    got = parse_response(task, text, label_model=None)
    assert (got.label, got.off_task, got.note) == (label, None, None)


def test_a_stated_label_the_explanation_argues_against_is_flagged() -> None:
    """The issue's demo answer: 'school' stated, the explanation is about work."""
    got = parse_response("SAD", f"This post shows the stress cause related to school. Reasoning: {WORK}")
    assert (got.label, got.label_source) == ("school", "stated")  # kept: the answer states it
    assert got.conflict and got.confidence is not None and got.confidence < CONFLICT_BELOW
    assert got.note is not None and "'work'" in got.note and "'school'" in got.note
    agreed = parse_response("SAD", f"This post shows the stress cause related to work. Reasoning: {WORK}")
    assert (agreed.label, agreed.conflict, agreed.note) == ("work", False, None)
    assert agreed.confidence is not None and agreed.confidence > 0.5


def test_no_conflict_without_a_label_model_or_for_inferred_labels() -> None:
    text = f"This post shows the stress cause related to school. Reasoning: {WORK}"
    assert not parse_response("SAD", text, label_model=None).conflict
    inferred = parse_response("SAD", f"Reasoning: {WORK}")
    assert (inferred.label_source, inferred.conflict) == ("inferred", False)


@pytest.mark.parametrize("answer", ["Answer: B", "The answer is (B).", "B", "b)"])
def test_an_option_chosen_by_its_letter_is_stated(answer: str) -> None:
    text = f"A. School\nB. Work\nC. Family issues\nD. Financial problem\n\n{answer}\n\nReasoning: {WORK}"
    got = parse_response("SAD", text)
    assert (got.label, got.label_source, got.matched_by) == ("work", "stated", "verdict")
    assert read_rules("SAD", text).how == "answer"


def test_a_letter_that_is_not_listed_chooses_nothing() -> None:
    text = f"A. School\nB. Work\n\nAnswer: F\n\nReasoning: {WORK}"
    assert read_rules("SAD", text).how == "options"


def test_an_option_list_then_a_plain_verdict_keeps_the_verdict() -> None:
    """Option lists alone go to the label model; a plainly stated verdict after the list is stated."""
    listed = "A. School\nB. Work\nC. Family issues\n\n"
    text = f"{listed}This post shows the stress cause related to school. Reasoning: {WORK}"
    got = parse_response("SAD", text)
    assert (got.label, got.label_source, got.conflict) == ("school", "stated", True)
    listed_only = parse_response("SAD", f"{listed}Reasoning: {WORK}")
    assert (listed_only.label, listed_only.label_source) == ("work", "inferred")
    binary = parse_response("DR", "A. Yes\nB. No\n\nThe answer is (A).\nReasoning: The poster feels empty.")
    assert (binary.label, binary.label_source) == ("yes", "stated")


def test_a_concluding_label_of_no_is_no() -> None:
    text = ("The post exhibits some loneliness. Therefore, the assigned label of \"No\" indicates that the poster "
            "does not suffer from depression based on the emotions expressed in the post.")  # fmt: skip
    assert parse_response("DR", text, label_model=None).label == "no"


def test_fixture_answers_are_on_task() -> None:
    for line in (FIXTURES / "responses.jsonl").read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        assert parse_response(case["task"], case["text"]).off_task is None, case


@pytest.mark.skipif(IMHI is None, reason="IMHI data not found at ../shared/imhi (not needed outside dev/CI)")
def test_no_reference_answer_is_off_task_and_few_conflict() -> None:
    """The references answer the question asked: none is off-task; conflicts are the references whose
    explanation argues against their verdict (a few percent, see README)."""
    assert IMHI is not None
    n = conflicts = 0
    for split in ("test_instruction", "expert"):
        for path in sorted((IMHI / split).glob("*.csv")):
            task = get_task(path.stem)
            with path.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    got = parse_response(task, row["gpt-3.5-turbo"])
                    assert got.off_task is None, (task.name, row["gpt-3.5-turbo"][:200])
                    n += 1
                    conflicts += got.conflict
    assert 0 < conflicts < 0.05 * n


def test_describe_label_says_where_the_label_comes_from() -> None:
    stated = parse_response("SAD", f"This post shows the stress cause related to school. Reasoning: {WORK}")
    assert stated.describe_label().startswith("school (stated in the answer; label model 0.")
    assert stated.describe_label().endswith("the explanation argues otherwise)")
    inferred = parse_response("SAD", f"Reasoning: {WORK}")
    assert inferred.describe_label().startswith("work (inferred from the explanation; label model 0.")
    assert parse_response("CAMS", "This post shows no causes of depression.").describe_label() == (
        "none (stated in the answer)")
    assert parse_response("DR", "hm").describe_label() == "(none found)"
