"""The task catalog: names, aliases, questions and labels are the issue's contract."""

from __future__ import annotations

import pytest

from mentallama.tasks import TASKS, TaskInfo, get_task, task_names

# The issue's table, written out again so that an accidental edit of the catalog fails here.
EXPECTED = {
    "DR": (("depression",), "Does the poster suffer from depression?", ("yes", "no")),
    "CLP": (("clp",), "Does the poster suffer from depression?", ("yes", "no")),
    "dreaddit": (("stress",), "Does the poster suffer from stress?", ("yes", "no")),
    "loneliness": ((), "Does the poster suffer from loneliness?", ("yes", "no")),
    "Irf": (("irf", "interpersonal-risk"), "Does the post show risk of {aspect}?", ("yes", "no")),
    "MultiWD": (
        ("multiwd", "wellness"),
        "Does the {aspect} wellness dimension exist in the post?",
        ("yes", "no"),
    ),
    "SAD": (
        ("stress-cause",),
        "What is the stress cause of this post?",
        (
            "school",
            "financial problem",
            "family issues",
            "social relationships",
            "work",
            "health issues",
            "emotional turmoil",
            "everyday decision making",
            "other causes",
        ),
    ),
    "CAMS": (
        ("depression-cause",),
        "What cause of depression does this post show?",
        ("none", "bias or abuse", "jobs and career", "medication", "relationship", "alienation"),
    ),
    "T-SID": (
        ("t-sid", "suicide"),
        "What mental disorder does this post show?",
        ("no mental disorders", "suicide or self-harm tendency", "depression", "ptsd"),
    ),
    "SWMH": (
        ("swmh", "disorder"),
        "What mental disorder symptoms does this post show?",
        ("no mental disorders", "suicide", "depression", "anxiety", "bipolar disorder"),
    ),
}


def test_catalog_matches_the_issue_table() -> None:
    assert list(TASKS) == list(EXPECTED)
    for name, (aliases, question, labels) in EXPECTED.items():
        task = TASKS[name]
        assert (task.aliases, task.question, task.labels) == (aliases, question, labels)


def test_aspects() -> None:
    assert TASKS["Irf"].aspects == ("thwarted belongingness", "perceived burdensomeness")
    assert TASKS["MultiWD"].aspects == (
        "spiritual",
        "physical",
        "intellectual",
        "social",
        "vocational",
        "emotional",
    )
    assert [t.name for t in TASKS.values() if t.aspects] == ["Irf", "MultiWD"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DR", "DR"),
        ("dr", "DR"),
        ("Depression", "DR"),
        ("clp", "CLP"),
        ("STRESS", "dreaddit"),
        ("Dreaddit", "dreaddit"),
        ("interpersonal-risk", "Irf"),
        ("IRF", "Irf"),
        ("wellness", "MultiWD"),
        ("multiwd", "MultiWD"),
        ("stress-cause", "SAD"),
        ("depression-cause", "CAMS"),
        ("t-sid", "T-SID"),
        ("suicide", "T-SID"),
        ("swmh", "SWMH"),
        ("disorder", "SWMH"),
        ("  loneliness ", "loneliness"),
    ],
)
def test_get_task_is_case_insensitive_and_knows_aliases(name: str, expected: str) -> None:
    assert get_task(name).name == expected


def test_get_task_passes_taskinfo_through() -> None:
    assert get_task(TASKS["SAD"]) is TASKS["SAD"]


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(ValueError) as err:
        get_task("anxiety")
    message = str(err.value)
    assert "'anxiety'" in message
    for name in ("DR", "T-SID", "stress-cause", "wellness"):
        assert name in message


def test_task_names() -> None:
    assert task_names() == list(EXPECTED)
    with_aliases = task_names(aliases=True)
    assert with_aliases[:4] == ["DR", "depression", "CLP", "clp"]
    assert len(with_aliases) == len(EXPECTED) + sum(len(aliases) for aliases, _, _ in EXPECTED.values())
    assert all(get_task(name) is get_task(name.upper()) for name in with_aliases)


def test_question_for_validates_aspects() -> None:
    irf = TASKS["Irf"]
    want = "Does the post show risk of perceived burdensomeness?"
    assert irf.question_for("Perceived_Burdensomeness") == want
    with pytest.raises(ValueError, match="thwarted belongingness, perceived burdensomeness"):
        irf.question_for(None)
    with pytest.raises(ValueError, match="valid aspects: thwarted belongingness"):
        irf.question_for("loneliness")
    with pytest.raises(ValueError, match="takes no aspect"):
        TASKS["DR"].question_for("social")


def test_is_binary_and_to_dict() -> None:
    assert [t.name for t in TASKS.values() if t.is_binary] == [
        "DR",
        "CLP",
        "dreaddit",
        "loneliness",
        "Irf",
        "MultiWD",
    ]
    d = TASKS["MultiWD"].to_dict()
    assert d["labels"] == ["yes", "no"] and d["aspects"][0] == "spiritual" and d["name"] == "MultiWD"
    assert isinstance(TASKS["DR"], TaskInfo)
