"""``mentallama eval``: send the IMHI test queries, parse the answers, score them per task."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from .._exceptions import MentaLLaMAError
from ..evaluation import ImhiExample, TaskScore, count_label_sources, find_task_files, load_imhi, score_examples
from ..parsing import parse_response
from ..prompts import wrap_chat
from ..tasks import task_names
from ..types import Analysis, Generation
from ._cli_utils import (
    DEFAULTS,
    CertChainOpt,
    ChatOpt,
    ConcurrencyOpt,
    EndpointOpt,
    MaxTokensOpt,
    ModelOpt,
    OrderedWriter,
    PrivateKeyOpt,
    RootCertOpt,
    TimeoutOpt,
    TlsOpt,
    client_from_options,
    fail,
    preflight,
    progress_bar,
    suggest,
)
from .catalog import format_table

COLUMNS = ("task", "n", "accuracy", "weighted_f1", "unparseable", "stated", "inferred", "failed", "skipped")


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


def to_analysis(example: ImhiExample, result: Generation | MentaLLaMAError) -> Analysis | MentaLLaMAError:
    if isinstance(result, MentaLLaMAError):
        return result
    return parse_response(example.task, result.text.lstrip()).with_generation(result)


IMHI_SOURCE = "https://github.com/SteveKGYang/MentalLLaMA (folder IMHI)"
ImhiDirOpt = Annotated[
    Path,
    typer.Option(file_okay=False,
                 help=f"IMHI data from {IMHI_SOURCE}: its root (test_instruction/ is read) or a folder of task CSVs "
                 "such as expert/"),
]  # fmt: skip
TasksOpt = Annotated[
    list[str] | None,
    typer.Option("--tasks", help="task(s) to run; repeat or comma-separate (default: every task with a CSV)",
                 show_default=False),  # fmt: skip
]
LimitOpt = Annotated[int | None, typer.Option(min=0, help="at most N queries per task")]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", file_okay=False,
                 help="folder for raw_outputs.jsonl (written as answers arrive), scores.md/.csv, run.json",
                 show_default=False),  # fmt: skip
]


def evaluate(
    imhi_dir: ImhiDirOpt,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    output: OutputDirOpt = None,
    concurrency: ConcurrencyOpt = DEFAULTS["concurrency"],
    max_tokens: MaxTokensOpt = DEFAULTS["max_tokens"],
    chat: ChatOpt = False,
    endpoint: EndpointOpt = None,
    model: ModelOpt = None,
    timeout: TimeoutOpt = DEFAULTS["timeout"],
    tls: TlsOpt = False,
    root_certificates: RootCertOpt = None,
    certificate_chain: CertChainOpt = None,
    private_key: PrivateKeyOpt = None,
) -> None:
    """Score the served model on the IMHI test set: accuracy and weighted F1 per task, and how many
    labels the answers stated vs how many the label model inferred from the explanation.

    The IMHI data comes from the MentaLLaMA authors' repository (https://github.com/SteveKGYang/MentalLLaMA,
    folder IMHI); eval reads its test split, test_instruction/ (one CSV per task, columns query and
    answer), or the folder of task CSVs given. Ctrl-C keeps the raw outputs received so far."""
    if not imhi_dir.is_dir():
        clone = "git clone --depth 1 https://github.com/SteveKGYang/MentalLLaMA"
        fail(f"{imhi_dir}: no such folder. The IMHI data is in {IMHI_SOURCE}: clone it ({clone}) and pass "
             "--imhi-dir MentalLLaMA/IMHI", code=2)  # fmt: skip
    wanted = [t.strip() for item in tasks for t in item.split(",") if t.strip()] if tasks else None
    try:
        examples = load_imhi(imhi_dir, wanted, limit)
        split = next(iter(find_task_files(imhi_dir).values()), imhi_dir / "?").parent
    except (ValueError, OSError) as exc:
        message = str(exc)
        if "unknown task" in message and wanted:
            bad = next((t for t in wanted if t.lower() not in {n.lower() for n in task_names(aliases=True)}), "")
            message += suggest(bad, task_names(aliases=True))
        fail(message, code=2)
    if not examples:
        fail(f"no IMHI queries found in {imhi_dir}: expected task CSVs (DR.csv, ...) in it or in its "
             f"test_instruction/; the data is in {IMHI_SOURCE}", code=2)  # fmt: skip
    # The queries are sent byte for byte as the benchmark wrote them (they are what build_prompt makes).
    prompts = [wrap_chat(e.query) if chat else e.query for e in examples]
    connection = (endpoint, model, timeout, tls, root_certificates, certificate_chain, private_key)
    with client_from_options(*connection) as client:
        preflight(client)
        run_info = {"split": str(split), "tasks": list(dict.fromkeys(e.task for e in examples)),
                    "limit_per_task": limit, "queries": len(examples), "model": client.model,
                    "endpoints": list(client.endpoints), "max_tokens": max_tokens, "chat": chat,
                    "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    results: list[Analysis | MentaLLaMAError | None] = [None] * len(examples)
    raw_path = output / "raw_outputs.jsonl" if output is not None else None
    raw_file = raw_path.open("w", encoding="utf-8") if raw_path is not None else io.StringIO()
    with raw_file, progress_bar(len(prompts), "eval", "query") as bar:
        writer = OrderedWriter(raw_file, lambda i, r: raw_record(examples[i], r))

        def done(index: int, generation: Generation | MentaLLaMAError) -> None:
            results[index] = to_analysis(examples[index], generation)
            writer.add(index, results[index])
            bar.update()

        async def run() -> None:
            async with client_from_options(*connection, asynchronous=True) as aclient:
                await aclient.generate_many(prompts, concurrency=concurrency, max_tokens=max_tokens,
                                            on_result=done)  # fmt: skip

        try:
            asyncio.run(run())
        except KeyboardInterrupt:
            writer.flush_all()
            bar.close()
            where = f"kept in {raw_path}" if raw_path is not None else "not kept (no --output)"
            typer.echo(f"interrupted: {writer.written} of {len(examples)} answers received, {where}; "
                       "no scores were computed", err=True)  # fmt: skip
            raise typer.Exit(130) from None
    finished = [r for r in results if r is not None]
    predictions = [r.label if isinstance(r, Analysis) else None for r in finished]
    failed: dict[str, int] = {}
    for example, result in zip(examples, finished, strict=True):
        failed[example.task] = failed.get(example.task, 0) + isinstance(result, MentaLLaMAError)
    sources = count_label_sources(examples, [r.label_source if isinstance(r, Analysis) else None for r in finished])
    rows = score_rows(score_examples(examples, predictions), failed, sources)
    run_info["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = (f"split {run_info['split']}; model {run_info['model']} at {', '.join(run_info['endpoints'])}; "
              f"{run_info['finished_at']}")  # fmt: skip
    typer.echo(header)
    typer.echo(format_table([list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]))
    if output is not None:
        (output / "scores.md").write_text(f"{header}\n\n{markdown_table(rows)}", encoding="utf-8")
        (output / "scores.csv").write_text(csv_table(rows), encoding="utf-8")
        (output / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {output}/raw_outputs.jsonl, scores.md, scores.csv, run.json", err=True)
    if sum(failed.values()):
        typer.echo(f"{sum(failed.values())} request(s) failed (counted as unparseable)", err=True)
        raise typer.Exit(1)
