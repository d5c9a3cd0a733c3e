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
from .evaluation import ImhiExample, TaskScore, count_label_sources, find_task_files, load_imhi, score_examples
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

IMHI_SOURCE = "https://github.com/SteveKGYang/MentalLLaMA (folder IMHI)"
IMHI_CLONE = "git clone --depth 1 https://github.com/SteveKGYang/MentalLLaMA"
COLUMNS = ("task", "n", "accuracy", "weighted_f1", "unparseable", "stated", "inferred", "failed", "skipped")
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
                                f"({IMHI_CLONE}) and pass --imhi-dir MentalLLaMA/IMHI")  # fmt: skip
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
) -> EvaluationResult:
    """Send every query (``chat``: wrapped in the LLaMA-2 chat format), then score the answers.

    ``connect`` makes the client inside the run's event loop; ``output``: ``raw_outputs.jsonl`` is
    written there in input order as answers arrive (the query is left out); ``on_result`` is called
    once per answer (a progress bar). Ctrl-C raises :class:`EvaluationInterrupted` after the answers
    received so far are written."""
    # The queries are sent byte for byte as the benchmark wrote them (they are what build_prompt makes).
    prompts = [wrap_chat(e.query) if chat else e.query for e in examples]
    run_info: dict[str, Any] = {
        "split": str(split), "tasks": list(dict.fromkeys(e.task for e in examples)), "limit_per_task": limit,
        "queries": len(examples), "model": None, "endpoints": [], "max_tokens": max_tokens, "chat": chat,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    results: list[Analysis | MentaLLaMAError | None] = [None] * len(examples)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    raw_path = output / RAW_OUTPUTS if output is not None else None
    with (raw_path.open("w", encoding="utf-8") if raw_path is not None else io.StringIO()) as raw_file:
        writer = OrderedWriter(raw_file, lambda i, r: raw_record(examples[i], r))

        def done(index: int, generation: Generation | MentaLLaMAError) -> None:
            results[index] = _to_analysis(examples[index], generation)
            writer.add(index, results[index])
            if on_result is not None:
                on_result()

        async def send() -> None:
            async with connect() as client:
                run_info.update(model=client.model, endpoints=list(client.endpoints))  # in the order above
                await client.generate_many(prompts, concurrency=concurrency, max_tokens=max_tokens, on_result=done)

        try:
            asyncio.run(send())
        except KeyboardInterrupt:
            writer.flush_all()
            raise EvaluationInterrupted(writer.written, len(examples), raw_path) from None
    finished = [r for r in results if r is not None]
    predictions = [r.label if isinstance(r, Analysis) else None for r in finished]
    failed: dict[str, int] = {}
    for example, result in zip(examples, finished, strict=True):
        failed[example.task] = failed.get(example.task, 0) + isinstance(result, MentaLLaMAError)
    sources = count_label_sources(examples, [r.label_source if isinstance(r, Analysis) else None for r in finished])
    rows = score_rows(score_examples(examples, predictions), failed, sources)
    run_info["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return EvaluationResult(rows, run_info, sum(failed.values()))


def write_reports(result: EvaluationResult, output: Path) -> None:
    """``scores.md`` (the header line, then a Markdown table), ``scores.csv`` and ``run.json`` in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "scores.md").write_text(f"{result.header}\n\n{markdown_table(result.rows)}", encoding="utf-8")
    (output / "scores.csv").write_text(csv_table(result.rows), encoding="utf-8")
    (output / "run.json").write_text(json.dumps(result.run_info, indent=2) + "\n", encoding="utf-8")


def score_rows(
    scores: dict[str, TaskScore], failed: dict[str, int], sources: dict[str, dict[str, int]] | None = None
) -> list[dict[str, Any]]:
    """One row per task (``failed``: requests that got no answer; they count as unparseable;
    ``sources``: :func:`~mentallama.evaluation.count_label_sources`, labels stated vs inferred)."""
    sources = sources or {}
    return [
        {"task": s.task, "n": s.n, "accuracy": round(s.accuracy, 4), "weighted_f1": round(s.weighted_f1, 4),
         "unparseable": s.unparseable, "stated": sources.get(task, {}).get("stated", 0),
         "inferred": sources.get(task, {}).get("inferred", 0), "failed": failed.get(task, 0),
         "skipped": s.skipped}
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
            "label_source": result.label_source, "confidence": result.confidence, "raw": result.raw,
            "request_id": result.request_id, "num_input_tokens": result.num_input_tokens,
            "num_output_tokens": result.num_output_tokens, "latency_s": result.latency_s,
            "finish_reason": result.finish_reason}  # fmt: skip


def _to_analysis(example: ImhiExample, result: Generation | MentaLLaMAError) -> Analysis | MentaLLaMAError:
    if isinstance(result, MentaLLaMAError):
        return result
    return parse_response(example.task, result.text.lstrip()).with_generation(result)
