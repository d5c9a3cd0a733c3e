"""Build manifest: what an engine was built from, so the server refuses a tokenizer that does not belong.

`mentallama_build_manifest.json` sits beside the engine files. It records a digest of the source checkpoint,
every build option, tool versions and the GPU. The launcher calls `verify_manifest(engine_dir, tokenizer_dir)`
and refuses to serve when it returns problems: an engine served with another model's tokenizer produces
fluent nonsense, which for mental-health analysis is worse than an error.

Checkpoint digest (fast by design, seconds for a 26 GB checkpoint): sha256 of each small file (config,
generation config, tokenizer files, weight index) and, for each weight file, a fingerprint over its size,
its header (safetensors: the JSON header with names, dtypes, shapes, offsets) and the first and last MiB of
tensor data. Two fine-tunes with identical shapes differ in those sampled bytes; a corruption in the middle
of a shard would not be seen. It is an identity check, not an integrity check.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from mentallama_build.engine_config import BuildConfig, GpuInfo, ModelShape

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "TOKENIZER_FILES",
    "checkpoint_digest",
    "read_manifest",
    "save_manifest",
    "tokenizer_digest",
    "tool_versions",
    "verify_manifest",
    "write_manifest",
]

MANIFEST_NAME = "mentallama_build_manifest.json"
MANIFEST_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
CONFIG_FILES = ("config.json", "generation_config.json")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
SAMPLE_BYTES = 1024 * 1024
_CHUNK = 1024 * 1024


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _weight_fingerprint(path: Path) -> str:
    """sha256 over size, safetensors header and the first/last SAMPLE_BYTES of the data."""
    size = path.stat().st_size
    h = hashlib.sha256(f"size={size}\n".encode())
    with path.open("rb") as f:
        data_start = 0
        if path.suffix == ".safetensors" and size >= 8:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 8 + header_len <= size:
                h.update(f.read(header_len))
                data_start = 8 + header_len
        f.seek(data_start)
        h.update(f.read(SAMPLE_BYTES))
        f.seek(max(data_start, size - SAMPLE_BYTES))
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _combine(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def tokenizer_digest(directory: Path) -> dict[str, str]:
    """sha256 of each tokenizer file present in `directory` (by file name)."""
    return {name: _sha256_file(directory / name) for name in TOKENIZER_FILES if (directory / name).is_file()}


def checkpoint_digest(checkpoint_dir: Path) -> dict[str, Any]:
    """{"sha256": combined digest, "files": {file name: digest}} of a Hugging Face checkpoint folder."""
    files: dict[str, str] = {}
    for name in (*CONFIG_FILES, *WEIGHT_INDEX_FILES):
        if (checkpoint_dir / name).is_file():
            files[name] = _sha256_file(checkpoint_dir / name)
    files.update(tokenizer_digest(checkpoint_dir))
    for path in sorted(checkpoint_dir.iterdir()):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            files[path.name] = "fingerprint:" + _weight_fingerprint(path)
    return {"sha256": _combine(files), "files": files}


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def tool_versions(container_image: str | None = None) -> dict[str, str | None]:
    """Versions that decide engine compatibility. Read from package metadata: importing tensorrt_llm
    initialises CUDA and takes seconds, and its version is all we need."""
    return {
        "tensorrt_llm": _version("tensorrt_llm", "tensorrt-llm"),
        "tensorrt": _version("tensorrt", "tensorrt-cu12", "tensorrt_cu13"),
        "nvidia_modelopt": _version("nvidia-modelopt"),
        "mentallama_build": _version("mentallama-build"),  # this part wrote the manifest
        "python": platform.python_version(),
        "container_image": container_image,
        "triton_server_container": os.environ.get("NVIDIA_TRITON_SERVER_VERSION"),
    }


def _engine_files(engine_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    config = engine_dir / "config.json"
    if config.is_file():
        out["config.json"] = _sha256_file(config)
    for path in sorted(engine_dir.glob("rank*.engine")):
        out[path.name] = {"bytes": path.stat().st_size}
    return out


def _tokenizer_record(engine_dir: Path, tokenizer: dict[str, Any] | None) -> dict[str, Any]:
    record = dict(tokenizer or {"source": "checkpoint", "dir": None})
    if record.get("dir"):
        record["files"] = tokenizer_digest(engine_dir / record["dir"])
    return record


def write_manifest(
    engine_dir: Path,
    cfg: BuildConfig,
    *,
    gpu: GpuInfo | None,
    shape: ModelShape | None = None,
    versions: dict[str, str | None] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    """Write the manifest beside the engine files; returns its path. `tokenizer` says where serving reads
    tokenizer.json (`fast_tokenizer.TokenizerPlan.record`); a converted one's files are digested here."""
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(cfg.checkpoint_dir), **checkpoint_digest(cfg.checkpoint_dir)},
        "model_shape": None if shape is None else shape.__dict__,
        "options": cfg.as_record(),
        "tools": versions if versions is not None else tool_versions(cfg.container_image),
        "gpu": None
        if gpu is None
        else {"name": gpu.name, "compute_capability": gpu.cc_text, "memory_gib": gpu.memory_gib},
        "engine_files": _engine_files(engine_dir),
        "tokenizer": _tokenizer_record(engine_dir, tokenizer),
    }
    return save_manifest(engine_dir, manifest)


