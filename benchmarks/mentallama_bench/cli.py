"""`mentallama-bench`: load-test a running MentaLLaMA Triton server; the other serving studies as commands.

\b
    mentallama-bench --endpoint 127.0.0.1:8001 --concurrency 1,4,16 --requests 200 --output results/
    mentallama-bench soak --endpoint 127.0.0.1:8001 --minutes 10

Without a command it runs the load benchmark: each load is one run; one folder per run plus a session
report land under OUTPUT/NAME/. A command runs one of the studies (`mentallama-bench COMMAND --help`).
"""

from __future__ import annotations

from typing import Annotated

import typer
from click.core import ParameterSource

from mentallama import __version__
from mentallama.cli.common import HELP_OPTIONS, plain_help, version_option
from mentallama.cli.options import OptionGroup, with_option_groups
from mentallama_bench.session import BenchOptions, plan_session, run_plan
from mentallama_bench.studies import STUDIES

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

for _name, _command in STUDIES.items():
    app.command(_name)(_command)


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
