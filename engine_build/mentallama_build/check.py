"""Validate a LLaMA checkpoint folder before serving it, without loading any weights.

Reads `config.json`, `generation_config.json`, the tokenizer files and the safetensors headers only, so it
runs in well under a second on a 7B or 13B folder. Every problem becomes one human-readable message;
facts found along the way (shapes, ids, parameter count) are reported for the launcher and the engine build.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mentallama_build.safetensors_io import read_header
from mentallama_build.shapes import REQUIRED_SHAPE_KEYS, llama_tensor_shapes, parameter_count

__all__ = ["SUPPORTED_DTYPES", "CheckReport", "check_checkpoint"]

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass
class CheckReport:
    """Outcome of `check_checkpoint`: `problems` (empty when the folder can be served), `notes`
    (informational) and the facts found. Facts are `None` when the folder did not provide them."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    architecture: str | None = None
    model_type: str | None = None
    vocab_size: int | None = None  # the tokenizer's (len(tokenizer)); config.json's is embedding_rows
    embedding_rows: int | None = None
    dtype: str | None = None
    parameter_count: int | None = None
    context_length: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    tokenizer_files: list[str] = field(default_factory=list)
    weight_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        """Multi-line human summary: verdict, problems, notes, then the facts."""
        lines = [f"{self.path}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'}"]
        lines += [f"  problem: {message}" for message in self.problems]
        lines += [f"  note: {message}" for message in self.notes]
        facts = {
            "architecture": self.architecture,
            "parameters": _human_count(self.parameter_count),
            "dtype": self.dtype,
            "context length": self.context_length,
            "hidden/layers/heads/kv heads": _join(
                self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads
            ),
            "tokenizer vocab / embedding rows": _join(self.vocab_size, self.embedding_rows),
            "bos/eos/pad ids": _join(self.bos_token_id, self.eos_token_id, self.pad_token_id),
            "tokenizer files": ", ".join(self.tokenizer_files) or None,
            "weight files": _files(self.weight_files),
        }
        lines += [f"  {name}: {value}" for name, value in facts.items() if value is not None]
        return "\n".join(lines)


def _human_count(count: int | None) -> str | None:
    if count is None:
        return None
    scaled = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    return f"{count:,} ({scaled})"


def _join(*values: int | None) -> str | None:
    if all(value is None for value in values):
        return None
    return " / ".join("?" if value is None else str(value) for value in values)


def _files(names: list[str]) -> str | None:
    if not names:
        return None
    return ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]} ({len(names)} files)"


def _read_json(path: Path, report: CheckReport) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problems.append(f"{path.name} is not valid JSON ({exc})")
        return None
    if not isinstance(data, dict):
        report.problems.append(f"{path.name} does not hold a JSON object")
        return None
    return data


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_checkpoint(path: Path | str) -> CheckReport:
    """Validate the checkpoint folder at `path`; see `CheckReport`."""
    folder = Path(path)
    report = CheckReport(path=folder)
    if not folder.is_dir():
        report.problems.append(f"{folder} is not a directory")
        return report
    config = _read_json(folder / "config.json", report)
    if config is None and not (folder / "config.json").is_file():
        report.problems.append("config.json is missing: not a Hugging Face model folder")
    if config is not None:
        _check_config(config, report)
    tokenizer = _TokenizerFacts.read(folder, report)
    generation = _read_json(folder / "generation_config.json", report) or {}
    _check_special_ids(config or {}, generation, tokenizer, report)
    _check_vocab(tokenizer, report)
    _check_weights(folder, config, report)
    return report


