"""``mentallama analyze``: one post from the command line, or a CSV/JSONL file of posts."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from .._exceptions import MentaLLaMAError
from .._resume import ResumeMismatch
from ..tasks import get_task, task_names
from ..types import Analysis
from ._batch_output import BatchPlan, plan_output
from ._client_options import (
    DEFAULTS,
    DISCLAIMER,
    CertChainOpt,
    ChatOpt,
    ConcurrencyOpt,
    EndpointOpt,
    MaxTokensOpt,
    ModelOpt,
    OrderedWriter,
    PrivateKeyOpt,
    RootCertOpt,
    TaskOpt,
    TimeoutOpt,
    TlsOpt,
    client_from_options,
    describe_error,
    preflight,
    progress_bar,
)
from .common import fail, suggest

INPUT_SUFFIXES = (".csv", ".jsonl", ".ndjson")
RESERVED_KEYS = {"index", "error", "message", "status", "request_id", *Analysis.__dataclass_fields__}


@dataclass
class Posts:
    """Posts read from a file, with the value of the ``--id-field`` of each (None without one)."""

    texts: list[str] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)


class InputError(ValueError):
    """An input file that cannot be read as posts; the message names the file, the problem and the fix."""


def read_posts(path: Path, field: str, encoding: str = "utf-8", id_field: str | None = None) -> Posts:
    """Posts of a ``.csv`` (column ``field``) or ``.jsonl`` file (key ``field``, or a JSON string a line).

    Raises :class:`InputError` for an unknown suffix, undecodable bytes, bad JSON, a missing column
    or key, and for a file without posts."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"{path}: expected a .csv or .jsonl file, got {suffix or 'no suffix'!r} "
                         "(CSV: one post per row in a column; JSONL: one JSON object or string per line)")  # fmt: skip
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with path.open(newline="" if suffix == ".csv" else None, encoding=codec) as f:
            posts = _read_csv(path, f, field, id_field) if suffix == ".csv" else _read_jsonl(path, f, field, id_field)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not {encoding} text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "if the file is Latin-1 or Windows-1252, pass --encoding latin-1 (or cp1252), or save it as UTF-8"
        ) from None
    except LookupError:
        raise InputError(f"unknown --encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    if not posts.texts:
        raise InputError(f"{path}: no posts in the file (nothing to analyse)")
    return posts


def _read_csv(path: Path, f: TextIO, field: str, id_field: str | None) -> Posts:
    reader = csv.DictReader(f)
    columns = list(reader.fieldnames or ())
    if not columns:
        raise InputError(f"{path}: the file is empty; expected a header row with a {field!r} column, then posts")
    for name, option in ((field, "--field"), (id_field, "--id-field")):
        if name is not None and name not in columns:
            raise InputError(f"{path}: no column {name!r}{suggest(name, columns)} (columns: {', '.join(columns)}); "
                             f"name the right one with {option}")  # fmt: skip
    posts = Posts()
    for row in reader:
        posts.texts.append(row[field] or "")
        posts.ids.append(row[id_field] if id_field else None)
    return posts


def _read_jsonl(path: Path, f: TextIO, field: str, id_field: str | None) -> Posts:
    posts = Posts()
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON ({exc.msg}, column {exc.colno}); a .jsonl file holds "
                             "one JSON object or string per line") from None  # fmt: skip
        if isinstance(item, str) and id_field is None:
            posts.texts.append(item)
            posts.ids.append(None)
        elif isinstance(item, dict) and isinstance(item.get(field), str):
            if id_field is not None and id_field not in item:
                raise InputError(f"{path}:{number}: no key {id_field!r} for --id-field")
            posts.texts.append(item[field])
            posts.ids.append(item.get(id_field) if id_field else None)
        else:
            want = f"an object with a string {field!r}" + ("" if id_field else " or a JSON string")
            keys = f" (keys: {', '.join(item)}; pick one with --field)" if isinstance(item, dict) else ""
            raise InputError(f"{path}:{number}: expected {want}{keys}")
    return posts


def output_id_key(id_field: str | None) -> str | None:
    """The key of the input's own id in an output row: its name, or ``input_<name>`` where that is taken."""
    if id_field is None:
        return None
    return f"input_{id_field}" if id_field in RESERVED_KEYS else id_field


