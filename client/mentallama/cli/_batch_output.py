"""Where ``mentallama analyze --input`` writes: a new file, a replaced one (``--overwrite``) or one
continued (``--resume``), matched to the input by the posts' own ids (``--id-field``, when unique)
or by their index."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._resume import ResumeMismatch, check_output, keep_only, load_done

__all__ = ["BatchPlan", "id_key", "plan_output"]


@dataclass(frozen=True)
class BatchPlan:
    """What to send and what is already there."""

    pending: list[int]
    """Input indices to send, in input order."""
    kept: int = 0
    """Rows kept from the file being resumed."""
    dropped: int = 0
    """Rows of that file sent again (errors, a line cut short)."""
    by: str = "index"
    """How rows were matched to posts: ``"index"`` or the id field's name."""
    append: bool = False
    """Open the output for appending (resume) instead of writing it anew."""


def id_key(value: Any) -> Hashable:
    """A hashable key for an input's own id as JSON gives it back (``1`` and ``"1"`` stay distinct)."""
    return json.dumps(value, sort_keys=True)


def plan_output(output: Path | None, ids: Sequence[Any], id_field: str | None, output_id_key: str | None,
                if_exists: str) -> BatchPlan:  # fmt: skip
    """The plan for ``len(ids)`` posts. ``output_id_key``: the key the input's id has in an output row.

    Raises ``FileExistsError`` (rows there, ``if_exists="refuse"``) and ``ResumeMismatch``."""
    total = len(ids)
    if output is None or not check_output(output, if_exists):
        return BatchPlan(list(range(total)))
    unique = id_field is not None and len({id_key(i) for i in ids}) == total
    if unique:
        assert output_id_key is not None
        position = {id_key(value): index for index, value in enumerate(ids)}

        def key(row: dict[str, Any]) -> Hashable:
            if output_id_key not in row or id_key(row[output_id_key]) not in position:
                raise ResumeMismatch(f"{output}: a row with {output_id_key}={row.get(output_id_key)!r} is not in the "
                                     f"input; resume with the input and --id-field that made it")  # fmt: skip
            return position[id_key(row[output_id_key])]
    else:

        def key(row: dict[str, Any]) -> Hashable:
            index = row.get("index")
            if not isinstance(index, int) or not 0 <= index < total:
                raise ResumeMismatch(f"{output}: a row has index {index!r}, but the input has {total} posts; "
                                     f"resume with the input that made it")  # fmt: skip
            if output_id_key is not None and output_id_key in row and id_key(row[output_id_key]) != id_key(ids[index]):
                raise ResumeMismatch(f"{output}: row {index} has {output_id_key}={row[output_id_key]!r}, the input "
                                     f"{ids[index]!r}; resume with the input that made it")  # fmt: skip
            return index

    done = load_done(output, key)
    keep_only(output, done.lines)
    pending = [index for index in range(total) if index not in done.rows]
    by = id_field if unique and id_field is not None else "index"
    return BatchPlan(pending, kept=len(done.rows), dropped=done.dropped, by=by, append=True)
