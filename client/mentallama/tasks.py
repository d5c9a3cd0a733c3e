"""The IMHI task catalog, declared once.

Every other part of the SDK (prompt templating, response parsing, evaluation, the CLI's
``--task`` choices) reads this table instead of repeating task names, questions or labels.
The questions are the exact wording of the IMHI benchmark queries; the labels are the
canonical spelling that :func:`mentallama.parsing.parse_response` returns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TASKS", "TaskInfo", "get_task", "task_names"]

YES_NO: tuple[str, ...] = ("yes", "no")


@dataclass(frozen=True)
class TaskInfo:
    """One IMHI task: how to ask it and which answers are valid."""

    name: str
    """Canonical task name as the IMHI benchmark spells it (``"DR"``, ``"T-SID"``, ...)."""

    aliases: tuple[str, ...]
    """Other accepted names (all names match case-insensitively; lower-case spellings are listed
    for ``--task`` choices)."""

    question: str
    """Question text of the query; contains ``{aspect}`` when the task has aspects."""

    labels: tuple[str, ...]
    """Canonical labels, in the order of the task table (``("yes", "no")`` for binary tasks)."""

    aspects: tuple[str, ...] = ()
    """Values ``{aspect}`` may take (Irf: the risk, MultiWD: the wellness dimension); empty if none."""

    description: str = ""
    """One line for ``--help`` and listings."""

    @property
    def is_binary(self) -> bool:
        """True for the yes/no tasks."""
        return self.labels == YES_NO

    def question_for(self, aspect: str | None = None) -> str:
        """The question for ``aspect``, validated; raises ``ValueError`` naming the valid aspects."""
        if not self.aspects:
            if aspect is not None:
                raise ValueError(f"task {self.name!r} takes no aspect (got {aspect!r})")
            return self.question
        if aspect is None:
            raise ValueError(f"task {self.name!r} needs an aspect, one of: {', '.join(self.aspects)}")
        return self.question.format(aspect=self.normalize_aspect(aspect))

    def normalize_aspect(self, aspect: str) -> str:
        """Canonical spelling of ``aspect``: case, ``_``/``-`` and extra spaces are forgiven."""
        key = " ".join(str(aspect).replace("_", " ").replace("-", " ").lower().split())
        if key in self.aspects:
            return key
        raise ValueError(
            f"unknown aspect {aspect!r} for task {self.name!r}; valid aspects: {', '.join(self.aspects)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_CATALOG: tuple[TaskInfo, ...] = (
    TaskInfo(
        name="DR",
        aliases=("depression",),
        question="Does the poster suffer from depression?",
        labels=YES_NO,
        description="Depression detection (Reddit).",
    ),
    TaskInfo(
        name="CLP",
        aliases=("clp",),
        question="Does the poster suffer from depression?",
        labels=YES_NO,
        description="Depression detection (CLPsych 2015).",
    ),
    TaskInfo(
        name="dreaddit",
        aliases=("stress",),
        question="Does the poster suffer from stress?",
        labels=YES_NO,
        description="Stress detection (Dreaddit).",
    ),
    TaskInfo(
        name="loneliness",
        aliases=(),
        question="Does the poster suffer from loneliness?",
        labels=YES_NO,
        description="Loneliness detection.",
    ),
    TaskInfo(
        name="Irf",
        aliases=("irf", "interpersonal-risk"),
        question="Does the post show risk of {aspect}?",
        labels=YES_NO,
        aspects=("thwarted belongingness", "perceived burdensomeness"),
        description="Interpersonal risk factors of suicide (one risk per query).",
    ),
    TaskInfo(
        name="MultiWD",
        aliases=("multiwd", "wellness"),
        question="Does the {aspect} wellness dimension exist in the post?",
        labels=YES_NO,
        aspects=("spiritual", "physical", "intellectual", "social", "vocational", "emotional"),
        description="Wellness dimensions (one dimension per query).",
    ),
    TaskInfo(
        name="SAD",
        aliases=("stress-cause",),
        question="What is the stress cause of this post?",
        labels=(
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
        description="Stress cause detection (SAD).",
    ),
    TaskInfo(
        name="CAMS",
        aliases=("depression-cause",),
        question="What cause of depression does this post show?",
        labels=("none", "bias or abuse", "jobs and career", "medication", "relationship", "alienation"),
        description="Depression cause detection (CAMS).",
    ),
    TaskInfo(
        name="T-SID",
        aliases=("t-sid", "suicide"),
        question="What mental disorder does this post show?",
        labels=("no mental disorders", "suicide or self-harm tendency", "depression", "ptsd"),
        description="Mental disorder / suicide tendency detection (T-SID, Twitter).",
    ),
    TaskInfo(
        name="SWMH",
        aliases=("swmh", "disorder"),
        question="What mental disorder symptoms does this post show?",
        labels=("no mental disorders", "suicide", "depression", "anxiety", "bipolar disorder"),
        description="Mental disorder detection (SWMH, Reddit).",
    ),
)

TASKS: dict[str, TaskInfo] = {t.name: t for t in _CATALOG}
"""Canonical name -> task, in table order."""


def _build_lookup() -> dict[str, TaskInfo]:
    lookup: dict[str, TaskInfo] = {}
    for task in _CATALOG:
        for key in (task.name, *task.aliases):
            key = key.lower()
            # A silent collision would route one task's posts to another's question.
            if key in lookup and lookup[key] is not task:
                raise RuntimeError(f"task name {key!r} is declared twice")
            lookup[key] = task
    return lookup


_LOOKUP = _build_lookup()


def get_task(task: str | TaskInfo) -> TaskInfo:
    """The catalog entry for a task name or alias (case-insensitive).

    Raises ``ValueError`` naming the valid choices when the name is unknown.
    """
    if isinstance(task, TaskInfo):
        return task
    found = _LOOKUP.get(str(task).strip().lower())
    if found is None:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(task_names(aliases=True))}")
    return found


def task_names(*, aliases: bool = False) -> list[str]:
    """Canonical task names in table order; with ``aliases=True`` the aliases follow each name."""
    if not aliases:
        return list(TASKS)
    return [key for t in _CATALOG for key in (t.name, *t.aliases)]