def save_manifest(engine_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest` beside the engine files (whole or not at all: a crash leaves no half file); its path."""
    path = Path(engine_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(
    engine_dir: Path, *, engine: str | None = None, version: int = MANIFEST_VERSION,
    build: str = "mentallama-build engine",
) -> dict[str, Any]:  # fmt: skip
    """Load the manifest of `engine_dir` (the TensorRT-LLM engine's; with `engine`, one whose `engine` key says
    that kind, as `mentallama-build openvino` writes). Raises FileNotFoundError / ValueError with a readable
    message that names `build`, the command that writes it."""
    path = Path(engine_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {engine_dir}: build the engine with `{build}`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    found = data if isinstance(data, dict) else {}
    if found.get("manifest_version") != version or (engine is not None and found.get("engine") != engine):
        kind = f"an {engine} engine manifest" if engine else "a manifest"
        raise ValueError(f"{path} is not {kind} of version {version} (engine {found.get('engine')!r}, "
                         f"manifest_version {found.get('manifest_version')!r}); rebuild it with `{build}`")  # fmt: skip
    return data


def _tokenizer_problems(recorded: dict[str, str], tokenizer_dir: Path) -> Iterable[str]:
    recorded_tok = {k: v for k, v in recorded.items() if k in TOKENIZER_FILES}
    if not recorded_tok:
        yield "the manifest records no tokenizer files (the checkpoint had none): cannot vouch for one"
        return
    given = tokenizer_digest(tokenizer_dir)
    for name, digest in sorted(recorded_tok.items()):
        if name not in given:
            yield f"tokenizer file {name} of the engine's checkpoint is missing from {tokenizer_dir}"
        elif given[name] != digest:
            yield f"tokenizer file {name} in {tokenizer_dir} differs from the one the engine was built with"
    for name in sorted(set(given) - set(recorded_tok)):
        yield f"{tokenizer_dir} has {name}, which the engine's checkpoint did not have"
    config = tokenizer_dir / "config.json"
    if "config.json" in recorded and config.is_file() and _sha256_file(config) != recorded["config.json"]:
        yield f"{config} differs from the checkpoint the engine was built from (another model?)"


def _engine_problems(manifest: dict[str, Any], engine_dir: Path) -> Iterable[str]:
    recorded = manifest.get("engine_files") or {}
    world = int((manifest.get("options") or {}).get("world_size", 1))
    for rank in range(world):
        if not (engine_dir / f"rank{rank}.engine").is_file():
            yield f"engine file rank{rank}.engine is missing from {engine_dir} (built for tp*pp={world})"
    current = _engine_files(engine_dir)
    if "config.json" in recorded and current.get("config.json") != recorded["config.json"]:
        yield f"{engine_dir / 'config.json'} changed after the manifest was written: re-run the build"
    for name, info in recorded.items():
        if name.endswith(".engine") and name in current and current[name] != info:
            yield f"{name} changed size after the manifest was written"
    converted = manifest.get("tokenizer") or {}
    if converted.get("dir"):
        folder = engine_dir / converted["dir"]
        if tokenizer_digest(folder) != converted.get("files"):
            yield f"the tokenizer converted at build time ({folder}) is missing or changed: re-run the build"


def served_tokenizer_dir(engine_dir: Path | str, tokenizer_dir: Path | str) -> tuple[Path | None, str | None]:
    """The folder whose tokenizer.json serving reads, or None and why not: `tokenizer_dir` when it has one, else
    the tokenizer the build converted from its tokenizer.model (recorded in the manifest). Serving never
    converts: it loads the `tokenizers` library alone."""
    engine_dir, tokenizer_dir = Path(engine_dir), Path(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.json").is_file():
        return tokenizer_dir, None
    try:
        converted = (read_manifest(engine_dir).get("tokenizer") or {}).get("dir")
    except (FileNotFoundError, ValueError):
        converted = None
    if converted and (engine_dir / converted / "tokenizer.json").is_file():
        return engine_dir / converted, None
    return None, (
        f"{tokenizer_dir} has no tokenizer.json and the engine holds no converted one: serving reads tokenizer.json "
        f"only (no transformers in the serving processes); rebuild with `mentallama-build engine`, which converts "
        f"tokenizer.model once, or, for an engine built elsewhere, write one with `mentallama-build fast-tokenizer "
        f"--checkpoint {tokenizer_dir} --output DIR` and serve with --tokenizer DIR"
    )


def verify_manifest(engine_dir: Path | str, tokenizer_dir: Path | str) -> list[str]:
    """Problems that make serving `engine_dir` with `tokenizer_dir` unsafe; empty when they match."""
    engine_dir, tokenizer_dir = Path(engine_dir), Path(tokenizer_dir)
    try:
        manifest = read_manifest(engine_dir)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    if not tokenizer_dir.is_dir():
        return [f"tokenizer directory {tokenizer_dir} does not exist"]
    files = (manifest.get("checkpoint") or {}).get("files") or {}
    return [*_tokenizer_problems(files, tokenizer_dir), *_engine_problems(manifest, engine_dir)]
