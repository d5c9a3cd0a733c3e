"""`mentallama-build`: wiring only; each command is a few lines over `engine_build` functions."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mentallama import __version__, locations
from mentallama.cli.common import cache_dir_option, version_option
from mentallama_build.check import check_checkpoint
from mentallama_build.engine_cli import engine
from mentallama_build.tiny import build_checkpoint, default_checkpoint_dir, describe

app = typer.Typer(
    help="Checkpoint tooling for MentaLLaMA serving: generated test checkpoints, checks, engine builds "
    "(OpenVINO for CPUs, TensorRT-LLM for NVIDIA GPUs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(
    version: Annotated[bool, version_option("mentallama-build", __version__)] = False,
    cache_dir: Annotated[Path | None, cache_dir_option("built engines and generated checkpoints")] = None,
) -> None:
    """Checkpoint tooling for MentaLLaMA serving: generated test checkpoints, checks, engine builds (OpenVINO for
    CPUs, TensorRT-LLM for NVIDIA GPUs)."""
    locations.set_cache_dir(cache_dir)


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


@app.command("fast-tokenizer")
def fast_tokenizer(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder whose tokenizer.model is converted.")],
    output: Annotated[Path, typer.Option(help="Folder to write tokenizer.json (and its config) into.")],
) -> None:
    """Write tokenizer.json for a checkpoint that has only tokenizer.model (serving reads tokenizer.json alone)."""
    from mentallama_build.fast_tokenizer import TokenizerConversionError, convert_tokenizer

    try:
        path = convert_tokenizer(checkpoint, output)
    except TokenizerConversionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"wrote {path / 'tokenizer.json'} (checked against tokenizer.model); serve with --tokenizer {path}")


@app.command()
def openvino(
    checkpoint: Annotated[Path, typer.Option(help="LLaMA checkpoint folder (Hugging Face layout).")],
    output: Annotated[Path, typer.Option(help="Engine folder to write (replaced only once the build is complete).")],
    weight_format: Annotated[str, typer.Option(help="fp32, fp16, int8 or int4 (NNCF weight compression).")] = "int8",
    group_size: Annotated[int | None, typer.Option(help="int4: weights per quantisation group (default 128).")] = None,
    ratio: Annotated[
        float | None, typer.Option(help="int4: share of layers in int4, the rest int8 (default 1).")
    ] = None,
    cache_num_blocks: Annotated[
        int, typer.Option(help="For the capacity plan: KV-cache blocks of 32 tokens you will serve with.")
    ] = 512,
    kv_cache_precision: Annotated[
        str,
        typer.Option(help="For the capacity plan, as mentallama-serve --kv-cache-precision: auto (what serving uses "
                          "unasked: f32 with f32 inference, else the engine's or the CPU plugin's default, u8 on "
                          "x86-64), f32, f16, bf16 or u8."),
    ] = "auto",  # fmt: skip
    inference_precision: Annotated[
        str, typer.Option(help="For the capacity plan, as mentallama-serve --inference-precision: auto, f32 or bf16.")
    ] = "auto",
    dry_run: Annotated[bool, typer.Option(help="Check and plan only; export nothing.")] = False,
) -> None:
    """Compile a checkpoint into an OpenVINO engine for the CPU profile (mentallama-serve --engine DIR)."""
    from mentallama_build.kv_cache import INFERENCE_PRECISIONS, KV_PRECISIONS
    from mentallama_build.openvino_build import EngineBuildError, OpenVinoOptions, build_engine

    for flag, value, choices in (("--kv-cache-precision", kv_cache_precision, KV_PRECISIONS),
                                 ("--inference-precision", inference_precision, INFERENCE_PRECISIONS)):  # fmt: skip
        if value not in choices:
            typer.echo(f"error: {flag} must be one of {', '.join(choices)}, got {value!r}", err=True)
            raise typer.Exit(code=1)
    options = OpenVinoOptions(weight_format, group_size, ratio)
    try:
        build_engine(
            checkpoint,
            output,
            options,
            say=lambda message: typer.echo(message, err=True),
            dry_run=dry_run,
            inference_precision=inference_precision,
            kv_precision=kv_cache_precision,
            kv_blocks=cache_num_blocks,
        )
    except EngineBuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command("label-model")
def label_model(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="IMHI train_instruction/ folder (or root).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.npz).")],
    limit: Annotated[int | None, typer.Option(help="At most this many rows per CSV (smoke tests).")] = None,
) -> None:
    """Train the SDK's label models (explanation -> label); see engine_build/mentallama_build/label_model.py."""
    from mentallama_build.label_model import TrainConfig, train_label_models

    try:
        train_label_models(data, output, TrainConfig(limit=limit), echo=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command()
def nano(
    data: Annotated[Path, typer.Option(help="IMHI train_instruction/ folder (<task>/*.csv).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint folder to write.")],
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: --epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data (default 1).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (and save) after this much training.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the tokenizer, the weights and the data order.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in <output>.state/.")] = False,
    exclude: Annotated[
        Path | None, typer.Option(help="Folder of test CSVs whose queries are dropped (default: the test set beside "
                                  "--data: ../test_instruction, or ../../test_data/test_instruction in a clone).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many rows (smoke tests).")] = None,
    save_minutes: Annotated[float, typer.Option(help="Minutes between checkpoints.")] = 5.0,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    vocab_size: Annotated[int, typer.Option(help="SentencePiece pieces (a few dozen rows hold ~1,000).")] = 8000,
) -> None:
    """Train MentaLLaMA-nano (a small LLaMA) on the IMHI training data, on the CPU; see mentallama_build/nano.py."""
    from mentallama_build.nano import NanoRecipe, default_exclude, describe_result, train_nano

    try:
        result = train_nano(
            data, output, steps=steps, epochs=epochs, max_minutes=max_minutes, seed=seed, resume=resume,
            exclude=exclude if exclude is not None else default_exclude(data), limit=limit,
            save_minutes=save_minutes, threads=threads, recipe=NanoRecipe(vocab_size=vocab_size), echo=typer.echo,
        )  # fmt: skip
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(describe_result(result))


@app.command("nano-eval")
def nano_eval(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (Hugging Face LLaMA layout).")],
    imhi: Annotated[Path, typer.Option(help="IMHI root (its test_instruction/ is used).")],
    tasks: Annotated[
        list[str] | None,
        typer.Option(help="Task(s) to score; repeat or comma-separate [default: DR, dreaddit, SAD, Irf, MultiWD].",
                     show_default=False),  # fmt: skip
    ] = None,
    per_task: Annotated[int, typer.Option(help="Seeded sample of this many rows per task.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer (greedy).")] = 256,
    batch_size: Annotated[int, typer.Option(help="Queries per generate() batch.")] = 16,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    predictions: Annotated[
        Path | None, typer.Option(help="JSON file for the reports and every answer.", show_default=False)
    ] = None,
) -> None:
    """Score a checkpoint in-process on IMHI test samples (weighted F1 vs the majority class)."""
    from mentallama_build.nano_eval import DEFAULT_TASKS, evaluate, markdown_table

    names = [t.strip() for item in tasks for t in item.split(",") if t.strip()] if tasks else list(DEFAULT_TASKS)
    reports = evaluate(checkpoint, imhi, names, per_task, seed, max_new_tokens, batch_size, threads, predictions)
    typer.echo(markdown_table(reports))


@app.command()
def shaped(
    output: Annotated[Path, typer.Argument(help="Checkpoint folder to write.", show_default=False)],
    device: Annotated[str, typer.Option(help="Where to draw the weights: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a LLaMA-2-7B-shaped checkpoint with random float16 weights (GPU serving benchmarks)."""
    from mentallama_build.shaped import build_shaped_checkpoint
    from mentallama_build.shapes import parameter_count

    started = time.perf_counter()
    try:
        path = build_shaped_checkpoint(output, device=device, force=force)
    except FileExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    typer.echo(f"built {path}: {parameter_count(config):,} parameters ({config['torch_dtype']}, vocab "
               f"{config['vocab_size']}) in {time.perf_counter() - started:.1f}s")  # fmt: skip


def main() -> None:
    app()


if __name__ == "__main__":
    main()
