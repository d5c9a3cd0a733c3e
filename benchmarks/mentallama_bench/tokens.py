"""Counting tokens with the served model's own tokenizer, loaded from a local checkpoint folder only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["count_input_tokens", "count_output_tokens", "load_tokenizer"]


def load_tokenizer(path: str | Path) -> Any:
    """`AutoTokenizer` from a checkpoint folder. A hub name is refused: nothing is downloaded."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder} (give a local checkpoint directory)")
    from transformers import AutoTokenizer  # heavy import, only when a tokenizer is asked for

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def count_input_tokens(tokenizer: Any, text: str) -> int:
    """Prompt tokens as the model sees them (special tokens such as BOS included, like genai-perf)."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def count_output_tokens(tokenizer: Any, text: str) -> int:
    """Generated tokens re-counted from text (no special tokens), as vLLM does without server usage."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
