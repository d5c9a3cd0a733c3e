"""`mentallama-build`: wiring only; each command is a few lines over `engine_build` functions."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from engine_build.check import check_checkpoint
from engine_build.engine_cli import engine
from engine_build.tiny import build_checkpoint, default_checkpoint_dir, describe

app = typer.Typer(
    help="Checkpoint tooling for MentaLLaMA serving: generated test checkpoints, checks, engine builds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


class Size(str, Enum):
    tiny = "tiny"
    bench = "bench"


@app.command()
def tiny(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder to write (default: artifacts/checkpoints/<size>)."),
    ] = None,
    size: Annotated[Size, typer.Option(help="tiny: 2 layers (tests); bench: ~91M parameters.")] = Size.tiny,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a random-weight LLaMA checkpoint (fixed seed, byte-identical on every build)."""
    target = output if output is not None else default_checkpoint_dir(size.value)
    started = time.perf_counter()
    try:
        path = build_checkpoint(target, size.value, force=force)
    except FileExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    facts = describe(size.value)
    typer.echo(
        f"built {size.value} checkpoint in {path} ({facts['parameters']:,} parameters, {facts['dtype']}, "
        f"vocab {facts['vocab_size']}) in {time.perf_counter() - started:.1f}s"
    )


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder (Hugging Face LLaMA layout).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Validate a checkpoint folder without loading weights; exit code 1 when it has problems."""
    report = check_checkpoint(path)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(code=1)


app.command("engine")(engine)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
