"""Prompt templates: the IMHI query byte for byte, and the LLaMA-2 chat wrapping."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mentallama.prompts import aspect_of, build_prompt, build_query, split_query, wrap_chat
from mentallama.tasks import TASKS

IMHI_DIRS = (Path(__file__).resolve().parents[2].parent / "shared" / "imhi", Path("/work/shared/imhi"))
IMHI = next((d for d in IMHI_DIRS if (d / "test_instruction").is_dir()), None)

# Posts of our own that stress the template: quotes, newlines, tabs, non-ASCII, braces, edges.
POSTS = [
    "I can't sleep anymore.",
    'My mom said "you\'ll be fine" and then "stop whining".',
    "Line one.\nLine two.\n\nLine four after a blank line.\n",
    "  leading and trailing spaces\t ",
    "Ich bin so müde. Je suis épuisé. 我很累。 😔",
    "Curly “quotes” and ‘single’ ones — plus a dash…",
    'Ends with a quote"',
    "Template lookalikes: {post} {aspect} {0} %s",
    'A post that contains " Question: Is this a trap? inside',
]

# The expected query for each task, written out by hand from the benchmark's format.
QUESTIONS = {
    ("DR", None): "Does the poster suffer from depression?",
    ("CLP", None): "Does the poster suffer from depression?",
    ("dreaddit", None): "Does the poster suffer from stress?",
    ("loneliness", None): "Does the poster suffer from loneliness?",
    ("Irf", "thwarted belongingness"): "Does the post show risk of thwarted belongingness?",
    ("Irf", "perceived burdensomeness"): "Does the post show risk of perceived burdensomeness?",
    ("MultiWD", "spiritual"): "Does the spiritual wellness dimension exist in the post?",
    ("MultiWD", "physical"): "Does the physical wellness dimension exist in the post?",
    ("MultiWD", "intellectual"): "Does the intellectual wellness dimension exist in the post?",
    ("MultiWD", "social"): "Does the social wellness dimension exist in the post?",
    ("MultiWD", "vocational"): "Does the vocational wellness dimension exist in the post?",
    ("MultiWD", "emotional"): "Does the emotional wellness dimension exist in the post?",
    ("SAD", None): "What is the stress cause of this post?",
    ("CAMS", None): "What cause of depression does this post show?",
    ("T-SID", None): "What mental disorder does this post show?",
    ("SWMH", None): "What mental disorder symptoms does this post show?",
}


def test_questions_cover_every_task_and_aspect() -> None:
    expected = {(t.name, a) for t in TASKS.values() for a in (t.aspects or (None,))}
    assert set(QUESTIONS) == expected


@pytest.mark.parametrize(("task", "aspect"), list(QUESTIONS))
@pytest.mark.parametrize("post", POSTS)
def test_query_is_the_imhi_query_byte_for_byte(task: str, aspect: str | None, post: str) -> None:
    expected = 'Consider this post: "' + post + '" Question: ' + QUESTIONS[(task, aspect)]
    assert build_prompt(task, post, aspect=aspect) == expected
    assert build_query(task, post, aspect=aspect).encode("utf-8") == expected.encode("utf-8")


def test_query_example_by_hand() -> None:
    assert (
        build_prompt("stress-cause", "work, it has been a stressful week! hope it gets better.")
        == 'Consider this post: "work, it has been a stressful week! hope it gets better." '
        "Question: What is the stress cause of this post?"
    )


def test_chat_without_system_prompt() -> None:
    assert build_prompt("DR", "I feel empty.", chat=True) == (
        '[INST] Consider this post: "I feel empty." Question: Does the poster suffer from depression? [/INST]'
    )


def test_chat_with_system_prompt() -> None:
    got = build_prompt("MultiWD", "Went hiking.", aspect="physical", chat=True, system_prompt="Be careful.")
    assert got == (
        "[INST] <<SYS>>\nBe careful.\n<</SYS>>\n\n"
        'Consider this post: "Went hiking." Question: Does the physical wellness dimension exist in the post?'
        " [/INST]"
    )


def test_chat_never_adds_bos() -> None:
    for chat_prompt in (wrap_chat("q"), wrap_chat("q", "sys"), build_prompt("SAD", "x", chat=True)):
        assert not chat_prompt.startswith("<s>")
        assert "<s>" not in chat_prompt and "</s>" not in chat_prompt


def test_system_prompt_without_chat_is_refused() -> None:
    with pytest.raises(ValueError, match="chat=True"):
        build_prompt("DR", "x", system_prompt="sys")


def test_unknown_task_names_valid_choices() -> None:
    with pytest.raises(ValueError, match="valid tasks: DR, depression, CLP"):
        build_prompt("PHQ-9", "x")


@pytest.mark.parametrize(
    ("task", "aspect", "match"),
    [
        ("Irf", None, "needs an aspect, one of: thwarted belongingness, perceived burdensomeness"),
        ("MultiWD", None, "spiritual, physical, intellectual, social, vocational, emotional"),
        ("MultiWD", "financial", "valid aspects: spiritual, physical"),
        ("Irf", "social", "valid aspects: thwarted belongingness"),
        ("SAD", "work", "takes no aspect"),
        ("DR", "social", "takes no aspect"),
    ],
)
def test_aspect_errors_name_the_choices(task: str, aspect: str | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_prompt(task, "a post", aspect=aspect)


def test_aspect_spelling_is_forgiven() -> None:
    want = build_prompt("Irf", "x", aspect="thwarted belongingness")
    assert build_prompt("irf", "x", aspect="Thwarted_Belongingness") == want
    assert build_prompt("irf", "x", aspect="  thwarted-belongingness ") == want


@pytest.mark.parametrize("post", ["", "   \n\t"])
def test_empty_post_is_refused(post: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        build_prompt("DR", post)


def test_non_string_post_is_refused() -> None:
    with pytest.raises(TypeError):
        build_prompt("DR", 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("post", POSTS)
def test_split_query_inverts_build_query(post: str) -> None:
    for (task, aspect), question in QUESTIONS.items():
        assert split_query(build_query(task, post, aspect=aspect)) == (post, question)
        assert aspect_of(task, question) == aspect


def test_split_query_rejects_other_text() -> None:
    with pytest.raises(ValueError):
        split_query("What is the stress cause of this post?")


def test_aspect_of_rejects_a_question_of_another_task() -> None:
    with pytest.raises(ValueError):
        aspect_of("DR", "Does the poster suffer from stress?")


@pytest.mark.skipif(IMHI is None, reason="IMHI data not found at ../shared/imhi (not needed outside dev/CI)")
def test_every_imhi_query_is_rebuilt_byte_identical() -> None:
    assert IMHI is not None
    files = sorted((IMHI / "test_instruction").glob("*.csv")) + sorted((IMHI / "expert").glob("*.csv"))
    checked = 0
    for path in files:
        task = path.stem  # the file names are task names or aliases (t-sid, swmh)
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                query = row["query"]
                post, question = split_query(query)
                rebuilt = build_prompt(task, post, aspect=aspect_of(task, question))
                assert rebuilt.encode("utf-8") == query.encode("utf-8"), f"{path.name} row {i}"
                checked += 1
    assert checked > 8000
