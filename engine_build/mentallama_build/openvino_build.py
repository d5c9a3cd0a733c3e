"""`mentallama-build openvino`: compile a LLaMA checkpoint into an OpenVINO engine folder for the CPU profile.

Order of work, so that nothing long starts before everything cheap has been checked: checkpoint check ->
option validation -> capacity plan -> (unless dry run) export with optimum-intel's OpenVINO exporter (weight
compression by NNCF) -> build manifest. The export writes into a temporary folder beside the target, which
replaces the target only once complete: an interrupted build never leaves a half engine to be served.

An engine folder holds `openvino_model.xml/.bin`, `config.json`, `generation_config.json`, the tokenizer as
`tokenizer.json` (what the serving processes read with the `tokenizers` library) and
`mentallama_build_manifest.json`: the checkpoint's fingerprint, the options, the library versions and a
digest of the engine's own files, so the server can refuse an engine that does not match.

Torch, transformers and optimum-intel are imported only while exporting: they belong to the build step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mentallama import locations
from mentallama_build.check import check_checkpoint
from mentallama_build.engine_config import ModelShape, shape_from_report
from mentallama_build.kv_cache import exported_kv_precision, kv_plan, resolve_precisions
from mentallama_build.locks import file_lock
from mentallama_build.manifest import (
    _sha256_file,
    _version,
    checkpoint_digest,
    read_manifest,
    save_manifest,
    tokenizer_digest,
)
from mentallama_build.staging import staged_folder

__all__ = [
    "ENGINE_FILES",
    "WEIGHT_FORMATS",
    "EngineBuildError",
    "OpenVinoOptions",
    "build_engine",
    "cached_engine_dir",
    "capacity_text",
    "ensure_engine",
    "option_problems",
    "serving_precisions",
    "verify_engine",
]

OPENVINO_MANIFEST_VERSION = 1
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
ENGINE_FILES = ("openvino_model.xml", "openvino_model.bin")

# Bytes per weight as stored; int8/int4 add one fp16 scale (and a zero point for asymmetric int8) per output
# channel or group, which is what the small extra terms are.
_WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0 + 4.0 / 4096, "int4": 0.5}


class EngineBuildError(RuntimeError):
    """The build was refused (bad checkpoint or options) or the export failed; the message says which."""


@dataclass(frozen=True)
class OpenVinoOptions:
    """What decides the engine's bytes. `group_size` and `ratio` apply to int4 only."""

    weight_format: str = "int8"
    group_size: int | None = None
    ratio: float | None = None

    def normalised(self) -> OpenVinoOptions:
        if self.weight_format != "int4":
            return OpenVinoOptions(self.weight_format)
        return OpenVinoOptions("int4", self.group_size or 128, 1.0 if self.ratio is None else self.ratio)

    def key(self) -> str:
        n = self.normalised()
        if n.weight_format != "int4":
            return n.weight_format
        return f"int4-g{n.group_size}-r{n.ratio:g}"


def option_problems(options: OpenVinoOptions, shape: ModelShape | None = None) -> list[str]:
    problems = []
    if options.weight_format not in WEIGHT_FORMATS:
        problems.append(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}, got {options.weight_format!r}")
    if options.weight_format != "int4" and (options.group_size is not None or options.ratio is not None):
        problems.append("--group-size and --ratio apply to --weight-format int4 only")
    if options.group_size is not None:
        if options.group_size != -1 and options.group_size < 1:
            problems.append(f"--group-size must be positive (or -1 for per-channel), got {options.group_size}")
        elif shape is not None and options.group_size > 0 and shape.hidden_size % options.group_size:
            problems.append(
                f"--group-size {options.group_size} does not divide the hidden size {shape.hidden_size}"
            )
    if options.ratio is not None and not 0.0 < options.ratio <= 1.0:
        problems.append(f"--ratio must be in (0, 1], got {options.ratio}")
    return problems


def capacity_text(shape: ModelShape, options: OpenVinoOptions, *, kv_precision: str, kv_blocks: int) -> str:
    """Weight bytes, KV bytes per token and what the chosen KV cache holds, as printed before a build;
    ``kv_precision`` is resolved (:func:`mentallama_build.kv_cache.resolve_precisions`), the KV lines are
    :class:`mentallama_build.kv_cache.KvPlan`'s, as the launcher's."""
    n = options.normalised()
    per_weight = _WEIGHT_BYTES[n.weight_format]
    if n.weight_format == "int4":
        # The rest (1 - ratio) of the layers stays int8; embeddings and lm_head stay int8 too.
        ratio = n.ratio or 1.0
        per_weight = ratio * (0.5 + 2.0 / max(n.group_size or 128, 1)) + (1 - ratio) * _WEIGHT_BYTES["int8"]
    embeddings = 2 * shape.embedding_params
    layers = shape.parameter_count - embeddings
    embed_bytes = _WEIGHT_BYTES["int8" if n.weight_format in ("int8", "int4") else n.weight_format]
    weights = layers * per_weight + embeddings * embed_bytes
    lines = [f"weights ({n.key()}): ~{weights / 2**20:,.1f} MiB for {shape.parameter_count:,} parameters"]
    return "\n".join(lines + kv_plan(shape, kv_precision, kv_blocks).lines(shape))