def result_record(index: int, result: Analysis | MentaLLaMAError, id_field: str | None = None,
                  post_id: Any = None) -> dict[str, Any]:  # fmt: skip
    """One JSONL line; the post itself is left out (sensitive): ``index`` (and the input's own
    ``id_field``, under its name, or ``input_<name>`` where that name is taken) point back at it."""
    record: dict[str, Any] = {"index": index}
    id_key = output_id_key(id_field)
    if id_key is not None:
        record[id_key] = post_id
    if isinstance(result, MentaLLaMAError):
        status = result.status.name if result.status else None
        return {**record, "error": type(result).__name__, "message": result.message, "status": status,
                "request_id": result.request_id}  # fmt: skip
    return {**record, **result.to_dict()}


@contextmanager
def _open_output(path: Path | None, append: bool = False) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as f:
        yield f


PostArg = Annotated[
    str | None,
    typer.Argument(metavar="[POST]", help="the post to analyse, quoted; or give --input FILE instead",
                   show_default=False),  # fmt: skip
]
AspectOpt = Annotated[str | None, typer.Option(help="aspect for Irf / MultiWD (risk or wellness dimension)")]
InputOpt = Annotated[
    Path | None,
    typer.Option("--input", "-i", exists=True, dir_okay=False, help="CSV or JSONL file of posts", show_default=False),
]
FieldOpt = Annotated[str, typer.Option(help="CSV column / JSONL key holding the post")]
IdFieldOpt = Annotated[
    str | None,
    typer.Option(help="CSV column / JSONL key with the post's own id, copied into each output row",
                 show_default=False),  # fmt: skip
]
EncodingOpt = Annotated[str, typer.Option(help="text encoding of --input (e.g. latin-1, cp1252)")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="JSONL results, written as they finish (default: stdout)", show_default=False),
]
OverwriteOpt = Annotated[bool, typer.Option(help="replace an --output file that already holds results")]
ResumeOpt = Annotated[
    bool,
    typer.Option(help="continue an --output file of an interrupted run: keep its rows, send the other posts (matched "
                      "by --id-field when its ids are unique, else by index); rows with errors are sent again"),
]  # fmt: skip
StreamOpt = Annotated[bool, typer.Option(help="print the answer as it is generated (single post)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the single result as JSON")]


def check_task(task: str, aspect: str | None) -> None:
    """A bad task or aspect is one usage error (exit 2), not one per post; suggests the closest task."""
    try:
        get_task(task).question_for(aspect)
    except ValueError as exc:
        hint = suggest(task, task_names(aliases=True)) if "unknown task" in str(exc) else ""
        fail(f"{exc}{hint}", code=2)


