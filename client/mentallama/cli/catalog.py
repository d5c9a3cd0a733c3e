"""``mentallama tasks``: the IMHI task catalog."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..tasks import TASKS


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned plain-text table; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tasks(
    as_json: Annotated[bool, typer.Option("--json", help="print the catalog as JSON")] = False,
) -> None:
    """List the IMHI tasks: names, aliases, labels and aspects."""
    if as_json:
        typer.echo(json.dumps([t.to_dict() for t in TASKS.values()], indent=2))
        return
    rows = [["task", "aliases", "labels", "aspects", "description"]]
    for t in TASKS.values():
        rows.append([t.name, ", ".join(t.aliases), " | ".join(t.labels), " | ".join(t.aspects),
                     t.description])  # fmt: skip
    typer.echo(format_table(rows))
