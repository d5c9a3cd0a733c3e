"""Whether an engine folder may be served with a tokenizer: the checks before the trtllm profile renders.

An engine built by `mentallama-build engine` carries a build manifest: the tokenizer must be the checkpoint's
own (file digests), the engine files unchanged since the build (mentallama_build.manifest.verify_manifest). An
engine built elsewhere (plain `trtllm-build`) has no manifest; it is served after the checks that can still be
made, with a warning naming what was not checked:
- its limits (config.json: max_input_len, max_seq_len, max_beam_width, paged context FMHA), which the profile is
  fitted to as for any engine (trtllm_profile.fit_to_engine / engine_problems);
- the tokenizer's vocabulary against the engine's: token ids past the engine's embedding rows are refused, a
  smaller vocabulary is a warning (padded vocabularies exist, another model's tokenizer too).
Either way serving reads a `tokenizer.json` (no transformers in the serving processes): the tokenizer folder's,
or the one the build converted from tokenizer.model (`served_tokenizer_dir`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mentallama_build.manifest import MANIFEST_NAME, served_tokenizer_dir, verify_manifest

__all__ = ["EngineCheck", "check_engine", "engine_vocab_size", "tokenizer_vocab_size"]

UNCHECKED_WITHOUT_MANIFEST = (
    "that the tokenizer is the one the engine was built with (file digests)",
    "that the engine files are unchanged since their build",
    "the build options and tool versions",
)


@dataclass
class EngineCheck:
    """`problems` refuse the engine; `warnings` are shown; `tokenizer_dir` is the folder serving reads."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tokenizer_dir: Path | None = None


def engine_vocab_size(engine_dir: Path) -> int | None:
    """`pretrained_config.vocab_size` of the engine's config.json (the embedding rows before any TP padding)."""
    try:
        config = json.loads((engine_dir / "config.json").read_text(encoding="utf-8"))
        value = (config.get("pretrained_config") or {}).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def tokenizer_vocab_size(tokenizer_dir: Path) -> int:
    """Ids the tokenizer can produce, added tokens included (tokenizer.json, read with `tokenizers`)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _vocab_findings(engine_dir: Path, tokenizer_dir: Path, check: EngineCheck) -> None:
    engine_vocab = engine_vocab_size(engine_dir)
    if engine_vocab is None:
        check.warnings.append(f"{engine_dir / 'config.json'} names no pretrained_config.vocab_size: vocabulary "
                              "not checked")  # fmt: skip
        return
    try:
        vocab = tokenizer_vocab_size(tokenizer_dir)
    except Exception as exc:  # tokenizers raises its own exception type for a malformed file
        check.problems.append(f"{tokenizer_dir / 'tokenizer.json'} cannot be read: {exc}")
        return
    if vocab > engine_vocab:
        check.problems.append(
            f"the tokenizer in {tokenizer_dir} has {vocab} tokens but the engine only {engine_vocab} embedding rows: "
            "token ids past them would fail or read other memory; this is another model's tokenizer"
        )
    elif vocab < engine_vocab:
        check.warnings.append(
            f"the tokenizer has {vocab} tokens, the engine {engine_vocab}: the engine's extra rows are never produced "
            "by this tokenizer (a padded vocabulary, or another model's tokenizer)"
        )


def check_engine(engine_dir: Path | str, tokenizer_dir: Path | str) -> EngineCheck:
    """Every check that can be made on `engine_dir` served with `tokenizer_dir` (limits are checked by the
    caller, which fits the profile to them)."""
    engine_dir, tokenizer_dir = Path(engine_dir), Path(tokenizer_dir)
    check = EngineCheck()
    if not tokenizer_dir.is_dir():
        check.problems.append(f"tokenizer directory {tokenizer_dir} does not exist")
        return check
    if (engine_dir / MANIFEST_NAME).is_file():
        check.problems += verify_manifest(engine_dir, tokenizer_dir)
    elif (engine_dir / "config.json").is_file():
        check.warnings.append(
            f"{engine_dir} was built outside mentallama-build (no {MANIFEST_NAME}): checked its config.json limits "
            f"and the tokenizer's vocabulary against the engine's; NOT checked: {'; '.join(UNCHECKED_WITHOUT_MANIFEST)}"
        )
    check.tokenizer_dir, why = served_tokenizer_dir(engine_dir, tokenizer_dir)
    if why is not None:
        check.problems.append(why)
    if check.tokenizer_dir is not None:
        _vocab_findings(engine_dir, check.tokenizer_dir, check)
    return check
