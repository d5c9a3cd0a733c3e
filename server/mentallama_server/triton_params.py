"""Typed access to `parameters` of a Triton model config (as the Python backend passes it, JSON)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

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
