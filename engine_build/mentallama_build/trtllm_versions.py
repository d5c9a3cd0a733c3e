"""Which TensorRT-LLM a build would use, and whether its parts agree.

An engine build runs the container's `tensorrt_llm` package (trtllm-build, and the conversion scripts import it)
and the `examples/` scripts of a TensorRT-LLM checkout. The scripts follow their own release's package API: a
checkout of another release fails inside `convert_checkpoint.py` with an ImportError or a wrong flag, minutes
into a build. `version_findings` compares the two before anything runs.

Versions are read without importing anything heavy: the installed package from its metadata (importing
`tensorrt_llm` initialises CUDA), the checkout from `tensorrt_llm/version.py` beside `examples/`, the container
from the environment NVIDIA's images set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from mentallama_build.engine_config import DEFAULT_CONTAINER_IMAGE, TRTLLM_VERSION

__all__ = [
    "CONTAINER_TRTLLM",
    "TRTLLM_REPO_URL",
    "VersionFindings",
    "examples_version",
    "installed_trtllm_version",
    "release",
    "triton_versions",
    "version_findings",
]

TRTLLM_REPO_URL = "https://github.com/NVIDIA/TensorRT-LLM"
CONTAINER_TRTLLM = {"26.04": TRTLLM_VERSION, "26.05": TRTLLM_VERSION, "26.06": TRTLLM_VERSION, "26.07": TRTLLM_VERSION}
"""NGC tritonserver `-trtllm-python-py3` releases -> the TensorRT-LLM they ship, as deploy/README.md states it.
Unverified against the images (NVIDIA's support matrix lags; other projects list 1.2.0 for 26.04): the build
compares the container's actual package with the examples, and `mentallama-bench gpu-smoke` reports the pair it
finds, so this table is corrected from real nodes."""
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
# Where NVIDIA's tritonserver images say what they are (`NVIDIA_TRITON_SERVER_VERSION=26.07`, the Triton release in
# TRITON_SERVER_VERSION and /opt/tritonserver/TRITON_VERSION).
TRITON_VERSION_FILE = Path("/opt/tritonserver/TRITON_VERSION")


def installed_trtllm_version() -> str | None:
    """The `tensorrt_llm` package this Python would import, from its metadata; None when it has none."""
    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def examples_version(examples_dir: Path) -> str | None:
    """The release of the checkout that `examples_dir` (its `examples/` folder, or the checkout itself) belongs
    to, from `tensorrt_llm/version.py`; None when that file is not there (examples copied out of a checkout)."""
    examples_dir = Path(examples_dir)
    for root in (examples_dir.parent, examples_dir):
        path = root / "tensorrt_llm" / "version.py"
        if path.is_file():
            match = _VERSION_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
            if match:
                return match.group(1)
    return None


def triton_versions() -> dict[str, str | None]:
    """The container (`26.07`) and Triton release (`2.63.0`) of an NVIDIA tritonserver image; None outside one."""
    triton = os.environ.get("TRITON_SERVER_VERSION")
    if triton is None and TRITON_VERSION_FILE.is_file():
        triton = TRITON_VERSION_FILE.read_text(encoding="utf-8", errors="replace").strip() or None
    return {"container": os.environ.get("NVIDIA_TRITON_SERVER_VERSION"), "triton": triton}


def release(version: str) -> str:
    """`1.2.1` of `1.2.1`, `1.2.1+cu130`, `v1.2.1`: local labels and a tag's `v` do not change the API."""
    return version.strip().removeprefix("v").split("+", 1)[0]


@dataclass
class VersionFindings:
    """What was found; `problems` refuse a build, `warnings` are printed and it goes on."""

    installed: str | None
    examples: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _checkout_fix(version: str, examples_dir: Path) -> str:
    checkout = examples_dir.parent if examples_dir.name == "examples" else examples_dir
    return (
        f"check out the same release: git -C {checkout} fetch --depth 1 origin tag v{version} && "
        f"git -C {checkout} checkout v{version} (or git clone --branch v{version} --depth 1 {TRTLLM_REPO_URL}), "
        "or run in the container image of the examples' release"
    )


def version_findings(
    examples_dir: Path, installed: str | None = None, examples: str | None = None, *, read: bool = True
) -> VersionFindings:
    """Compare the container's `tensorrt_llm` with the examples' release (read from the system unless given).

    A mismatch is a problem naming both versions and the fix; a release other than the one our command lines
    were checked against (TRTLLM_VERSION) is a warning, as is a version that cannot be read."""
    if read:
        installed = installed if installed is not None else installed_trtllm_version()
        examples = examples if examples is not None else examples_version(examples_dir)
    found = VersionFindings(installed, examples)
    if installed is None:
        found.problems.append(
            f"no tensorrt_llm package in this Python: run the build inside {DEFAULT_CONTAINER_IMAGE} "
            "(deploy/README.md, 'Our tools in the NGC image')"
        )
    if examples is None:
        found.warnings.append(
            f"cannot tell which TensorRT-LLM release {examples_dir} comes from (no tensorrt_llm/version.py beside "
            f"it): it must be v{installed or TRTLLM_VERSION}, the container's tensorrt_llm"
        )
    if installed is not None and examples is not None and release(installed) != release(examples):
        found.problems.append(
            f"the container has tensorrt_llm {installed} but the examples in {examples_dir} are from TensorRT-LLM "
            f"{examples}: their conversion scripts fail against another release's package; "
            + _checkout_fix(release(installed), Path(examples_dir))
        )
    if installed is not None and release(installed) != TRTLLM_VERSION:
        found.warnings.append(
            f"tensorrt_llm {installed} is not {TRTLLM_VERSION}, the release whose command-line flags these build "
            "steps were checked against: a flag may have changed (mentallama-bench gpu-smoke tries the whole path)"
        )
    return found
