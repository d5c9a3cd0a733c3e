"""One IMHI evaluation against a running server: send the test queries, keep the raw answers as they
arrive, score them per task and write the reports.

``mentallama eval`` wires its flags to :func:`load_queries`, :func:`run_evaluation` and
:func:`write_reports`; a script can call them with its own client. The data and the metrics are
:mod:`mentallama.evaluation`'s.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._client import AsyncMentaLLaMAClient
from ._exceptions import MentaLLaMAError
from ._ordered_writer import OrderedWriter
from ._resume import ResumeMismatch, check_output, keep_only, load_done
from .evaluation import (
    ImhiExample,
    TaskScore,
    count_answer_flags,
    count_label_sources,
    find_task_files,
    load_imhi,
    score_examples,
)
from .parsing import parse_response
from .prompts import wrap_chat
from .types import Analysis, Generation

__all__ = [
    "COLUMNS",
    "IMHI_SOURCE",
    "EvaluationInterrupted",
    "EvaluationResult",
    "csv_table",
    "load_queries",
    "markdown_table",
    "raw_record",
    "run_evaluation",
    "score_rows",
    "write_reports",
]

IMHI_SOURCE = "https://github.com/SteveKGYang/MentalLLaMA (test_data/test_instruction/)"
IMHI_CLONE = "git clone --depth 1 https://github.com/SteveKGYang/MentalLLaMA"
COLUMNS = ("task", "n", "accuracy", "weighted_f1", "unparseable", "stated", "inferred", "conflicts", "off_task",
           "failed", "skipped")
RAW_OUTPUTS = "raw_outputs.jsonl"


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_evaluation`: the answers received so far are written to ``raw_path``
    (``None`` without an output folder); nothing is scored. A ``KeyboardInterrupt``, so a caller that
    does not look for it stops as on any Ctrl-C."""

    def __init__(self, received: int, total: int, raw_path: Path | None) -> None:
        super().__init__(f"interrupted: {received} of {total} answers received")
        self.received, self.total, self.raw_path = received, total, raw_path


@dataclass
class EvaluationResult:
    """A finished run: one score row per task (:func:`score_rows`) and what was run (``run_info``)."""

    rows: list[dict[str, Any]]
    run_info: dict[str, Any]
    failed: int
    """Requests that got no answer (counted as unparseable)."""

    @property
    def header(self) -> str:
        """One line naming the split, the model, the endpoints and when the run finished."""
        info = self.run_info
        return f"split {info['split']}; model {info['model']} at {', '.join(info['endpoints'])}; {info['finished_at']}"


def load_queries(
    imhi_dir: Path, tasks: Sequence[str] | None = None, limit: int | None = None
) -> tuple[list[ImhiExample], Path]:
    """The examples to send and the split folder they come from (see :func:`~mentallama.evaluation.load_imhi`).

    A missing folder (``FileNotFoundError``) and a folder without task CSVs (``ValueError``) say where
    the data comes from; an unknown task is ``load_imhi``'s ``ValueError``."""
    if not imhi_dir.is_dir():
        raise FileNotFoundError(f"{imhi_dir}: no such folder. The IMHI data is in {IMHI_SOURCE}: clone it "
                                f"({IMHI_CLONE}) and pass --imhi-dir MentalLLaMA")  # fmt: skip
    examples = load_imhi(imhi_dir, tasks, limit)
    split = next(iter(find_task_files(imhi_dir).values()), imhi_dir / "?").parent
    if not examples:
        raise ValueError(f"no IMHI queries found in {imhi_dir}: expected task CSVs (DR.csv, ...) in it or in its "
                         f"test_instruction/; the data is in {IMHI_SOURCE}")  # fmt: skip
    return examples, split


