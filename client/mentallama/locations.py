"""Where MentaLLaMA's tools keep what they write: one locator for every part (server, build, benchmarks).

Writable state (generated checkpoints, engines, run folders) goes to the cache folder, never into the installed
packages: `MENTALLAMA_CACHE` when set (`--cache-dir` on the CLIs sets it, so child processes agree), else
`artifacts/` of the checkout these packages were installed from (editable, `make setup`), else the user's cache
folder (`$XDG_CACHE_HOME/mentallama`, by default `~/.cache/mentallama`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "checkout_root", "checkpoints_dir", "engines_dir", "runs_dir", "set_cache_dir"]

CACHE_ENV = "MENTALLAMA_CACHE"
# What marks the top of a checkout of this project (a wheel installed in site-packages has neither beside it).
_CHECKOUT_MARKERS = ("constraints.txt", "model_repository")


def checkout_root() -> Path | None:
    """The checkout these packages run from (an editable install), or None for an installed wheel."""
    for parent in Path(__file__).resolve().parents:
        if all((parent / marker).exists() for marker in _CHECKOUT_MARKERS):
            return parent
    return None


def cache_dir() -> Path:
    """The folder for everything written (see the module docstring for the order); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    root = checkout_root()
    if root is not None:
        return root / "artifacts"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().resolve() / "mentallama"


def set_cache_dir(path: str | os.PathLike[str] | None) -> None:
    """Use `path` as the cache folder in this process and the processes it starts (a CLI's `--cache-dir`)."""
    if path is not None:
        os.environ[CACHE_ENV] = str(Path(path).expanduser().resolve())


def checkpoints_dir() -> Path:
    """Generated checkpoints (`tiny`, `bench`, `shaped`)."""
    return cache_dir() / "checkpoints"


def engines_dir() -> Path:
    """Built OpenVINO engines, keyed by checkpoint and options."""
    return cache_dir() / "engines"


def runs_dir() -> Path:
    """One folder per server start: the rendered model repository, logs, the front door's settings."""
    return cache_dir() / "runs"
