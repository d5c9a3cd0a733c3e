"""Serving reads tokenizer.json alone, on every profile (issue 21): no transformers fallback.

A checkpoint with only SentencePiece's tokenizer.model is refused by the serving processes with the command that
fixes it; the build converts tokenizer.model once (mentallama_build.fast_tokenizer), and the converted file
tokenises and detokenises exactly as the checkpoint's own tokenizer.json. Loading the served tokenizer imports
no transformers (the memory maps of a running CPU server are checked in test_footprint.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mentallama_build.fast_tokenizer import PROBE_TEXTS, convert_tokenizer
from mentallama_server.models.text_tokenizer import TokenizerFilesError, load_tokenizer

TEXTS = (
    *PROBE_TEXTS,
    'Consider this post: "Since I moved here I eat alone every night." Question: Does the poster suffer from '
    "loneliness?",
    "Tired 😞 café 漢字 ok 🙂 and 🇺🇦",
)


@pytest.fixture(scope="module")
def sentencepiece_only(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("spm") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "tokenizer.json").unlink()
    return folder


def test_a_folder_without_tokenizer_json_is_refused_with_the_fix(sentencepiece_only: Path) -> None:
    with pytest.raises(TokenizerFilesError) as info:
        load_tokenizer(sentencepiece_only)
    assert "mentallama-build fast-tokenizer" in str(info.value) and "no transformers" in str(info.value)


@pytest.mark.slow  # converts with transformers (seconds to import)
def test_the_converted_tokenizer_serves_like_the_checkpoints_own(
    sentencepiece_only: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    converted = load_tokenizer(convert_tokenizer(sentencepiece_only, tmp_path / "tokenizer"))
    own = load_tokenizer(tiny_checkpoint)
    assert (converted.bos_token_id, converted.eos_token_id, converted.vocab_size) == (
        own.bos_token_id, own.eos_token_id, own.vocab_size,
    )  # fmt: skip
    for text in TEXTS:
        ids = own.encode(text)
        assert converted.encode(text) == ids, text
        assert converted.decode(ids) == own.decode(ids)


def test_loading_the_served_tokenizer_imports_no_transformers(tiny_checkpoint: Path) -> None:
    code = (
        "import sys\n"
        "from mentallama_server.models.text_tokenizer import load_tokenizer\n"
        "import mentallama_server.models.preprocessing, mentallama_server.models.postprocessing\n"
        f"tokenizer = load_tokenizer({str(tiny_checkpoint)!r})\n"
        "assert tokenizer.encode('hello')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torch', 'sentencepiece')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
