"""``mentallama eval``: send the IMHI test queries, parse the answers, score them per task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._resume import ResumeMismatch, check_output
from ..evaluation_run import (
    COLUMNS,
    IMHI_SOURCE,
    RAW_OUTPUTS,
    EvaluationInterrupted,
    load_queries,
    run_evaluation,
    write_reports,
)
from ..tasks import task_names
from ._client_options import (
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
    preflight,
    progress_bar,
)
from .catalog import format_table
from .common import fail, suggest

ImhiDirOpt = Annotated[
    Path,
    typer.Option(file_okay=False,
                 help=f"IMHI data from {IMHI_SOURCE}: the clone's root (its test_data/test_instruction/ is read) "
                 "or a folder of task CSVs such as MentalLLaMA/human_evaluation/test_instruction_expert"),
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


OverwriteOpt = Annotated[bool, typer.Option(help="replace the raw outputs an --output folder already holds")]
ResumeOpt = Annotated[
    bool,
    typer.Option(help="continue the raw outputs of an interrupted run in --output (same --tasks and --limit): keep "
                      "its answers, send the other queries; failed ones are sent again"),
]  # fmt: skip


def evaluate(
    imhi_dir: ImhiDirOpt,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    output: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
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
    """Score the served model on the IMHI test set: accuracy and weighted F1 per task, how many labels
    the answers stated vs how many the label model inferred from the explanation, how many stated labels
    their explanation argues against (conflicts) and how many answers gave a verdict about another task.

    The IMHI data comes from the MentaLLaMA authors' repository (https://github.com/SteveKGYang/MentalLLaMA,
    cloned as MentalLLaMA/); eval reads its test split, test_data/test_instruction/ (one CSV per task, columns
    query and answer): pass --imhi-dir MentalLLaMA, or a folder of task CSVs such as
    MentalLLaMA/human_evaluation/test_instruction_expert. Ctrl-C keeps the raw outputs received so far; --resume
    continues them."""
    if (overwrite or resume) and output is None:
        fail("--overwrite and --resume are about the raw outputs in an --output folder; give --output DIR", code=2)
    if overwrite and resume:
        fail("give --overwrite (replace the raw outputs) or --resume (continue them), not both", code=2)
    if_exists = "resume" if resume else "overwrite" if overwrite else "refuse"
    wanted = [t.strip() for item in tasks for t in item.split(",") if t.strip()] if tasks else None
    try:
        examples, split = load_queries(imhi_dir, wanted, limit)
    except (ValueError, OSError) as exc:
        message = str(exc)
        if "unknown task" in message and wanted:
            bad = next((t for t in wanted if t.lower() not in {n.lower() for n in task_names(aliases=True)}), "")
            message += suggest(bad, task_names(aliases=True))
        fail(message, code=2)
    try:
        if output is not None:
            check_output(output / RAW_OUTPUTS, if_exists)  # before contacting the server
    except FileExistsError as exc:
        fail(str(exc), code=2)
    connection = (endpoint, model, timeout, tls, root_certificates, certificate_chain, private_key)
    with client_from_options(*connection) as client:
        preflight(client)
    try:
        with progress_bar(len(examples), "eval", "query") as bar:
            result = run_evaluation(
                examples, split, lambda: client_from_options(*connection, asynchronous=True),
                concurrency=concurrency, max_tokens=max_tokens, chat=chat, limit=limit, output=output,
                on_result=bar.update, if_exists=if_exists,
            )  # fmt: skip
    except EvaluationInterrupted as stop:
        where = (f"kept in {stop.raw_path}; to continue, run the same command with --resume"
                 if stop.raw_path is not None else "not kept (no --output)")  # fmt: skip
        typer.echo(f"interrupted: {stop.received} of {stop.total} answers received, {where}; "
                   "no scores were computed", err=True)  # fmt: skip
        raise typer.Exit(130) from None
    except ResumeMismatch as exc:  # --resume over the raw outputs of other queries
        fail(str(exc), code=2)
    if result.run_info.get("resumed") is not None:
        typer.echo(f"resumed: {result.run_info['resumed']} answers kept from {output}/{RAW_OUTPUTS}", err=True)
    typer.echo(result.header)
    typer.echo(format_table([list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in result.rows]))
    if output is not None:
        write_reports(result, output)
        typer.echo(f"wrote {output}/{RAW_OUTPUTS}, scores.md, scores.csv, run.json", err=True)
    if result.failed:
        typer.echo(f"{result.failed} request(s) failed (counted as unparseable)", err=True)
        raise typer.Exit(1)