def serving_precisions(checkpoint: Path, options: OpenVinoOptions, inference: str = "auto",
                       kv: str = "auto") -> tuple[str, str]:  # fmt: skip
    """``(inference, KV-cache precision)`` that `mentallama-serve` will use for this checkpoint's engine with these
    options: one rule for the launcher and the build step (:func:`mentallama_build.kv_cache.resolve_precisions`,
    the engine's own runtime option predicted from its weight format). Raises `EngineBuildError` for a pair
    the CPU plugin refuses."""
    config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    try:
        return resolve_precisions(dtype, inference, kv, exported_kv_precision(options.normalised().weight_format))
    except ValueError as exc:
        raise EngineBuildError(str(exc)) from None


def _export_kwargs(options: OpenVinoOptions) -> dict[str, Any]:
    """Keyword arguments of `OVModelForCausalLM.from_pretrained` for the weight format."""
    from optimum.intel import OVWeightQuantizationConfig

    n = options.normalised()
    if n.weight_format in ("fp32", "fp16"):
        # Explicit, or optimum-intel compresses models of more than 1B parameters to int8 by itself.
        return {"load_in_8bit": False}
    if n.weight_format == "int8":
        return {"quantization_config": OVWeightQuantizationConfig(bits=8)}
    return {"quantization_config": OVWeightQuantizationConfig(bits=4, group_size=n.group_size, ratio=n.ratio)}


def _tool_versions() -> dict[str, str | None]:
    return {
        "openvino": _version("openvino"),
        "openvino_genai": _version("openvino-genai"),
        "openvino_tokenizers": _version("openvino-tokenizers"),
        "optimum_intel": _version("optimum-intel"),
        "nncf": _version("nncf"),
        "transformers": _version("transformers"),
        "torch": _version("torch"),
        "mentallama_build": _version("mentallama-build"),  # this part wrote the engine
        "python": platform.python_version(),
    }


def _engine_digest(engine_dir: Path) -> dict[str, str]:
    """sha256 of the graph and tokenizer files; the weights file by size (it can be GBs)."""
    out = {"openvino_model.xml": _sha256_file(engine_dir / "openvino_model.xml")}
    out["openvino_model.bin"] = f"bytes:{(engine_dir / 'openvino_model.bin').stat().st_size}"
    out.update(tokenizer_digest(engine_dir))
    return out


@contextlib.contextmanager
def _heartbeat(say: Callable[[str], None], what: str, every_s: float = 15.0) -> Iterator[None]:
    """Say that a long step is still running (a 7B export takes minutes without a sound otherwise)."""
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            say(f"  ... {what}: {time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _shape(checkpoint: Path) -> ModelShape:
    report = check_checkpoint(checkpoint)
    if report.problems:
        raise EngineBuildError(
            f"checkpoint {checkpoint} is not servable:\n" + "\n".join(f"  - {p}" for p in report.problems)
        )
    shape = shape_from_report(report)
    if shape is None:
        raise EngineBuildError(f"checkpoint {checkpoint}: its config lacks the facts a build needs")
    return shape


def build_engine(
    checkpoint: Path,
    output: Path,
    options: OpenVinoOptions,
    *,
    say: Callable[[str], None] = print,
    dry_run: bool = False,
    inference_precision: str = "auto",
    kv_precision: str = "auto",
    kv_blocks: int = 512,
) -> Path:
    """Check, plan and (unless `dry_run`) export `checkpoint` into the engine folder `output`. The plan counts
    the KV cache in the precision serving will use (:func:`serving_precisions`)."""
    checkpoint, output = Path(checkpoint).resolve(), Path(output).resolve()
    say(f"checking {checkpoint}")
    shape = _shape(checkpoint)
    problems = option_problems(options, shape)
    if problems:
        raise EngineBuildError("invalid options:\n" + "\n".join(f"  - {p}" for p in problems))
    inference, kv = serving_precisions(checkpoint, options, inference_precision, kv_precision)
    say(f"serving precision: {inference} inference, {kv} KV cache")
    say(capacity_text(shape, options, kv_precision=kv, kv_blocks=kv_blocks))
    if dry_run:
        say(f"dry run: would export to {output} with {options.normalised().key()} weights")
        return output
    started = time.monotonic()
    with staged_folder(output) as work:
        say(f"exporting with optimum-intel ({options.normalised().key()} weights) into {output}")
        with _heartbeat(say, "exporting"):
            _export(checkpoint, work, options)
        _write_manifest(work, checkpoint, options, shape)
    say(f"engine ready in {output} ({time.monotonic() - started:.1f} s)")
    return output


def _export(checkpoint: Path, work: Path, options: OpenVinoOptions) -> None:
    import logging
    import warnings

    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    # The exporter's tracer warnings are about its own graph capture, not about anything a user can change.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("nncf").setLevel(logging.WARNING)
        try:
            model = OVModelForCausalLM.from_pretrained(
                str(checkpoint), export=True, compile=False, local_files_only=True, **_export_kwargs(options)
            )
            if options.weight_format == "fp16":
                model.half()
            model.save_pretrained(work)
            # The fast-tokenizer file is what serving reads; transformers converts tokenizer.model when needed.
            AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True).save_pretrained(work)
        except Exception as exc:
            raise EngineBuildError(f"export failed: {type(exc).__name__}: {exc}") from exc
    missing = [name for name in (*ENGINE_FILES, "config.json", "tokenizer.json") if not (work / name).is_file()]
    if missing:
        raise EngineBuildError(f"export wrote no {', '.join(missing)} (optimum-intel {_version('optimum-intel')})")


