"""JSON lines written in input order while results arrive out of order (``mentallama analyze``/``eval``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO


class OrderedWriter:
    """Writes JSON lines in input order as results arrive: a finished row waits only for the rows
    before it. ``flush_all()`` (on an interruption) writes what waits too, still sorted; each row
    carries its ``index``, so the gaps show."""

    def __init__(self, out: TextIO, record: Callable[[int, Any], dict[str, Any]]) -> None:
        self.out, self.record = out, record
        self.next_index = 0
        self.waiting: dict[int, Any] = {}
        self.written = 0

    def add(self, index: int, result: Any) -> None:
        self.waiting[index] = result
        while self.next_index in self.waiting:
            self._write(self.next_index, self.waiting.pop(self.next_index))
            self.next_index += 1
        self.out.flush()

    def flush_all(self) -> None:
        for index in sorted(self.waiting):
            self._write(index, self.waiting.pop(index))
        self.out.flush()

    def _write(self, index: int, result: Any) -> None:
        self.out.write(json.dumps(self.record(index, result), ensure_ascii=False) + "\n")
        self.written += 1
