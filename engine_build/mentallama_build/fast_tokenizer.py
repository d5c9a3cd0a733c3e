"""The served tokenizer is always a fast-tokenizer file (`tokenizer.json`), read with the `tokenizers` library.

Serving processes load no transformers (they read `tokenizer.json` alone: server/.../text_tokenizer.py). A
checkpoint that ships only SentencePiece's `tokenizer.model` gets its `tokenizer.json` here, once, at build time,
where transformers is installed anyway: `mentallama-build engine` writes it into `<engine>/tokenizer/` and
records it in the build manifest; `mentallama-build fast-tokenizer` does the same for an engine built elsewhere.
The conversion is checked: the converted file must encode probe texts (multi-byte characters, runs of spaces,
digits) to the same ids as SentencePiece itself, BOS first. (A text that starts with a space is left out:
transformers' LLaMA tokenizers differ from SentencePiece there on purpose, and serving follows transformers.)
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONVERTED_DIR",
    "PROBE_TEXTS",
    "TokenizerPlan",
    "TokenizerConversionError",
    "convert_tokenizer",
    "plan_tokenizer",
]

CONVERTED_DIR = "tokenizer"
"""Folder of an engine that holds the tokenizer converted at build time."""
PROBE_TEXTS = (
    "Consider this post: I can't sleep before exams. Question: Does the poster suffer from stress?",
    "Two  spaces, a tab\there, and 12345 digits",
    "café naïve 漢字 😞 🇺🇦",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHello [/INST]",
)


class TokenizerConversionError(RuntimeError):
    """tokenizer.model could not be turned into an equivalent tokenizer.json."""


@dataclass(frozen=True)
class TokenizerPlan:
    """Where serving will read `tokenizer.json` from, and whether the build writes it there."""

    folder: Path
    converted: bool

    def describe(self) -> str:
        if self.converted:
            return (f"Tokenizer: tokenizer.model converted once to {self.folder / 'tokenizer.json'} (serving reads "
                    "tokenizer.json only)")  # fmt: skip
        return f"Tokenizer: {self.folder / 'tokenizer.json'} (the checkpoint's)"

    def record(self, output_dir: Path) -> dict[str, object]:
        """The manifest's `tokenizer` entry: where it is (relative to the engine when converted) and how it came."""
        if not self.converted:
            return {"source": "checkpoint", "dir": None}
        return {"source": "converted from tokenizer.model", "dir": str(self.folder.relative_to(output_dir))}


def plan_tokenizer(checkpoint_dir: Path, output_dir: Path) -> TokenizerPlan:
    """The checkpoint's own tokenizer.json when it has one, else a conversion into `<output>/tokenizer`."""
    if (Path(checkpoint_dir) / "tokenizer.json").is_file():
        return TokenizerPlan(Path(checkpoint_dir), converted=False)
    return TokenizerPlan(Path(output_dir) / CONVERTED_DIR, converted=True)


def _sentencepiece_ids(model_file: Path, text: str, bos_id: int | None) -> list[int] | None:
    try:
        import sentencepiece
    except ImportError:
        return None
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    ids = processor.encode(text)
    return ([bos_id] if bos_id is not None else []) + list(ids)


def _check_equivalent(checkpoint_dir: Path, converted: Path) -> None:
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(str(converted / "tokenizer.json"))
    bos = fast.token_to_id("<s>")
    for text in PROBE_TEXTS:
        expected = _sentencepiece_ids(checkpoint_dir / "tokenizer.model", text, bos)
        if expected is None:
            return  # no sentencepiece to compare with: transformers' own conversion is trusted
        got = fast.encode(text).ids
        if got != expected:
            pairs = zip(got, expected, strict=False)  # the shorter one ends the comparison
            at = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(got), len(expected)))
            raise TokenizerConversionError(
                f"the converted tokenizer.json encodes a probe text differently from tokenizer.model (from token "
                f"{at} on): serve a tokenizer.json made by the model's authors instead"
            )


def convert_tokenizer(checkpoint_dir: Path, target: Path) -> Path:
    """Write `tokenizer.json` (with tokenizer_config.json and special_tokens_map.json) for the checkpoint's
    `tokenizer.model` into `target`, replacing it only once complete and checked."""
    checkpoint_dir, target = Path(checkpoint_dir), Path(target)
    if not (checkpoint_dir / "tokenizer.model").is_file():
        raise TokenizerConversionError(f"{checkpoint_dir} has neither tokenizer.json nor tokenizer.model")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise TokenizerConversionError(f"converting tokenizer.model needs transformers ({exc})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.converting.", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir), use_fast=True, local_files_only=True)
            tokenizer.save_pretrained(str(staging))
        except Exception as exc:  # transformers raises many kinds here; each means "could not convert"
            raise TokenizerConversionError(f"transformers could not convert tokenizer.model: {exc}") from exc
        if not (staging / "tokenizer.json").is_file():
            raise TokenizerConversionError(f"transformers wrote no tokenizer.json for {checkpoint_dir}")
        _check_equivalent(checkpoint_dir, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
