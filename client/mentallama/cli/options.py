"""Typer options declared once, on the fields of the dataclasses that library code takes.

`mentallama-serve`, `mentallama-build engine` and `mentallama-bench` take their flags (name, default, help) from
dataclass fields, so a field the library reads cannot lack a flag, and a flag's default cannot drift from the
field's: a field with neither help nor a reason for having no flag stops the command from being defined at all.
It lives with the SDK's CLI because every other package depends on the SDK (and the SDK on none of them).

Field metadata, plain strings, so that the dataclasses stay importable without Typer:

- ``help``: the flag's help text (every flag has one);
- ``not_a_flag``: why the field has no flag (the command then leaves it at its default);
- ``flags``: the option names when not ``--field-name``; a bool with one name is a plain switch (no ``--no-x``);
- ``envvar``: an environment variable read when the flag is not given;
- ``choices``: the accepted values, listed in ``--help`` and checked while parsing;
- ``panel``: the ``--help`` section of this field, when not its group's.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Annotated, Any, TypeVar

import click
import typer
import typer.core

__all__ = ["CHOICES", "ENVVAR", "FLAGS", "HELP", "NOT_A_FLAG", "PANEL", "OptionGroup", "PanelledCommand",
           "field_default", "field_options", "flag", "flag_fields", "with_option_groups"]  # fmt: skip

HELP = "help"
NOT_A_FLAG = "not_a_flag"
FLAGS = "flags"
ENVVAR = "envvar"
CHOICES = "choices"
PANEL = "panel"

F = TypeVar("F", bound=Callable[..., Any])


def flag(default: Any = MISSING, help: str = "", **meta: Any) -> Any:  # noqa: A002 - the metadata key
    """A dataclass field that is a flag, e.g. ``port: int = flag(8001, "gRPC port")``; no default makes the flag
    required; `meta` takes the other keys above (``flags=("--set",)``, ``envvar=...``, ...)."""
    return field(default=default, metadata={HELP: help, **meta})


@dataclass(frozen=True)
class OptionGroup:
    """How one dataclass parameter of a command shows in ``--help``: its section and a prefix for each flag's help
    (e.g. ``"cpu: "``, so that a flag read alone still says which profile it applies to)."""

    panel: str | None = None
    help_prefix: str = ""


def field_default(f: Field) -> Any:
    """The field's default; ``inspect.Parameter.empty`` (a required option) when it has none."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


def flag_fields(cls: type) -> list[Field]:
    """The fields of `cls` that are flags; a field that is neither a flag nor says why is an error."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    out = []
    for f in fields(cls):
        if str(f.metadata.get(NOT_A_FLAG, "")).strip():
            continue
        if not str(f.metadata.get(HELP, "")).strip():
            raise TypeError(
                f"{cls.__name__}.{f.name} has no flag: give it metadata {HELP!r} (the flag's help) or "
                f"{NOT_A_FLAG!r} (why it has none)"
            )
        out.append(f)
    return out


def field_options(cls: type, group: OptionGroup = OptionGroup()) -> list[inspect.Parameter]:
    """One keyword-only Typer option per flag field of `cls`, named after the field."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in flag_fields(cls):
        meta: Mapping[str, Any] = f.metadata
        choices = meta.get(CHOICES)
        option = typer.Option(
            *meta.get(FLAGS, ()),
            help=group.help_prefix + meta[HELP],
            envvar=meta.get(ENVVAR),
            click_type=click.Choice(list(choices)) if choices else None,
            rich_help_panel=meta.get(PANEL, group.panel),
        )
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=field_default(f),
                                        annotation=Annotated[hints[f.name], option]))  # fmt: skip
    return params


def with_option_groups(**groups: OptionGroup) -> Callable[[F], F]:
    """Decorate a Typer command so that each parameter named in `groups` (annotated with a dataclass) becomes one
    option per field of that dataclass; the command is called with the dataclass built from them.

    The command's other parameters stay as they are. Option names must not collide across groups."""

    def decorate(func: F) -> F:
        hints = typing.get_type_hints(func, include_extras=True)
        unknown = set(groups) - set(inspect.signature(func).parameters)
        if unknown:
            raise TypeError(f"{func.__name__} has no parameter {', '.join(sorted(unknown))}")
        params: list[inspect.Parameter] = []
        expanded: dict[str, tuple[type, list[str]]] = {}
        for param in inspect.signature(func).parameters.values():
            if param.name in groups:
                options = field_options(hints[param.name], groups[param.name])
                expanded[param.name] = (hints[param.name], [p.name for p in options])
                params += options
            else:
                # Keyword-only, so that the order of options (their order in --help) needs no defaults first.
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[param.name]))
        names = [p.name for p in params]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise TypeError(f"{func.__name__}: option names defined twice: {', '.join(clashes)}")

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            for name, (cls, field_names) in expanded.items():
                kwargs[name] = cls(**{n: kwargs.pop(n) for n in field_names})
            return func(**kwargs)

        command.__signature__ = inspect.Signature(params, return_annotation=hints.get("return", None))  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return typing.cast(F, command)

    return decorate


class PanelledCommand(typer.core.TyperCommand):
    """Plain (``rich_markup_mode=None``) help with the options in sections by ``rich_help_panel``, as rich help
    shows them; options without a panel come first, under "Options"."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