def _check_config(config: dict[str, Any], report: CheckReport) -> None:
    architectures = config.get("architectures") or []
    report.architecture = ", ".join(map(str, architectures)) if isinstance(architectures, list) else None
    report.model_type = config.get("model_type")
    if "LlamaForCausalLM" not in architectures or report.model_type != "llama":
        report.problems.append(
            f"config.json describes architecture {report.architecture or 'none'} (model_type "
            f"{report.model_type!r}); only LlamaForCausalLM with model_type 'llama' can be served"
        )

    report.hidden_size = _int_or_none(config.get("hidden_size"))
    report.num_layers = _int_or_none(config.get("num_hidden_layers"))
    report.num_heads = _int_or_none(config.get("num_attention_heads"))
    report.num_kv_heads = _int_or_none(config.get("num_key_value_heads")) or report.num_heads
    report.intermediate_size = _int_or_none(config.get("intermediate_size"))
    report.embedding_rows = _int_or_none(config.get("vocab_size"))
    missing = [key for key in REQUIRED_SHAPE_KEYS if (_int_or_none(config.get(key)) or 0) <= 0]
    if missing:
        report.problems.append(
            f"config.json lacks a positive integer {', '.join(missing)}: the model shape is unknown"
        )
    else:
        if report.num_heads and report.num_kv_heads and report.num_heads % report.num_kv_heads:
            report.problems.append(
                f"num_attention_heads ({report.num_heads}) is not a multiple of num_key_value_heads "
                f"({report.num_kv_heads})"
            )
        if not config.get("head_dim") and report.hidden_size % report.num_heads:
            report.problems.append(
                f"hidden_size ({report.hidden_size}) is not divisible by "
                f"num_attention_heads ({report.num_heads})"
            )
        report.parameter_count = parameter_count(config)

    dtype = config.get("torch_dtype", config.get("dtype"))
    report.dtype = dtype if isinstance(dtype, str) else None
    if dtype is None:
        report.notes.append("config.json declares no torch_dtype: loaders use the weights' dtype or float32")
    elif dtype not in SUPPORTED_DTYPES:
        report.problems.append(f"dtype {dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}")

    report.context_length = _int_or_none(config.get("max_position_embeddings"))
    if report.context_length is None or report.context_length <= 0:
        report.problems.append(
            "config.json has no positive max_position_embeddings: the context length is unknown"
        )
    if config.get("rope_scaling"):
        report.notes.append(f"rope_scaling is set ({config['rope_scaling']}); the engine must apply it too")


@dataclass
class _TokenizerFacts:
    """Vocabulary size and special-token ids as the tokenizer files define them."""

    vocab_size: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    base_vocab_size: int | None = None  # before added tokens (a pad token appended by a fine-tune, say)

    @classmethod
    def read(cls, folder: Path, report: CheckReport) -> _TokenizerFacts:
        facts = cls()
        report.tokenizer_files = [
            name
            for name in (
                "tokenizer.model",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            )
            if (folder / name).is_file()
        ]
        has_model, has_json = (folder / "tokenizer.model").is_file(), (folder / "tokenizer.json").is_file()
        if not (has_model or has_json):
            report.problems.append("no tokenizer: neither tokenizer.model nor tokenizer.json is present")
            return facts
        tokenizer_config = _read_json(folder / "tokenizer_config.json", report) or {}
        if not tokenizer_config.get("chat_template") and not (folder / "chat_template.jinja").is_file():
            report.notes.append(
                "no chat_template: prompts must be formatted in LLaMA-2 chat style by the caller"
            )
        special_map = _read_json(folder / "special_tokens_map.json", report) or {}
        # LlamaTokenizer's defaults apply when neither file names the token.
        names = {
            role: _token_content(tokenizer_config.get(f"{role}_token", special_map.get(f"{role}_token")))
            or default
            for role, default in (("bos", "<s>"), ("eos", "</s>"), ("pad", None))
        }
        spm_facts = _spm_facts(folder / "tokenizer.model", report) if has_model else None
        json_facts = _tokenizer_json_facts(folder / "tokenizer.json", names, report) if has_json else None
        if spm_facts and json_facts and spm_facts.vocab_size != json_facts.base_vocab_size:
            report.problems.append(
                f"tokenizer.json has {json_facts.base_vocab_size} base tokens but tokenizer.model has "
                f"{spm_facts.vocab_size}: the two tokenizer files disagree"
            )
        # transformers reads tokenizer.json when present, so its view wins where it has one.
        sources = [source for source in (json_facts, spm_facts) if source is not None]
        for name in ("vocab_size", "bos_id", "eos_id", "pad_id"):
            found = [getattr(source, name) for source in sources if getattr(source, name) is not None]
            setattr(facts, name, found[0] if found else None)
        return facts


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _spm_facts(path: Path, report: CheckReport) -> _TokenizerFacts | None:
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        report.problems.append(f"tokenizer.model cannot be read by sentencepiece ({exc})")
        return None

    def _id(value: int) -> int | None:
        return value if value >= 0 else None

    size = processor.get_piece_size()
    return _TokenizerFacts(size, _id(processor.bos_id()), _id(processor.eos_id()), None, size)


