"""Render the model repository of a profile into a folder Triton can serve.

Templates are `config.pbtxt` files with `${name}` placeholders; rendering fails when a template asks
for a value the profile does not provide, so a typo cannot reach a running server.
"""

from __future__ import annotations

import os
import shutil
import string
from collections.abc import Mapping
from pathlib import Path

from mentallama_interface import (
    ENGINE_INPUT_NAMES,
    ENGINE_OUTPUT_NAMES,
    ENSEMBLE_INPUTS,
    ENSEMBLE_OUTPUTS,
    FRONT_INPUTS,
    UNSERVED_INPUTS,
    pbtxt_tensors,
)
from mentallama_server.launch.paths import TEMPLATES, python_path

SHARED_MODELS = ("ensemble", "preprocessing", "postprocessing", "mentallama")
PROFILES = ("cpu", "trtllm")
ENGINE_MODEL = "tensorrt_llm"
# Copied beside every Python model's model.py: its sys.path (_bootstrap) and the `pb_utils` glue they share.
MODEL_GLUE = ("_bootstrap.py", "_glue.py")


class RenderError(ValueError):
    pass


def interface_values() -> dict[str, str]:
    """Placeholders filled from the one declaration of the ensemble interface."""
    passthrough = "\n".join(
        f'      input_map {{ key: "{engine}" value: "{name}" }}'
        for name, engine in ENGINE_INPUT_NAMES.items()
    )
    engine_outputs = "\n".join(f'      output_map {{ key: "{name}" value: "{name}" }}' for name in ENGINE_OUTPUT_NAMES)
    unserved_map = "\n".join(f'      input_map {{ key: "{name}" value: "{name}" }}' for name in UNSERVED_INPUTS)
    return {
        "ensemble_inputs": pbtxt_tensors(ENSEMBLE_INPUTS),
        "ensemble_outputs": pbtxt_tensors(ENSEMBLE_OUTPUTS),
        "front_inputs": pbtxt_tensors(FRONT_INPUTS),
        "engine_passthrough_inputs": passthrough,
        "engine_passthrough_outputs": engine_outputs,
        "unserved_inputs": pbtxt_tensors(spec for spec, _ in UNSERVED_INPUTS.values()),
        "unserved_input_map": unserved_map,
        "python_path": os.pathsep.join(python_path()),
    }


def fill(template: str, values: Mapping[str, str], source: Path) -> str:
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        raise RenderError(f"{source}: no value for placeholder ${{{exc.args[0]}}}") from None
    except ValueError as exc:
        raise RenderError(f"{source}: {exc}") from None


def _copy_model(src: Path, dst: Path, values: Mapping[str, str]) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = dst / "config.pbtxt"
    config.write_text(
        fill(config.read_text(encoding="utf-8"), values, src / "config.pbtxt"), encoding="utf-8"
    )
    model_py = dst / "1" / "model.py"
    if model_py.exists():
        for module in MODEL_GLUE:
            shutil.copy2(TEMPLATES / module, model_py.parent / module)


def render_repository(profile: str, values: Mapping[str, str], output: Path) -> Path:
    """Write the rendered repository of `profile` to `output` (replaced if it exists)."""
    if profile not in PROFILES:
        raise RenderError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    all_values = {**interface_values(), **values}
    output = Path(output)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for name in SHARED_MODELS:
        _copy_model(TEMPLATES / name, output / name, all_values)
    _copy_model(TEMPLATES / "engines" / profile / ENGINE_MODEL, output / ENGINE_MODEL, all_values)
    return output
