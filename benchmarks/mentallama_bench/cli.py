"""`mentallama-bench`: load-test a running MentaLLaMA Triton server; the other serving studies as commands.

\b
    mentallama-bench --endpoint 127.0.0.1:8001 --concurrency 1,4,16 --requests 200 --output results/
    mentallama-bench soak --endpoint 127.0.0.1:8001 --minutes 10

Without a command it runs the load benchmark: each load is one run; one folder per run plus a session
report land under OUTPUT/NAME/. A command runs one of the studies (`mentallama-bench COMMAND --help`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated

import typer
from click.core import ParameterSource

from mentallama import __version__
from mentallama.cli.common import HELP_OPTIONS, plain_help, version_option
from mentallama.cli.options import OptionGroup, with_option_groups
from mentallama_bench.session import BenchOptions, plan_session, run_plan

__all__ = ["STUDIES", "app", "main"]

plain_help()
app = typer.Typer(
    add_completion=False,
    help=__doc__,
    no_args_is_help=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)

# The studies: command -> (module whose `main(argv)` runs it, one line for `mentallama-bench --help`). Their
# argparse parsers stay beside the code they configure and receive the command's arguments as a list;
# modules are imported only when their command runs, as several need the server or build extras.
STUDIES: dict[str, tuple[str, str]] = {
    "soak": ("mentallama_bench.soak", "Minutes of mixed SDK traffic against a live server."),
    "cpu-engine": ("mentallama_bench.cpu_engine_bench", "Served vs in-process OpenVINO engine vs generate()."),
    "serving-overhead": ("mentallama_bench.serving_overhead", "Served vs in-process engine on a CPU server."),
    "front-door": ("mentallama_bench.front_door_overhead", "The same load through the front door and direct."),
    "sdk-overhead": ("mentallama_bench.sdk_overhead", "SDK analyze vs raw tritonclient streams."),
    "label-parsing": ("mentallama_bench.label_parsing", "How often and how fast parse_response gets the label."),
}
# Everything after the command name, --help included, goes to the study's own parser.
PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _study(module: str) -> Callable[[typer.Context], None]:
    def run(ctx: typer.Context) -> None:
        raise typer.Exit(importlib.import_module(module).main(list(ctx.args)) or 0)

    return run


for _name, (_module, _summary) in STUDIES.items():
    app.command(_name, help=_summary, add_help_option=False, context_settings=PASS_THROUGH)(_study(_module))


@app.callback(invoke_without_command=True)
@with_option_groups(options=OptionGroup())
def bench(
    ctx: typer.Context,
    options: BenchOptions,
    version: Annotated[bool, version_option("mentallama-bench", __version__)] = False,
) -> None:
    """Run one load or a sweep and report TTFT, ITL, E2E latency, throughput and goodput."""
    if ctx.invoked_subcommand is not None:  # a study runs next, with its own flags: refuse load flags before it
        given = [name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise typer.BadParameter(
                f"load-benchmark options ({flags}) given before `{ctx.invoked_subcommand}`; a command takes its own "
                f"options after its name (mentallama-bench {ctx.invoked_subcommand} --help)"
            )
        return
    try:
        plan = plan_session(options)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    raise typer.Exit(run_plan(plan, out=typer.echo, err=lambda line: typer.echo(line, err=True)))


def main(argv: list[str] | None = None) -> None:
    """Console script entry point; `argv` (without the program name) instead of the command line."""
    app(args=argv, prog_name="mentallama-bench")
