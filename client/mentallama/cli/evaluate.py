"""``mentallama eval``: send the IMHI test queries, parse the answers, score them per task."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from .._exceptions import MentaLLaMAError
from ..evaluation import ImhiExample, TaskScore, count_label_sources, load_imhi, score_examples
from ..parsing import parse_response
from ..prompts import wrap_chat
from ..types import Analysis, Generation
from ._cli_utils import (
    DEFAULTS,
    CertChainOpt,
    ChatOpt,
    ConcurrencyOpt,
    EndpointOpt,
    MaxTokensOpt,
    ModelOpt,
    PrivateKeyOpt,
    RootCertOpt,
    TimeoutOpt,
    TlsOpt,
    client_from_options,
    fail,
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


ImhiDirOpt = Annotated[Path, typer.Option(exists=True, file_okay=False, help="IMHI folder (root or a split)")]
TasksOpt = Annotated[
    list[str] | None,
    typer.Option("--tasks", help="task(s) to run; repeat or comma-separate (default: every task with a CSV)",
                 show_default=False),  # fmt: skip
]
LimitOpt = Annotated[int | None, typer.Option(min=0, help="at most N queries per task")]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", file_okay=False, help="folder for raw_outputs.jsonl, scores.md/.csv"),
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
    labels the answers stated vs how many the label model inferred from the explanation."""
    wanted = [t.strip() for item in tasks for t in item.split(",") if t.strip()] if tasks else None
    try:
        examples = load_imhi(imhi_dir, wanted, limit)
    except (ValueError, OSError) as exc:
        fail(str(exc), code=2)
    if not examples:
        fail(f"no IMHI queries found in {imhi_dir}", code=2)
    # The queries are sent byte for byte as the benchmark wrote them (they are what build_prompt makes).
    prompts = [wrap_chat(e.query) if chat else e.query for e in examples]
    with client_from_options(endpoint, model, timeout, tls, root_certificates, certificate_chain,
                             private_key) as client, \
            tqdm(total=len(prompts), desc="eval", unit="query", file=sys.stderr) as bar:  # fmt: skip
        generations = client.generate_many(prompts, concurrency=concurrency, max_tokens=max_tokens,
                                           on_result=lambda _i, _r: bar.update())  # fmt: skip
    results = [to_analysis(e, g) for e, g in zip(examples, generations, strict=True)]
    predictions = [r.label if isinstance(r, Analysis) else None for r in results]
    failed: dict[str, int] = {}
    for example, result in zip(examples, results, strict=True):
        failed[example.task] = failed.get(example.task, 0) + isinstance(result, MentaLLaMAError)
    sources = count_label_sources(examples, [r.label_source if isinstance(r, Analysis) else None for r in results])
    rows = score_rows(score_examples(examples, predictions), failed, sources)
    typer.echo(format_table([list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        with (output / "raw_outputs.jsonl").open("w", encoding="utf-8") as f:
            for example, result in zip(examples, results, strict=True):
                f.write(json.dumps(raw_record(example, result), ensure_ascii=False) + "\n")
        (output / "scores.md").write_text(markdown_table(rows), encoding="utf-8")
        (output / "scores.csv").write_text(csv_table(rows), encoding="utf-8")
        typer.echo(f"wrote {output}/raw_outputs.jsonl, scores.md, scores.csv", err=True)
    if sum(failed.values()):
        typer.echo(f"{sum(failed.values())} request(s) failed (counted as unparseable)", err=True)
        raise typer.Exit(1)