def analyze(
    post: PostArg = None,
    task: TaskOpt = "depression",
    aspect: AspectOpt = None,
    input: InputOpt = None,  # noqa: A002 - the option is --input
    field: FieldOpt = "post",
    id_field: IdFieldOpt = None,
    encoding: EncodingOpt = "utf-8",
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    stream: StreamOpt = False,
    as_json: JsonOpt = False,
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
    """Analyse a post (or a file of posts) for one task. Not a diagnosis: non-clinical research only.

    POST is the post's text, quoted; or give --input FILE (CSV or JSONL) instead. With --input, each
    result is written as soon as it and those before it are done (input order); Ctrl-C keeps what
    finished and says where it is."""
    if (post is None) == (input is None):
        fail("give either a post or --input FILE", code=2)
    check_task(task, aspect)
    if input is not None and stream:
        fail("--stream works with a single post, not with --input", code=2)
    if (overwrite or resume) and output is None:
        fail("--overwrite and --resume are about an --output file; give --output FILE", code=2)
    if overwrite and resume:
        fail("give --overwrite (replace the file) or --resume (continue it), not both", code=2)
    connection = (endpoint, model, timeout, tls, root_certificates, certificate_chain, private_key)
    if input is None:
        assert post is not None
        with client_from_options(*connection) as client:
            preflight(client)
            _analyze_one(client, post, task, aspect, stream=stream, as_json=as_json, max_tokens=max_tokens,
                         chat=chat)  # fmt: skip
        return
    try:
        posts = read_posts(input, field, encoding, id_field)
    except InputError as exc:
        fail(str(exc), code=2)
    except OSError as exc:
        fail(f"{input}: cannot read it ({exc.strerror or exc})", code=2)
    if_exists = "resume" if resume else "overwrite" if overwrite else "refuse"
    try:
        plan = plan_output(output, posts.ids, id_field, output_id_key(id_field), if_exists)
    except (FileExistsError, ResumeMismatch) as exc:
        fail(str(exc), code=2)
    except OSError as exc:
        fail(f"{output}: cannot read it to resume ({exc.strerror or exc})", code=2)
    if plan.append:
        sent_again = f", {plan.dropped} failed or cut-off row(s) to send again" if plan.dropped else ""
        typer.echo(f"resuming {output}: {plan.kept} of {len(posts.texts)} posts already there (matched by "
                   f"{plan.by}){sent_again}; {len(plan.pending)} to send", err=True)  # fmt: skip
        if not plan.pending:
            typer.echo(f"nothing left to send; {output} holds every post. {DISCLAIMER}", err=True)
            return
    with client_from_options(*connection) as client:
        preflight(client)  # one line for a missing server or model, not one error row per post
    _analyze_file(connection, posts, plan, task, aspect, id_field, output, concurrency, max_tokens, chat)


def _analyze_file(connection: tuple, posts: Posts, plan: BatchPlan, task: str, aspect: str | None,
                  id_field: str | None, output: Path | None, concurrency: int, max_tokens: int,
                  chat: bool) -> None:  # fmt: skip
    total, pending = len(posts.texts), plan.pending
    counts = {"failed": 0, "unparsed": 0, "conflict": 0, "off_task": 0}
    where = str(output) if output is not None else "stdout"
    with _open_output(output, plan.append) as out, progress_bar(len(pending), f"analyze {task}", "post") as bar:
        # Only the pending posts are sent; each row is written under its index in the input.
        writer = OrderedWriter(out, lambda j, r: result_record(pending[j], r, id_field, posts.ids[pending[j]]))

        def done(index: int, result: Analysis | MentaLLaMAError) -> None:
            counts["failed"] += isinstance(result, MentaLLaMAError)
            if isinstance(result, Analysis):
                counts["unparsed"] += result.label is None
                counts["conflict"] += result.conflict
                counts["off_task"] += result.off_task is not None
            writer.add(index, result)
            bar.update()

        async def run() -> None:
            async with client_from_options(*connection, asynchronous=True) as client:
                await client.analyze_many([posts.texts[i] for i in pending], task, aspect=aspect,
                                          concurrency=concurrency, max_tokens=max_tokens, chat=chat,
                                          on_result=done)  # fmt: skip

        try:
            asyncio.run(run())
        except KeyboardInterrupt:
            writer.flush_all()
            bar.close()
            if output is not None:
                message = (f"interrupted: {plan.kept + writer.written} of {total} posts done ({counts['failed']} "
                           f"failed) in {output}; to continue, run the same command with --resume")  # fmt: skip
            else:
                message = (f"interrupted: {writer.written} of {total} posts done, written to stdout (each row carries "
                           "its input 'index'); write to a file with --output FILE to be able to --resume")  # fmt: skip
            typer.echo(message, err=True)
            raise typer.Exit(130) from None
    failed = counts["failed"]
    kept = f"{plan.kept} kept from before, " if plan.append else ""
    flags = f", {counts['conflict']} stated against their explanation, {counts['off_task']} answering another task"
    summary = (f"{kept}{len(pending) - failed} analysed ({counts['unparsed']} without a label{flags}), {failed} "
               f"failed; written to {where}.")  # fmt: skip
    typer.echo(f"{summary} {DISCLAIMER}", err=True)
    if failed:
        raise typer.Exit(1)


def _analyze_one(client: Any, post: str, task: str, aspect: str | None, *, stream: bool, as_json: bool,
                 max_tokens: int, chat: bool) -> None:  # fmt: skip
    try:
        if stream:
            with client.analyze_stream(post, task, aspect=aspect, max_tokens=max_tokens, chat=chat) as deltas:
                for delta in deltas:
                    typer.echo(delta, nl=False)
                typer.echo()
                result = deltas.final()
        else:
            result = client.analyze(post, task, aspect=aspect, max_tokens=max_tokens, chat=chat)
    except MentaLLaMAError as error:
        fail(describe_error(error))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    typer.echo(f"task:      {result.task}")
    typer.echo(f"label:     {result.describe_label()}")
    if result.note:
        typer.echo(f"note:      {result.note}")
    if not stream:
        typer.echo(f"reasoning: {result.reasoning}")
    tokens = f"{result.num_input_tokens} in, {result.num_output_tokens} out ({result.finish_reason})"
    typer.echo(f"tokens:    {tokens}; {result.latency_s:.2f} s; request {result.request_id}")
    typer.echo(DISCLAIMER, err=True)