def run_evaluation(
    examples: Sequence[ImhiExample],
    split: Path,
    connect: Callable[[], AsyncMentaLLaMAClient],
    *,
    concurrency: int,
    max_tokens: int,
    chat: bool = False,
    limit: int | None = None,
    output: Path | None = None,
    on_result: Callable[[], None] | None = None,
    if_exists: str = "refuse",
) -> EvaluationResult:
    """Send every query (``chat``: wrapped in the LLaMA-2 chat format), then score the answers.

    ``connect`` makes the client inside the run's event loop; ``output``: ``raw_outputs.jsonl`` is
    written there in input order as answers arrive (the query is left out); ``on_result`` is called
    once per answer (a progress bar). Ctrl-C raises :class:`EvaluationInterrupted` after the answers
    received so far are written.

    ``if_exists``: what to do when ``output`` already holds raw outputs: ``"refuse"``
    (``FileExistsError``), ``"overwrite"``, or ``"resume"``: the answers there are kept (and scored,
    re-parsed from their text), failed ones and the rest are sent, appended to the file; a row of
    another query set (other ``--tasks``/``--limit``) raises ``mentallama._resume.ResumeMismatch``
    (a ``ValueError``)."""
    # The queries are sent byte for byte as the benchmark wrote them (they are what build_prompt makes).
    prompts = [wrap_chat(e.query) if chat else e.query for e in examples]
    run_info: dict[str, Any] = {
        "split": str(split), "tasks": list(dict.fromkeys(e.task for e in examples)), "limit_per_task": limit,
        "queries": len(examples), "model": None, "endpoints": [], "max_tokens": max_tokens, "chat": chat,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    results: list[Analysis | MentaLLaMAError | None] = [None] * len(examples)
    raw_path = output / RAW_OUTPUTS if output is not None else None
    resuming = raw_path is not None and check_output(raw_path, if_exists)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    if resuming:
        assert raw_path is not None
        kept = _kept_answers(examples, raw_path)
        run_info["resumed"] = len(kept)
        for index, analysis in kept.items():
            results[index] = analysis
            if on_result is not None:
                on_result()
    pending = [i for i, r in enumerate(results) if r is None]
    mode = "a" if resuming else "w"
    with (raw_path.open(mode, encoding="utf-8") if raw_path is not None else io.StringIO()) as raw_file:
        # Only the pending queries are sent; each answer is written under its own example.
        writer = OrderedWriter(raw_file, lambda j, r: raw_record(examples[pending[j]], r))

        def done(j: int, generation: Generation | MentaLLaMAError) -> None:
            results[pending[j]] = _to_analysis(examples[pending[j]], generation)
            writer.add(j, results[pending[j]])
            if on_result is not None:
                on_result()

        async def send() -> None:
            async with connect() as client:
                run_info.update(model=client.model, endpoints=list(client.endpoints))  # in the order above
                await client.generate_many([prompts[i] for i in pending], concurrency=concurrency,
                                           max_tokens=max_tokens, on_result=done)  # fmt: skip

        try:
            asyncio.run(send())  # also with nothing pending: run.json names the model and endpoints
        except KeyboardInterrupt:
            writer.flush_all()
            received = len(examples) - len(pending) + writer.written
            raise EvaluationInterrupted(received, len(examples), raw_path) from None
    finished = [r for r in results if r is not None]
    predictions = [r.label if isinstance(r, Analysis) else None for r in finished]
    failed: dict[str, int] = {}
    for example, result in zip(examples, finished, strict=True):
        failed[example.task] = failed.get(example.task, 0) + isinstance(result, MentaLLaMAError)
    sources = count_label_sources(examples, [r.label_source if isinstance(r, Analysis) else None for r in finished])
    flags = count_answer_flags(examples, [r if isinstance(r, Analysis) else None for r in finished])
    rows = score_rows(score_examples(examples, predictions), failed, sources, flags)
    run_info["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return EvaluationResult(rows, run_info, sum(failed.values()))


def write_reports(result: EvaluationResult, output: Path) -> None:
    """``scores.md`` (the header line, then a Markdown table), ``scores.csv`` and ``run.json`` in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "scores.md").write_text(f"{result.header}\n\n{markdown_table(result.rows)}", encoding="utf-8")
    (output / "scores.csv").write_text(csv_table(result.rows), encoding="utf-8")
    (output / "run.json").write_text(json.dumps(result.run_info, indent=2) + "\n", encoding="utf-8")


def score_rows(
    scores: dict[str, TaskScore], failed: dict[str, int], sources: dict[str, dict[str, int]] | None = None,
    flags: dict[str, dict[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """One row per task (``failed``: requests that got no answer; they count as unparseable;
    ``sources``: :func:`~mentallama.evaluation.count_label_sources`, labels stated vs inferred;
    ``flags``: :func:`~mentallama.evaluation.count_answer_flags`, stated labels that conflict with their
    explanation and answers whose verdict is about another task)."""
    sources, flags = sources or {}, flags or {}
    return [
        {"task": s.task, "n": s.n, "accuracy": round(s.accuracy, 4), "weighted_f1": round(s.weighted_f1, 4),
         "unparseable": s.unparseable, "stated": sources.get(task, {}).get("stated", 0),
         "inferred": sources.get(task, {}).get("inferred", 0), "conflicts": flags.get(task, {}).get("conflicts", 0),
         "off_task": flags.get(task, {}).get("off_task", 0), "failed": failed.get(task, 0), "skipped": s.skipped}
        for task, s in scores.items()
    ]  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def raw_record(example: ImhiExample, result: Analysis | MentaLLaMAError) -> dict[str, Any]:
    """One JSONL line of raw output; the query is left out (``task`` + ``row`` point back at it)."""
    record: dict[str, Any] = {"task": example.task, "row": example.row, "aspect": example.aspect,
                              "reference_label": example.reference_label}  # fmt: skip
    if isinstance(result, MentaLLaMAError):
        return {**record, "error": type(result).__name__, "message": result.message,
                "request_id": result.request_id}  # fmt: skip
    return {**record, "label": result.label, "matched_by": result.matched_by,
            "label_source": result.label_source, "confidence": result.confidence, "conflict": result.conflict,
            "off_task": result.off_task, "raw": result.raw,
            "request_id": result.request_id, "num_input_tokens": result.num_input_tokens,
            "num_output_tokens": result.num_output_tokens, "latency_s": result.latency_s,
            "finish_reason": result.finish_reason}  # fmt: skip


def _kept_answers(examples: Sequence[ImhiExample], raw_path: Path) -> dict[int, Analysis]:
    """The answers a resumed run keeps from ``raw_path`` (the file is rewritten with them alone), by
    example index; each is parsed again from its text, as when it arrived."""
    position = {(e.task, e.row, e.aspect): i for i, e in enumerate(examples)}

    def key(row: dict[str, Any]) -> int:
        where = (row.get("task"), row.get("row"), row.get("aspect"))
        if where not in position:
            raise ResumeMismatch(f"{raw_path}: holds an answer to {where[0]} row {where[1]}, which this run does not "
                                 "ask; resume with the same --tasks and --limit, or --overwrite")  # fmt: skip
        return position[where]

    done = load_done(raw_path, key)
    keep_only(raw_path, done.lines)
    kept = {}
    for index, row in done.rows.items():
        text = row.get("raw") or ""
        generation = Generation(text, request_id=row.get("request_id"), num_input_tokens=row.get("num_input_tokens"),
                                num_output_tokens=row.get("num_output_tokens"), latency_s=row.get("latency_s"),
                                finish_reason=row.get("finish_reason"))  # fmt: skip
        kept[index] = parse_response(examples[index].task, text).with_generation(generation)
    return kept


def _to_analysis(example: ImhiExample, result: Generation | MentaLLaMAError) -> Analysis | MentaLLaMAError:
    if isinstance(result, MentaLLaMAError):
        return result
    return parse_response(example.task, result.text.lstrip()).with_generation(result)