def _tokenizer_json_facts(
    path: Path, names: dict[str, str | None], report: CheckReport
) -> _TokenizerFacts | None:
    data = _read_json(path, report)
    if data is None:
        return None
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    ids: dict[str, int] = {}
    if isinstance(vocab, dict):
        ids.update({token: idx for token, idx in vocab.items() if isinstance(idx, int)})
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        ids.update({item[0]: idx for idx, item in enumerate(vocab) if isinstance(item, list) and item})
    base_size = max(ids.values()) + 1 if ids else 0
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            ids[str(added.get("content"))] = added["id"]
    if not ids:
        report.problems.append("tokenizer.json holds no vocabulary")
        return None

    def _lookup(role: str) -> int | None:
        name = names.get(role)
        return ids.get(name) if name is not None else None

    # len(tokenizer) in transformers: every id up to the largest one used.
    return _TokenizerFacts(max(ids.values()) + 1, _lookup("bos"), _lookup("eos"), _lookup("pad"), base_size)


def _config_ids(value: Any) -> list[int]:
    if isinstance(value, list):
        return [item for item in value if _int_or_none(item) is not None]
    return [value] if _int_or_none(value) is not None else []


def _check_special_ids(
    config: dict[str, Any], generation: dict[str, Any], tokenizer: _TokenizerFacts, report: CheckReport
) -> None:
    for role, tokenizer_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id)):
        config_ids = _config_ids(config.get(f"{role}_token_id"))
        generation_ids = _config_ids(generation.get(f"{role}_token_id"))
        setattr(
            report,
            f"{role}_token_id",
            tokenizer_id if tokenizer_id is not None else next(iter(config_ids), None),
        )
        if tokenizer.vocab_size is not None and tokenizer_id is None:
            report.problems.append(f"the tokenizer defines no {role} token")
            continue
        for source, ids in (("config.json", config_ids), ("generation_config.json", generation_ids)):
            if ids and tokenizer_id is not None and tokenizer_id not in ids:
                report.problems.append(
                    f"{role}_token_id mismatch: {source} says {ids if len(ids) > 1 else ids[0]}, "
                    f"the tokenizer's {role} token has id {tokenizer_id}"
                )
        if not config_ids and not generation_ids and tokenizer_id is not None:
            report.notes.append(
                f"config.json sets no {role}_token_id; the tokenizer's ({tokenizer_id}) is used"
            )

    pad_sources = [
        ("config.json", _int_or_none(config.get("pad_token_id"))),
        ("generation_config.json", _int_or_none(generation.get("pad_token_id"))),
        ("the tokenizer", tokenizer.pad_id),
    ]
    pads = [(source, pad) for source, pad in pad_sources if pad is not None]
    if not pads:
        report.pad_token_id = None
        report.notes.append(
            "no pad token (normal for LLaMA-2): the server pads with the eos id, or 0 (<unk>) as LLaMA-2's "
            "generation_config does; padded positions are masked, so the choice does not change outputs"
        )
        return
    report.pad_token_id = pads[0][1]
    rows = report.embedding_rows
    for source, pad in pads:
        if pad < 0 or (rows is not None and pad >= rows):
            report.problems.append(
                f"pad_token_id {pad} from {source} is outside the embedding (0..{(rows or 1) - 1})"
            )
    if len({pad for _, pad in pads}) > 1:
        report.notes.append("pad ids differ: " + ", ".join(f"{source} {pad}" for source, pad in pads))


