"""Prompt sources: the IMHI test queries from a data folder, or synthetic prompts of given lengths.

Both are seeded: the same seed yields the same prompts in the same order, so runs of a sweep (and
repeated runs) send identical work. Prompts are never logged; only their index, task and length are.
"""

from __future__ import annotations

import csv
import random
import re
import sys
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from mentallama.evaluation import imhi_part
from mentallama_bench.records import SampleRequest
from mentallama_bench.tokens import count_input_tokens

__all__ = [
    "BenchmarkDataset",
    "ImhiDataset",
    "SyntheticDataset",
    "parse_task_mix",
]


class BenchmarkDataset(ABC):
    """A seeded, endless stream of `SampleRequest`s (runs stopped by a duration need no count)."""

    name: str = "dataset"

    @abstractmethod
    def iter_samples(self, seed: int) -> Iterator[SampleRequest]:
        """Endless; the same seed always yields the same sequence."""

    def sample(self, n: int, seed: int) -> list[SampleRequest]:
        return list(islice(self.iter_samples(seed), n))

    def describe(self) -> dict[str, Any]:
        """What the report says about the prompts (never their text)."""
        return {"name": self.name}


def parse_task_mix(text: str | None) -> dict[str, float] | None:
    """`"DR:2,dreaddit:1"` -> weights; a bare name weighs 1. None or "" -> the natural mix."""
    if not text:
        return None
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition(":")
        if not name:
            continue
        value = float(weight) if sep else 1.0
        if value < 0:
            raise ValueError(f"negative weight for task {name!r}")
        mix[name.strip()] = value
    if not mix or sum(mix.values()) <= 0:
        raise ValueError(f"task mix {text!r} has no positive weight")
    return mix


