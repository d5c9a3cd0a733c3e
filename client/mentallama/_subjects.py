"""What a verdict is about: the subject each IMHI task asks about, to tell an answer to another question.

MentaLLaMA sometimes answers another IMHI question than the one asked: asked about loneliness it may
write "Yes, the poster suffers from stress." The leading "Yes" would read as a verdict for loneliness,
but it is a verdict about stress. :func:`off_task_subject` names the subject of such a verdict sentence:
it is off-task when it names the subject of another task (``stress``, ``the stress cause``,
``this risk``, ``mental disorders``, ``PTSD``...) and nothing the asked task is about (its own subject,
or for a multi-class task one of its labels). A sentence that names no subject ("Yes.") is on-task.

Subjects are matched as whole words, case-insensitively, the more specific first where they overlap, so
"the stress cause" is SAD's subject and not dreaddit's "stress", and "causes of depression" is
CAMS's and not DR's.
"""

from __future__ import annotations

import re

from .tasks import TaskInfo

__all__ = ["ABOUT", "PHRASES", "SUBJECTS", "TASK_SUBJECTS", "mentions_subject", "off_task_subject", "subjects_in"]

_F = re.IGNORECASE

SUBJECTS: dict[str, str] = {
    "depression": r"depress\w*",
    "stress": r"stress(?:ed|ful|es)?",
    "loneliness": r"lonel\w*|lonesome",
    "interpersonal risk": r"(?:this|the|a|any|no) risk|risks? of|at risk|thwarted belongingness"
    r"|perceived burdensomeness|belongingness|burdensomeness",
    "wellness dimension": r"wellness(?: dimensions?)?|(?:this|the) dimension",
    "stress cause": r"(?:the )?stress(?:[- ]related)? causes?|causes? (?:of|for) (?:the |their |this )?stress"
    r"|stressors?|sources? of (?:the |their )?stress",
    "depression cause": r"causes? of (?:the |their |this )?depression|depression causes?",
    "mental disorder": r"mental (?:disorders?|illness(?:es)?|health (?:disorders?|conditions?))",
    "suicide": r"suicid\w*|self-harm\w*|self harm\w*",
    "ptsd": r"ptsd|post-?\s?traumatic stress(?: disorder)?",
    "anxiety": r"anxiety|anxious",
    "bipolar disorder": r"bipolar(?: disorder)?",
}
"""Name -> regex of each subject a verdict can be about (the reference answers' wording and its variants)."""

TASK_SUBJECTS: dict[str, frozenset[str]] = {
    "DR": frozenset({"depression"}),
    "CLP": frozenset({"depression"}),
    "dreaddit": frozenset({"stress"}),
    "loneliness": frozenset({"loneliness"}),
    "Irf": frozenset({"interpersonal risk"}),
    "MultiWD": frozenset({"wellness dimension"}),
    "SAD": frozenset({"stress cause"}),
    "CAMS": frozenset({"depression cause"}),
    "T-SID": frozenset({"mental disorder", "suicide", "ptsd", "depression"}),
    "SWMH": frozenset({"mental disorder", "suicide", "depression", "anxiety", "bipolar disorder"}),
}
"""The subjects each task is about (T-SID and SWMH: their labels are disorders, each a subject)."""

ABOUT: dict[str, str] = {
    "DR": "depression", "CLP": "depression", "dreaddit": "stress", "loneliness": "loneliness",
    "Irf": "interpersonal risk", "MultiWD": "a wellness dimension", "SAD": "the stress cause",
    "CAMS": "the cause of depression", "T-SID": "mental disorders", "SWMH": "mental disorders",
}
"""What each task asks about, in words for notes."""

PHRASES: dict[str, str] = {"stress cause": "the stress cause", "depression cause": "the cause of depression",
                           "wellness dimension": "a wellness dimension", "mental disorder": "mental disorders",
                           "ptsd": "PTSD"}
"""Subjects in words for notes (the others read as they are)."""

_QUESTION_SUBJECTS = frozenset({"stress cause", "depression cause", "interpersonal risk", "wellness dimension",
                                "mental disorder"})
"""Subjects that name another task's question, not a condition: a label of the asked task beside one
("the stress cause related to relationships", asked CAMS) does not make the sentence on-task."""

# One pass for all subjects: at each position the longer, more specific subjects are tried first
# ("stress cause" and "post-traumatic stress" before "stress", "causes of depression" before "depression").
_FIRST = ("stress cause", "depression cause", "ptsd")
_ORDER = [*_FIRST, *(name for name in SUBJECTS if name not in _FIRST)]
_GROUPS = {f"s{i}": name for i, name in enumerate(_ORDER)}
_SUBJECT_RE = re.compile(
    r"(?<!\w)(?:" + "|".join(rf"(?P<s{i}>{SUBJECTS[name]})" for i, name in enumerate(_ORDER)) + r")(?!\w)", _F
)


def subjects_in(text: str) -> list[str]:
    """Subjects named in ``text``, left to right."""
    return [_GROUPS[m.lastgroup] for m in _SUBJECT_RE.finditer(text) if m.lastgroup is not None]


def mentions_subject(task: TaskInfo, text: str, label_mentioned: bool = False) -> bool:
    """``text`` names what ``task`` is about (``label_mentioned``: it names one of the task's labels)."""
    return label_mentioned or bool(TASK_SUBJECTS[task.name].intersection(subjects_in(text)))


def off_task_subject(task: TaskInfo, sentence: str, label_mentioned: bool = False) -> str | None:
    """The other task's subject a verdict ``sentence`` is about, or ``None`` when it is on-task: it
    names the asked task's subject, or no subject, or (``label_mentioned``) one of the task's labels
    and no other task's question."""
    named = subjects_in(sentence)
    own = TASK_SUBJECTS[task.name]
    if own.intersection(named):
        return None
    foreign = [name for name in named if name not in own]
    if label_mentioned:  # "The poster is stressed about school" (asked SAD) is about school
        foreign = [name for name in foreign if name in _QUESTION_SUBJECTS]
    return foreign[0] if foreign else None
