"""The served model's tokenizer, read with the `tokenizers` library alone (no torch, no transformers).

Serving processes (tritonserver's Python stubs) must stay light, so they do not load transformers'
`AutoTokenizer`. This class reads the same files a Hugging Face checkpoint (or an engine folder written by
`mentallama-build openvino`) holds: `tokenizer.json` for the vocabulary, normaliser, pre/post-processors
and decoder, and `tokenizer_config.json` for which tokens are BOS/EOS/PAD. It offers the small part of the
transformers tokenizer API that preprocessing, postprocessing and detokenisation use, with the same
results (a test compares them on IMHI queries).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["TextTokenizer", "TokenizerFilesError", "load_tokenizer"]


class TokenizerFilesError(ValueError):
    """The folder lacks the files a served tokenizer needs."""


def _token_text(value: object) -> str | None:
    """`tokenizer_config.json` spells a token either as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    """`encode`/`decode` and the special-token ids of a checkpoint's tokenizer."""

    def __init__(self, tokenizer: Tokenizer, config: dict) -> None:
        self._tokenizer = tokenizer
        self._vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.bos_token_id = self._id_of(config.get("bos_token"))
        self.eos_token_id = self._id_of(config.get("eos_token"))
        self.pad_token_id = self._id_of(config.get("pad_token"))
        special = {int(i) for i, t in (config.get("added_tokens_decoder") or {}).items() if t.get("special")}
        special |= {i for i in (self.bos_token_id, self.eos_token_id, self.pad_token_id) if i is not None}
        unk = self._id_of(config.get("unk_token"))
        if unk is not None:
            special.add(unk)
        self.all_special_ids = sorted(special)

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextTokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerFilesError(
                f"{folder} has no tokenizer.json: serving reads the fast-tokenizer file alone (no transformers); "
                "`mentallama-build openvino` and `mentallama-build engine` write it into the engine folder, "
                "`mentallama-build fast-tokenizer --checkpoint DIR --output DIR` converts a tokenizer.model"
            )
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        return cls(Tokenizer.from_file(str(path)), config)

    def _id_of(self, value: object) -> int | None:
        text = _token_text(value)
        return None if text is None else self._vocab.get(text)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(
        self, ids: Sequence[int], skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False
    ) -> str:
        # LLaMA tokenizers never clean up spaces; the argument exists for API parity with transformers.
        del clean_up_tokenization_spaces
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __hash__(self) -> int:  # detokenize caches one anchor per tokenizer object
        return id(self)


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """The tokenizer of `folder`, from its tokenizer.json: every profile serves a fast-tokenizer file (issue 21).

    There is no transformers fallback: which transformers a container has would decide how posts are tokenised,
    and no test could cover it. A checkpoint with only `tokenizer.model` gets its tokenizer.json once, at build
    time (`mentallama-build engine` converts it into the engine folder; `mentallama-build fast-tokenizer`)."""
    return TextTokenizer.from_folder(folder)
