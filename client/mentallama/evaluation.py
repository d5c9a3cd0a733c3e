"""IMHI evaluation for ``mentallama eval``: load the benchmark CSVs, score predicted labels.

The IMHI CSVs hold no label column: the reference answer (column ``gpt-3.5-turbo``) is the
ground truth, so the reference label is read from it with
:func:`~mentallama.parsing.parse_response`'s rules (``label_model=None``: every reference states
its verdict plainly, so the label model is not asked). :func:`count_label_sources` counts how many
predicted labels the answers stated and how many the label model inferred. Metrics follow the
MentaLLaMA paper (accuracy and weighted F1 per task), computed here without sklearn.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .parsing import parse_response
from .prompts import aspect_of, split_query
from .tasks import TASKS, TaskInfo, get_task
from .types import Analysis

__all__ = [
    "IMHI_PARTS",
    "IMHI_REPOSITORY",
    "ImhiExample",
    "imhi_part",
    "LabelScore",
    "count_answer_flags",
    "count_label_sources",
    "TaskScore",
    "find_task_files",
    "load_imhi",
    "score",
    "score_examples",
]

ValueT = TypeVar("ValueT")

QUERY_COLUMN = "query"
REFERENCE_COLUMN = "gpt-3.5-turbo"
INSTRUCTION_SPLIT = "test_instruction"
IMHI_REPOSITORY = "https://github.com/SteveKGYang/MentalLLaMA"
IMHI_PARTS: dict[str, tuple[str, ...]] = {
    "test": ("test_data/test_instruction", INSTRUCTION_SPLIT),
    "expert": ("human_evaluation/test_instruction_expert", "expert"),
    "train": ("train_data/instruction_data", "train_instruction"),
}
"""Where each part of the IMHI data lies under a root: first as in a clone of the MentaLLaMA authors' repository
(:data:`IMHI_REPOSITORY`), then as in a folder holding the three parts side by side."""


def imhi_part(root: str | Path, part: str) -> Path | None:
    """The folder of IMHI ``part`` (``"test"``, ``"expert"`` or ``"train"``) under ``root``: a clone of the authors'
    repository or a folder with ``test_instruction/``, ``expert/``, ``train_instruction/``; ``None`` if absent."""
    for relative in IMHI_PARTS[part]:
        folder = Path(root) / relative
        if folder.is_dir():
            return folder
    return None


@dataclass(frozen=True)
class ImhiExample:
    """One row of an IMHI CSV."""

    task: str
    """Canonical task name, inferred from the file name (``t-sid.csv`` -> ``"T-SID"``)."""

    query: str
    """The IMHI query exactly as in the file (what MentaLLaMA was asked)."""

    reference: str
    """The reference answer (column ``gpt-3.5-turbo``)."""

    reference_label: str | None
    """Canonical label parsed from ``reference``; ``None`` if the reference does not say."""

    post: str | None = None
    """The post extracted from ``query``; ``None`` when the query is not in the IMHI shape."""

    aspect: str | None = None
    """Aspect asked about (Irf, MultiWD), read from the query's question."""

    row: int = 0
    """0-based data row in its file, for pointing back at the source."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LabelScore:
    """Per-label counts and scores (one-vs-rest)."""

    precision: float
    recall: float
    f1: float
    support: int
    """Number of references with this label."""


@dataclass(frozen=True)
class TaskScore:
    """Scores of one task.

    Unparseable predictions (``None``) count as wrong: they lower accuracy and the recall of the
    reference's label, and add no class of their own to the weighted average (its weights are the
    reference supports). Examples whose *reference* has no label are left out and counted in
    ``skipped``.
    """

    task: str
    """Canonical task name."""

    n: int
    """Number of scored examples."""

    accuracy: float
    """Share of predictions equal to the reference label, in [0, 1]."""

    weighted_f1: float
    """Per-label F1 averaged with the reference supports as weights (sklearn ``average="weighted"``)."""

    macro_f1: float
    """Unweighted mean of per-label F1 over the labels in the references or the predictions
    (sklearn ``average="macro"``)."""

    unparseable: int
    """Scored predictions that carry no label."""

    skipped: int = 0
    """Examples left out because their reference label is ``None``."""

    per_label: dict[str, LabelScore] = field(default_factory=dict)
    """Scores of each canonical label that occurs in the references or predictions."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return dataclasses.asdict(self)


def find_task_files(folder: str | Path) -> dict[str, Path]:
    """Task name -> CSV path in an IMHI folder.

    ``folder`` may be a clone of the authors' repository (its ``test_data/test_instruction/`` is used), a
    folder holding ``test_instruction/``, or a folder of task CSVs
    (``test_instruction/``, ``expert/``). CSVs whose name is not a task (e.g. ``notes.csv``) are
    ignored; two files of one task are an error.
    """
    root = Path(folder)
    root = imhi_part(root, "test") or root
    if not root.is_dir():
        raise FileNotFoundError(f"IMHI folder not found: {root}")
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*.csv")):
        try:
            task = get_task(path.stem)
        except ValueError:
            continue
        if task.name in found:
            raise ValueError(f"two files for task {task.name}: {found[task.name]} and {path}")
        found[task.name] = path
    return found


