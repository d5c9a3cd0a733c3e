"""``mentallama``: command line over the SDK (wiring only; each command lives in its own module)."""

from __future__ import annotations

from typing import Annotated

from .. import __version__
from ._client_options import DISCLAIMER
from .analyze import analyze
from .catalog import tasks
from .common import typer_factory, version_option
from .evaluate import evaluate

__all__ = ["app", "main"]

app = typer_factory(help=f"MentaLLaMA: interpretable mental-health analysis over Triton. {DISCLAIMER}")


@app.callback()
def _root(version: Annotated[bool, version_option("mentallama", __version__)] = False) -> None:
    """MentaLLaMA: interpretable mental-health analysis over Triton."""


app.command("tasks")(tasks)
app.command("analyze")(analyze)
app.command("eval")(evaluate)


def main() -> None:
    """Console script entry point."""
    app()
