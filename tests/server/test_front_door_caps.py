"""The launcher hands the front door the served profile's cap on beams and sequences per prompt
(`FrontDoorConfig.max_sequences`), read from the rendered repository as the models will run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.front_door_process import front_door_config, rendered_max_sequences
from mentallama_server.launch.launcher import ServerOptions
from mentallama_server.launch.render import render_repository
from mentallama_server.launch.trtllm_profile import TrtllmProfile

SHARED = {"python_path": "/srv", "tokenizer_dir": "/models/t", "max_batch_size": "8", "max_input_len": "64",
          "max_output_len": "64", "preprocessing_instances": "1", "postprocessing_instances": "1",
          "front_max_concurrent_requests": "8"}  # fmt: skip


def _run_dir(tmp_path: Path, profile: str, **settings: int) -> Path:
    if profile == "cpu":
        values = CpuSettings(**settings).template_values() | {"engine_dir": "/engines/e"}
    else:
        values = TrtllmProfile(engine_dir="/engines/e", **settings).template_values()
    render_repository(profile, values | SHARED, tmp_path / "model_repository")
    return tmp_path


@pytest.mark.parametrize(
    ("profile", "settings", "cap"),
    [("cpu", {}, 4), ("cpu", {"max_sequences": 2}, 2), ("cpu", {"max_sequences": 9}, 9),
     ("trtllm", {}, 4), ("trtllm", {"max_beam_width": 2}, 4), ("trtllm", {"max_beam_width": 8}, 8)],
)  # fmt: skip
def test_the_cap_is_the_profiles(tmp_path: Path, profile: str, settings: dict, cap: int) -> None:
    """CPU: --max-sequences; TensorRT-LLM: the engine's beam width, at least the default (its samples are
    bounded by nothing else)."""
    run_dir = _run_dir(tmp_path, profile, **settings)
    assert rendered_max_sequences(run_dir) == cap
    public = ServerOptions(grpc_port=9001, http_port=9000)
    assert front_door_config(public, public, run_dir).max_sequences == cap


def test_no_rendered_repository_keeps_the_default(tmp_path: Path) -> None:
    assert rendered_max_sequences(tmp_path) == FrontDoorConfig.max_sequences == 4
