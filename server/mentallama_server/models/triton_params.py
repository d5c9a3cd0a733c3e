"""Typed access to `parameters` and inputs of a Triton model config (as the Python backend passes it, JSON), and to a
request's boolean parameters."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeVar

from mentallama_server.models.request_errors import Limits

T = TypeVar("T", int, float, str, bool)


def parse_model_config(args: dict[str, Any]) -> dict[str, Any]:
    return json.loads(args["model_config"])


def get_parameter(model_config: dict[str, Any], name: str, pytype: type[T], default: T | None = None) -> T:
    """Read one parameter; an empty value or an unfilled `${...}` counts as absent.

    A missing parameter without a default is a configuration error, raised at model load so the
    server refuses to start instead of serving with a guessed value.
    """
    raw = model_config.get("parameters", {}).get(name, {}).get("string_value", "")
    if raw == "" or raw.startswith("${"):
        if default is None:
            raise ValueError(f"model {model_config.get('name')!r}: parameter {name!r} is not set")
        return default
    if pytype is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")  # type: ignore[return-value]
    return pytype(raw)


def request_limits(model_config: dict[str, Any]) -> Limits:
    """The request limits the launcher rendered (`max_input_len`, `max_output_len`)."""
    return Limits(get_parameter(model_config, "max_input_len", int), get_parameter(model_config, "max_output_len", int))


def input_names(model_config: dict[str, Any]) -> tuple[str, ...]:
    """The inputs the model's config.pbtxt declares, in order: the one list of what a request may carry."""
    return tuple(spec["name"] for spec in model_config.get("input", []))


def check_inputs(model_config: dict[str, Any], handled: Iterable[str]) -> None:
    """Refuse to load a model whose config declares inputs its code does not read (they would be ignored
    silently) or lacks inputs its code reads (clients could never send them)."""
    declared, known = set(input_names(model_config)), set(handled)
    problems = []
    if declared - known:
        problems.append(f"declared but not read: {', '.join(sorted(declared - known))}")
    if known - declared:
        problems.append(f"read but not declared: {', '.join(sorted(known - declared))}")
    if problems:
        name = model_config.get("name")
        raise ValueError(f"model {name!r}: config.pbtxt inputs and code differ; {'; '.join(problems)}")


def request_flag(parameters: str | None, name: str) -> bool:
    """Whether a request's parameters (`request.parameters()`, a JSON object) set `name` to true."""
    try:
        return json.loads(parameters or "{}").get(name) is True
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return False
