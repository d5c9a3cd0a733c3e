"""Continue a JSONL results file (``mentallama analyze --resume``, ``mentallama eval --resume``).

A batch writes one JSON object a line as results arrive; Ctrl-C or a crash leaves some rows written.
:func:`check_output` refuses to replace such a file unless told to (``--overwrite``) and
:func:`load_done` reads what a resumed run may keep: the rows that hold a result, keyed as the caller
says (input index, the input's own id, or IMHI task and row). Rows that hold an error are dropped, so
those inputs are sent again, and so is a last line cut short mid-write. :func:`keep_only` rewrites the
file with the kept rows (through a temporary file, so a second interruption cannot lose them) before
new rows are appended: every input ends up in the file exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Done", "ResumeMismatch", "check_output", "keep_only", "load_done"]

IF_EXISTS = ("refuse", "overwrite", "resume")


class ResumeMismatch(ValueError):
    """The file to resume holds rows of another input (the message says which row and how to go on)."""


def check_output(path: Path, if_exists: str, *, what: str = "output") -> bool:
    """Whether ``path`` holds rows to resume from; raises ``FileExistsError`` when it has rows and
    ``if_exists`` is ``"refuse"`` (the message names both ways on), ``ValueError`` for another mode."""
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS)}, not {if_exists!r}")
    has_rows = path.is_file() and path.stat().st_size > 0
    if has_rows and if_exists == "refuse":
        raise FileExistsError(f"{path} already holds results; --resume continues it (the rows there are kept and "
                              f"only the rest is sent), --overwrite replaces it")  # fmt: skip
    return has_rows and if_exists == "resume"


@dataclass
class Done:
    """What :func:`load_done` kept from a results file."""

    rows: dict[Hashable, dict[str, Any]] = field(default_factory=dict)
    """Key -> the row, for the rows that hold a result."""
    lines: list[str] = field(default_factory=list)
    """Those rows' lines as written (without the newline)."""
    dropped: int = 0
    """Rows left out: errors (sent again), cut-off or unreadable lines."""


def load_done(path: Path, key: Callable[[dict[str, Any]], Hashable]) -> Done:
    """The rows of ``path`` that hold a result, keyed by ``key(row)``; a key seen twice keeps the first
    (a duplicate is dropped). ``key`` raises :class:`ResumeMismatch` for a row of another batch."""
    done = Done()
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # cut short by a kill mid-write: sent again
                done.dropped += 1
                continue
            if not isinstance(row, dict) or "error" in row:
                done.dropped += 1
                continue
            k = key(row)
            if k in done.rows:
                done.dropped += 1
                continue
            done.rows[k] = row
            done.lines.append(line)
    return done


def keep_only(path: Path, lines: list[str]) -> None:
    """Rewrite ``path`` with ``lines`` alone, atomically (a temporary file beside it, then a rename)."""
    temporary = path.with_name(f".{path.name}.resume")
    with temporary.open("w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