def _read_rows(path: Path) -> Iterable[tuple[int, str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {QUERY_COLUMN, REFERENCE_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for i, row in enumerate(reader):
            yield i, row[QUERY_COLUMN] or "", row[REFERENCE_COLUMN] or ""


def _example(task: TaskInfo, row: int, query: str, reference: str) -> ImhiExample:
    post: str | None
    aspect: str | None = None
    try:
        post, question = split_query(query)
        aspect = aspect_of(task, question)
    except ValueError:
        post = None  # still scorable: the CLI can send the query as is
    label = parse_response(task, reference, label_model=None).label
    return ImhiExample(task.name, query, reference, label, post=post, aspect=aspect, row=row)


def load_imhi(
    folder: str | Path, tasks: Iterable[str] | None = None, limit: int | None = None
) -> list[ImhiExample]:
    """Examples of an IMHI folder (see :func:`find_task_files`).

    ``tasks``: names or aliases to load, in that order (default: every task with a file, in
    catalog order); a task without a file raises ``ValueError``. ``limit``: at most this many
    rows *per task*, from the top of each file.
    """
    files = find_task_files(folder)
    if tasks is None:
        wanted = [name for name in TASKS if name in files]
    else:
        wanted = list(dict.fromkeys(get_task(t).name for t in tasks))
        absent = [t for t in wanted if t not in files]
        if absent:
            raise ValueError(f"no CSV for task(s) {', '.join(absent)} in {folder}; found: {', '.join(files)}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    examples: list[ImhiExample] = []
    for name in wanted:
        info = get_task(name)
        for i, query, reference in _read_rows(files[name]):
            if limit is not None and i >= limit:
                break
            examples.append(_example(info, i, query, reference))
    return examples


def _check_labels(task: TaskInfo, labels: Sequence[str | None], what: str) -> None:
    valid = set(task.labels)
    for label in labels:
        if label is not None and label not in valid:
            raise ValueError(
                f"{what} label {label!r} is not a label of {task.name}: {', '.join(task.labels)}"
            )


def score(
    task: str | TaskInfo, references: Sequence[str | None], predictions: Sequence[str | None]
) -> TaskScore:
    """Accuracy, weighted F1 and unparseable count of ``predictions`` against ``references``.

    Both are canonical labels of ``task`` or ``None``; see :class:`TaskScore` for how ``None``
    counts. An empty input scores 0.0 with ``n == 0``.
    """
    info = get_task(task)
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    _check_labels(info, references, "reference")
    _check_labels(info, predictions, "predicted")
    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r is not None]
    skipped = len(references) - len(pairs)
    n = len(pairs)
    unparseable = sum(p is None for _, p in pairs)
    if n == 0:
        return TaskScore(info.name, 0, 0.0, 0.0, 0.0, 0, skipped)

    per_label: dict[str, LabelScore] = {}
    seen = {r for r, _ in pairs} | {p for _, p in pairs if p is not None}
    for label in (lab for lab in info.labels if lab in seen):
        tp = sum(r == label and p == label for r, p in pairs)
        fp = sum(r != label and p == label for r, p in pairs)
        support = sum(r == label for r, _ in pairs)
        precision = tp / (tp + fp) if tp + fp else 0.0  # sklearn's zero_division=0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = LabelScore(precision, recall, f1, support)

    accuracy = sum(r == p for r, p in pairs) / n
    weighted_f1 = sum(s.f1 * s.support for s in per_label.values()) / n
    macro_f1 = sum(s.f1 for s in per_label.values()) / len(per_label)
    return TaskScore(info.name, n, accuracy, weighted_f1, macro_f1, unparseable, skipped, per_label)


def _by_task(
    examples: Sequence[ImhiExample], values: Sequence[ValueT], what: str
) -> dict[str, list[tuple[ImhiExample, ValueT]]]:
    """``values`` (aligned with ``examples``) beside their examples, grouped per task in the order tasks appear."""
    if len(examples) != len(values):
        raise ValueError(f"{len(examples)} examples but {len(values)} {what}")
    grouped: dict[str, list[tuple[ImhiExample, ValueT]]] = {}
    for example, value in zip(examples, values, strict=True):
        grouped.setdefault(example.task, []).append((example, value))
    return grouped


def score_examples(
    examples: Sequence[ImhiExample], predictions: Sequence[str | None]
) -> dict[str, TaskScore]:
    """Score predicted labels (aligned with ``examples``) per task, in the order tasks appear."""
    return {task: score(task, [example.reference_label for example, _ in pairs], [p for _, p in pairs])
            for task, pairs in _by_task(examples, predictions, "predictions").items()}  # fmt: skip


def count_label_sources(examples: Sequence[ImhiExample], sources: Sequence[str | None]) -> dict[str, dict[str, int]]:
    """Per task, how many predicted labels were ``"stated"`` and how many ``"inferred"``
    (:attr:`~mentallama.types.Analysis.label_source`, aligned with ``examples``; ``None``: no label)."""
    counts: dict[str, dict[str, int]] = {}
    for task, pairs in _by_task(examples, sources, "label sources").items():
        counts[task] = {"stated": 0, "inferred": 0}
        for _, source in pairs:
            if source is None:
                continue
            if source not in counts[task]:
                raise ValueError(f"unknown label source {source!r}")
            counts[task][source] += 1
    return counts


def count_answer_flags(
    examples: Sequence[ImhiExample], analyses: Sequence[Analysis | None]
) -> dict[str, dict[str, int]]:
    """Per task, how many answers state a label their explanation argues against (``"conflicts"``,
    :attr:`~mentallama.types.Analysis.conflict`) and how many give a verdict about another task
    (``"off_task"``, :attr:`~mentallama.types.Analysis.off_task`); aligned with ``examples``, ``None``:
    no answer."""
    counts: dict[str, dict[str, int]] = {}
    for task, pairs in _by_task(examples, analyses, "analyses").items():
        answered = [analysis for _, analysis in pairs if analysis is not None]
        counts[task] = {"conflicts": sum(a.conflict for a in answered),
                        "off_task": sum(a.off_task is not None for a in answered)}  # fmt: skip
    return counts
