"""``mentallama analyze``: one post from the command line, or a CSV/JSONL file of posts."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from tqdm import tqdm

from .._exceptions import MentaLLaMAError
from ..tasks import get_task
from ..types import Analysis
from ._cli_utils import (
    DEFAULTS,
    DISCLAIMER,
    CertChainOpt,
    ChatOpt,
    ConcurrencyOpt,
    EndpointOpt,
    MaxTokensOpt,
    ModelOpt,
    PrivateKeyOpt,
    RootCertOpt,
    TaskOpt,
    TimeoutOpt,
    TlsOpt,
    client_from_options,
    describe_error,
    fail,
)


def read_posts(path: Path, field: str) -> list[str]:
    """Posts of a ``.csv`` (column ``field``) or ``.jsonl`` file (key ``field``, or a JSON string a line)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or ())
            if field not in columns:
                raise ValueError(f"{path}: no column {field!r}; columns: {', '.join(columns)}")
            return [row[field] or "" for row in reader]
    posts = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if isinstance(item, str):
                posts.append(item)
            elif isinstance(item, dict) and isinstance(item.get(field), str):
                posts.append(item[field])
            else:
                raise ValueError(f"{path}:{number}: expected a string or an object with a string {field!r}")
    return posts


def result_record(index: int, result: Analysis | MentaLLaMAError) -> dict[str, Any]:
    """One JSONL line; the post itself is left out (sensitive), ``index`` points back at it."""
    if isinstance(result, MentaLLaMAError):
        status = result.status.name if result.status else None
        return {"index": index, "error": type(result).__name__, "message": result.message, "status": status,
                "request_id": result.request_id}  # fmt: skip
    return {"index": index, **result.to_dict()}


@contextmanager
def _open_output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        yield f


PostArg = Annotated[str | None, typer.Argument(help="the post to analyse (or --input)", show_default=False)]
AspectOpt = Annotated[str | None, typer.Option(help="aspect for Irf / MultiWD (risk or wellness dimension)")]
InputOpt = Annotated[
    Path | None, typer.Option("--input", "-i", exists=True, dir_okay=False, help="CSV or JSONL file of posts")
]
FieldOpt = Annotated[str, typer.Option(help="CSV column / JSONL key holding the post")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="JSONL results (default: stdout)")]
StreamOpt = Annotated[bool, typer.Option(help="print the answer as it is generated (single post)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the single result as JSON")]


def analyze(
    post: PostArg = None,
    task: TaskOpt = "depression",
    aspect: AspectOpt = None,
    input: InputOpt = None,  # noqa: A002 - the option is --input
    field: FieldOpt = "post",
    output: OutputOpt = None,
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
    """Analyse a post (or a file of posts) for one task. Not a diagnosis: non-clinical research only."""
    if (post is None) == (input is None):
        fail("give either a post or --input FILE", code=2)
    try:
        get_task(task).question_for(aspect)  # a bad task or aspect is one usage error, not one per post
    except ValueError as exc:
        fail(str(exc), code=2)
    with client_from_options(endpoint, model, timeout, tls, root_certificates, certificate_chain,
                             private_key) as client:
        if input is None:
            assert post is not None
            _analyze_one(client, post, task, aspect, stream=stream, as_json=as_json, max_tokens=max_tokens,
                         chat=chat)  # fmt: skip
            return
        if stream:
            fail("--stream works with a single post, not with --input", code=2)
        try:
            posts = read_posts(input, field)
        except (ValueError, OSError) as exc:
            fail(str(exc), code=2)
        with tqdm(total=len(posts), desc=f"analyze {task}", unit="post", file=sys.stderr) as bar:
            results = client.analyze_many(posts, task, aspect=aspect, concurrency=concurrency,
                                          max_tokens=max_tokens, chat=chat,
                                          on_result=lambda _i, _r: bar.update())  # fmt: skip
    failed = sum(isinstance(r, MentaLLaMAError) for r in results)
    unparsed = sum(isinstance(r, Analysis) and r.label is None for r in results)
    with _open_output(output) as out:
        for index, result in enumerate(results):
            out.write(json.dumps(result_record(index, result), ensure_ascii=False) + "\n")
    summary = f"{len(results) - failed} analysed ({unparsed} without a label), {failed} failed."
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
    typer.echo(f"label:     {result.label if result.label is not None else '(none found)'}")
    if not stream:
        typer.echo(f"reasoning: {result.reasoning}")
    tokens = f"{result.num_input_tokens} in, {result.num_output_tokens} out ({result.finish_reason})"
    typer.echo(f"tokens:    {tokens}; {result.latency_s:.2f} s; request {result.request_id}")
    typer.echo(DISCLAIMER, err=True)
