"""Folders written whole or not at all: the checkpoints and engines the build tool makes are read by servers and
other builds, which must never see half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replace_dir", "staged_folder"]


@contextmanager
def staged_folder(output: Path, purpose: str = "building") -> Iterator[Path]:
    """A fresh folder beside `output` to write into (readable like any other: mkdtemp makes it 0700). When the
    block ends normally it replaces `output` (`replace_dir`); when it raises (Ctrl-C included), it is removed and
    `output` is left as it was."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.{purpose}.", dir=output.parent))
    try:
        staging.chmod(0o755)
        yield staging
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` at `target` by renames on one file system: an old `target` is moved aside first and
    removed after, so `target` is always either the old folder or the new one."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)