def _check_vocab(tokenizer: _TokenizerFacts, report: CheckReport) -> None:
    report.vocab_size = tokenizer.vocab_size
    rows, size = report.embedding_rows, tokenizer.vocab_size
    if rows is None or size is None:
        return
    if rows < size:
        report.problems.append(
            f"vocab size mismatch: the tokenizer has {size} tokens but config.json vocab_size "
            "(embedding rows) "
            f"is {rows}; ids {rows}..{size - 1} would index past the embedding"
        )
    elif rows > size:
        report.notes.append(
            f"the embedding has {rows - size} more rows than the tokenizer has tokens ({rows} vs {size}); "
            "padding rows are never produced by the tokenizer"
        )


def _weight_files(folder: Path, report: CheckReport) -> tuple[list[str], bool]:
    """Weight file names (checked to exist) and whether they are safetensors."""
    for index_name, single_name, safetensors in (
        ("model.safetensors.index.json", "model.safetensors", True),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", False),
    ):
        index = _read_json(folder / index_name, report)
        if index is not None:
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                report.problems.append(f"{index_name} has no weight_map")
                return [], safetensors
            shards = sorted(set(map(str, weight_map.values())))
            missing = [shard for shard in shards if not (folder / shard).is_file()]
            if missing:
                report.problems.append(
                    f"{index_name} lists {len(missing)} missing shard file(s): {', '.join(missing[:3])}"
                    + (" ..." if len(missing) > 3 else "")
                )
            return [shard for shard in shards if shard not in missing], safetensors
        if (folder / single_name).is_file():
            return [single_name], safetensors
    return [], True


def _check_weights(folder: Path, config: dict[str, Any] | None, report: CheckReport) -> None:
    problems_before = len(report.problems)
    files, safetensors = _weight_files(folder, report)
    report.weight_files = files
    if not files:
        if len(report.problems) == problems_before:  # a broken index has already said why
            report.problems.append(
                "no weights: expected model.safetensors, pytorch_model.bin or a sharded *.index.json"
            )
        return
    if not safetensors:
        report.notes.append(
            "PyTorch .bin weights: tensor shapes are not checked (that would need unpickling)"
        )
        return
    tensors: dict[str, dict[str, Any]] = {}
    for name in files:
        try:
            header = read_header(folder / name)
        except (OSError, ValueError) as exc:
            report.problems.append(f"{name} is not a readable safetensors file ({exc})")
            return
        tensors.update({key: value for key, value in header.items() if key != "__metadata__"})
    if config is None or report.parameter_count is None:
        return
    _compare_tensors(tensors, llama_tensor_shapes(config), report)


def _compare_tensors(
    tensors: dict[str, dict[str, Any]], expected: dict[str, tuple[int, ...]], report: CheckReport
) -> None:
    embedding = tensors.get("model.embed_tokens.weight")
    if embedding and report.embedding_rows is not None:
        rows = (embedding.get("shape") or [None])[0]
        if rows != report.embedding_rows:
            report.problems.append(
                f"vocab size mismatch: model.embed_tokens.weight has {rows} rows in the weights but "
                f"config.json vocab_size is {report.embedding_rows}"
            )
            # Reported once here; do not repeat it as two shape mismatches below.
            vocab_tensors = ("model.embed_tokens.weight", "lm_head.weight")
            expected = {key: shape for key, shape in expected.items() if key not in vocab_tensors}
    missing = [key for key in expected if key not in tensors]
    if missing:
        report.problems.append(
            f"the weights lack {len(missing)} tensor(s) config.json implies, e.g. {', '.join(missing[:3])}"
        )
    wrong = [
        f"{key} {list(tensors[key].get('shape', []))} (expected {list(shape)})"
        for key, shape in expected.items()
        if key in tensors and tuple(tensors[key].get("shape", ())) != shape
    ]
    if wrong:
        report.problems.append(
            f"{len(wrong)} tensor shape(s) disagree with config.json, e.g. {'; '.join(wrong[:2])}"
        )
    stored = sorted(
        {_SAFETENSORS_DTYPES.get(str(t.get("dtype")), str(t.get("dtype"))) for t in tensors.values()}
    )
    if report.dtype and stored and stored != [report.dtype]:
        report.notes.append(
            f"weights are stored as {', '.join(stored)} while config.json says {report.dtype}; "
            "they are cast at load time"
        )