def _csv_field_limit() -> None:
    # IMHI posts can exceed csv's default 128 KiB field limit; raise it once.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class ImhiDataset(BenchmarkDataset):
    """IMHI test queries: `FOLDER/test_data/test_instruction/*.csv` (a clone of the authors' repository),
    `FOLDER/test_instruction/*.csv` or `FOLDER/*.csv`, column `query`.

    The task is the file's stem (`DR.csv` -> `DR`). With no `task_mix`, prompts are drawn from all
    rows uniformly (the benchmark's natural mix); with one, each request first picks a task by weight
    (names match case-insensitively), then a row of that task. Rows are drawn without replacement and
    reshuffled when a task runs out. Queries are sent as they are: they already are the full prompts.
    """

    name = "imhi"

    def __init__(
        self,
        folder: str | Path,
        max_tokens: int,
        task_mix: dict[str, float] | None = None,
        tokenizer: Any | None = None,
        max_input_tokens: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer
        files = self._find_files(self.folder)
        self._rows: dict[str, list[tuple[int, str, int | None]]] = {}
        skipped = 0
        index = 0
        _csv_field_limit()
        for path in files:
            rows = []
            for query in self._read_queries(path):
                n_tokens = count_input_tokens(tokenizer, query) if tokenizer is not None else None
                if max_input_tokens is not None and n_tokens is not None and n_tokens > max_input_tokens:
                    skipped += 1
                else:
                    rows.append((index, query, n_tokens))
                index += 1
            if rows:
                self._rows[path.stem] = rows
        self.skipped_too_long = skipped
        if not self._rows:
            raise ValueError(f"no usable queries under {self.folder}")
        self.task_mix = self._resolve_mix(task_mix)

    @staticmethod
    def _find_files(folder: Path) -> list[Path]:
        for candidate in (imhi_part(folder, "test") or folder, folder):
            files = sorted(candidate.glob("*.csv")) if candidate.is_dir() else []
            if files:
                return files
        raise FileNotFoundError(f"no test_data/test_instruction/*.csv, test_instruction/*.csv or *.csv under {folder}")

    @staticmethod
    def _read_queries(path: Path) -> list[str]:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "query" not in reader.fieldnames:
                raise ValueError(f"{path.name}: no 'query' column (columns: {reader.fieldnames})")
            return [row["query"] for row in reader if row.get("query")]

    def _resolve_mix(self, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is None:
            return None
        by_lower = {t.lower(): t for t in self._rows}
        resolved: dict[str, float] = {}
        for name, weight in mix.items():
            task = by_lower.get(name.lower())
            if task is None:
                raise ValueError(f"unknown task {name!r}; tasks in {self.folder}: {', '.join(self._rows)}")
            if weight > 0:
                resolved[task] = weight
        return resolved

    @property
    def tasks(self) -> dict[str, int]:
        """Task -> number of usable queries."""
        return {t: len(rows) for t, rows in self._rows.items()}

    def _sample(self, task: str, row: tuple[int, str, int | None]) -> SampleRequest:
        index, query, n_tokens = row
        return SampleRequest(
            index=index, prompt=query, task=task, max_tokens=self.max_tokens, prompt_tokens=n_tokens
        )

    def iter_samples(self, seed: int) -> Iterator[SampleRequest]:
        rng = random.Random(seed)
        if self.task_mix is None:
            pool = [(task, row) for task, rows in self._rows.items() for row in rows]
            while True:
                order = pool[:]
                rng.shuffle(order)
                for task, row in order:
                    yield self._sample(task, row)
        tasks = list(self.task_mix)
        weights = [self.task_mix[t] for t in tasks]
        decks: dict[str, list[tuple[int, str, int | None]]] = {t: [] for t in tasks}
        while True:
            task = rng.choices(tasks, weights)[0]
            if not decks[task]:
                decks[task] = self._rows[task][:]
                rng.shuffle(decks[task])
            yield self._sample(task, decks[task].pop())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "tasks": self.tasks,
            "task_mix": self.task_mix or "natural",
            "max_tokens": self.max_tokens,
            "skipped_too_long": self.skipped_too_long,
        }


# Neutral filler for synthetic prompts when no tokenizer is given (lengths are then approximate).
_WORDS = (
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "it",
    "by",
    "at",
    "from",
    "this",
    "be",
    "or",
    "an",
    "are",
    "which",
    "one",
    "river",
    "table",
    "window",
    "garden",
    "number",
    "paper",
    "music",
    "train",
    "city",
    "light",
    "water",
    "stone",
    "morning",
    "yellow",
    "quiet",
    "market",
    "bridge",
    "letter",
    "winter",
    "circle",
    "engine",
    "forest",
    "pencil",
    "summer",
    "orange",
)


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _plain_token_ids(tokenizer: Any) -> list[int]:
    """Ids safe to sample: no special tokens, no byte-fallback pieces (`<0x00>` decodes to NUL, which
    servers rightly refuse), nothing with control characters."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [
        i
        for i, piece in enumerate(pieces)
        if i not in special
        and piece
        and not _BYTE_TOKEN.match(piece)
        and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in piece)
    ]


class SyntheticDataset(BenchmarkDataset):
    """Prompts of `input_len` tokens asking for `output_len` tokens.

    With the served model's tokenizer, prompts are random vocabulary tokens decoded to text and
    trimmed so that they re-encode to `input_len` tokens (the count after the round trip is what is
    recorded). Without one, prompts are `input_len` words and `prompt_tokens` is unknown (None).
    """

    name = "synthetic"

    def __init__(self, input_len: int, output_len: int, tokenizer: Any | None = None) -> None:
        if input_len < 1 or output_len < 1:
            raise ValueError("input_len and output_len must be >= 1")
        self.input_len = input_len
        self.output_len = output_len
        self.tokenizer = tokenizer
        if tokenizer is not None:
            self._vocab = _plain_token_ids(tokenizer)
            if not self._vocab:
                raise ValueError("tokenizer has no ordinary tokens")

    def _prompt(self, rng: random.Random) -> tuple[str, int | None]:
        if self.tokenizer is None:
            return " ".join(rng.choice(_WORDS) for _ in range(self.input_len)), None
        tok = self.tokenizer
        ids = [rng.choice(self._vocab) for _ in range(self.input_len)]
        text = tok.decode(ids, skip_special_tokens=True)
        # Decoding and re-encoding merges or splits some tokens: trim on the re-encoded ids.
        again = tok(text, add_special_tokens=False)["input_ids"][: self.input_len]
        text = tok.decode(again, skip_special_tokens=True)
        return text, count_input_tokens(tok, text)

    def iter_samples(self, seed: int) -> Iterator[SampleRequest]:
        rng = random.Random(seed)
        index = 0
        while True:
            prompt, n_tokens = self._prompt(rng)
            yield SampleRequest(
                index=index,
                prompt=prompt,
                task="synthetic",
                max_tokens=self.output_len,
                prompt_tokens=n_tokens,
            )
            index += 1

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "lengths": "tokenizer" if self.tokenizer is not None else "words (approximate)",
        }