def _write_manifest(engine_dir: Path, checkpoint: Path, options: OpenVinoOptions, shape: ModelShape) -> None:
    manifest = {
        "manifest_version": OPENVINO_MANIFEST_VERSION,
        "engine": "openvino",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(checkpoint), **checkpoint_digest(checkpoint)},
        "model_shape": asdict(shape),
        "options": asdict(options.normalised()),
        "tools": _tool_versions(),
        "engine_files": _engine_digest(engine_dir),
    }
    save_manifest(engine_dir, manifest)


def verify_engine(engine_dir: Path, checkpoint: Path | None = None) -> list[str]:
    """Problems that make serving `engine_dir` unsafe: files changed since the build, or (with `checkpoint`)
    an engine built from another checkpoint. Empty when it matches."""
    engine_dir = Path(engine_dir)
    try:
        manifest = read_manifest(engine_dir, engine="openvino", version=OPENVINO_MANIFEST_VERSION,
                                 build="mentallama-build openvino")  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    problems = []
    recorded = manifest.get("engine_files") or {}
    missing = [name for name in recorded if not (engine_dir / name).is_file()]
    problems += [f"{engine_dir / name} is missing" for name in missing]
    if not missing:
        current = _engine_digest(engine_dir)
        for name, digest in sorted(recorded.items()):
            if current.get(name) != digest:
                problems.append(f"{engine_dir / name} changed after the build (another model or tokenizer?)")
    if checkpoint is not None:
        built_from = (manifest.get("checkpoint") or {}).get("sha256")
        if built_from != checkpoint_digest(Path(checkpoint))["sha256"]:
            problems.append(f"{engine_dir} was built from another checkpoint than {checkpoint} (or it changed since)")
    return problems


def cached_engine_dir(checkpoint: Path, options: OpenVinoOptions) -> Path:
    """Where `ensure_engine` keeps the engine of this checkpoint content and these options."""
    digest = checkpoint_digest(Path(checkpoint))["sha256"]
    key = hashlib.sha256(f"{digest}\0{options.normalised().key()}".encode()).hexdigest()[:12]
    return locations.engines_dir() / f"{Path(checkpoint).resolve().name}-{options.normalised().key()}-{key}"


def ensure_engine(
    checkpoint: Path, options: OpenVinoOptions, *, say: Callable[[str], None] | None = None,
    inference_precision: str = "auto", kv_precision: str = "auto", kv_blocks: int = 512,
) -> Path:  # fmt: skip
    """The cached engine of `checkpoint` with `options`, built first when missing or stale (the precisions and
    blocks are the server's, for the plan printed before a build).

    The folder name holds a digest of the checkpoint and the options, so a changed checkpoint or other options
    get a new build; a folder whose manifest no longer matches is rebuilt."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    target = cached_engine_dir(checkpoint, options)
    if not verify_engine(target, checkpoint):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if verify_engine(target, checkpoint):
            say(f"building the OpenVINO engine of {checkpoint} (first use of this checkpoint and options)")
            build_engine(checkpoint, target, options, say=say, inference_precision=inference_precision,
                         kv_precision=kv_precision, kv_blocks=kv_blocks)  # fmt: skip
    return target
