"""Where things are: the model repository templates and the shipped checkpoint (package data of
`mentallama_server`), the run folders (the cache folder, `mentallama.locations`), the bundled Triton server."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

_RESOURCES = Path(str(importlib.resources.files("mentallama_server")))
# In a checkout, model_repository is a link to the top-level model_repository/; in a wheel, its copy.
TEMPLATES = _RESOURCES / "model_repository"
SHIPPED_CHECKPOINTS = _RESOURCES / "checkpoints"
# The packages Triton's Python models import (the stubs do not read site-packages' .pth files, through which
# editable installs find theirs).
STUB_PACKAGES = ("mentallama_server", "mentallama", "mentallama_interface")


def package_roots(names: tuple[str, ...] = STUB_PACKAGES) -> list[str]:
    """The folders our packages are imported from: site-packages for wheels, the part's folder when editable."""
    return list(dict.fromkeys(str(_package_dir(name).parent) for name in names))


def python_path() -> list[str]:
    """Import roots the Python-backend stub needs: this interpreter's site-packages and our packages."""
    roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *package_roots()]
    return list(dict.fromkeys(roots))  # without duplicates, in order


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"Python package {name!r} is not installed; run `make setup` (it installs nvidia-pytriton, "
            "whose wheel carries the tritonserver binary)"
        )
    return Path(spec.origin).parent


class TritonInstall:
    """The tritonserver binary, libraries and Python backend bundled in the nvidia-pytriton wheel."""

    def __init__(self) -> None:
        pkg = _package_dir("pytriton")
        self.root = pkg / "tritonserver"
        self.binary = self.root / "bin" / "tritonserver"
        self.python_backend = self.root / "backends" / "python"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        self.libs = pkg.parent / "nvidia_pytriton.libs"
        for path in (self.binary, self.python_backend / "libtriton_python.so", self.stub):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing from the nvidia-pytriton wheel (Python {version})"
                )

    def env(self) -> dict[str, str]:
        """Environment for tritonserver: bundled libs first, then this Python's shared libpython."""
        env = dict(os.environ)
        lib_dirs = [str(self.libs), sysconfig.get_config_var("LIBDIR") or ""]
        if env.get("LD_LIBRARY_PATH"):
            lib_dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in lib_dirs if d)
        return env

    def make_backend_dir(self, target: Path) -> Path:
        """A backend directory holding the Python backend and the stub for this interpreter."""
        python_dir = target / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for src in (
            self.python_backend / "libtriton_python.so",
            self.python_backend / "triton_python_backend_utils.py",
            self.stub,
        ):
            shutil.copy2(src, python_dir / src.name)
        return target
