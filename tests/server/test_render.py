"""Rendered repositories of both profiles: valid Triton configs, a connected ensemble, shared models identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mentallama_interface import ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, FRONT_INPUTS
from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.render import SHARED_MODELS, RenderError, render_repository
from mentallama_server.launch.serve_trtllm import render_trtllm
from mentallama_server.launch.trtllm_profile import TrtllmProfile

# Values of the shared models that depend on where and how a server runs, set alike in both profiles.
SHARED = {
    "python_path": "/srv/mentallama/server:/srv/mentallama/client",
    "tokenizer_dir": "/models/mentallama-chat-7b",
    "max_batch_size": "64",
    "max_input_len": "2048",
    "max_output_len": "1024",
    "preprocessing_instances": "2",
    "postprocessing_instances": "2",
    "front_max_concurrent_requests": "256",
}


def load(path: Path) -> model_config_pb2.ModelConfig:
    # text_format.Parse fails on any field ModelConfig does not know.
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("render")
    cpu = CpuSettings().template_values() | {"engine_dir": SHARED["tokenizer_dir"]} | SHARED
    return {
        "cpu": render_repository("cpu", cpu, root / "cpu"),
        "trtllm": render_repository(
            "trtllm", TrtllmProfile(engine_dir="/engines/7b").template_values() | SHARED, root / "trtllm"
        ),
    }


@pytest.mark.parametrize("profile", ["cpu", "trtllm"])
def test_every_config_parses_as_model_config(rendered, profile):
    configs = {p.parent.name: load(p) for p in rendered[profile].glob("*/config.pbtxt")}
    assert set(configs) == {*SHARED_MODELS, "tensorrt_llm"}
    for name, config in configs.items():
        assert config.name == name
        assert config.max_batch_size > 0
    assert configs["tensorrt_llm"].backend == ("python" if profile == "cpu" else "tensorrtllm")
    assert configs["tensorrt_llm"].model_transaction_policy.decoupled


def test_cpu_engine_queue_holds_every_request_the_engine_admits(rendered):
    # Triton's queue in front of execute() must not refuse what the engine step would still accept.
    config = load(rendered["cpu"] / "tensorrt_llm" / "config.pbtxt")
    params = {key: value.string_value for key, value in config.parameters.items()}
    settings = CpuSettings()
    admitted = settings.engine_max_batch_size + settings.max_queue_size
    assert int(params["max_pending_requests"]) == admitted
    assert config.dynamic_batching.default_queue_policy.max_queue_size == admitted


@pytest.mark.parametrize("profile", ["cpu", "trtllm"])
def test_ensemble_maps_connect_existing_tensors_with_matching_types(rendered, profile):
    repo = rendered[profile]
    ensemble = load(repo / "ensemble" / "config.pbtxt")
    available = {t.name: t.data_type for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = load(repo / step.model_name / "config.pbtxt")
        inputs = {t.name: t.data_type for t in model.input}
        outputs = {t.name: t.data_type for t in model.output}
        for key, value in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert value in available, f"{step.model_name}.{key} reads {value}, which nothing produced"
            assert available[value] == inputs[key], f"{step.model_name}.{key}: type mismatch"
        required = {t.name for t in model.input if not t.optional}
        assert required <= set(step.input_map), f"{step.model_name}: required inputs left unmapped"
        for key, value in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            available[value] = outputs[key]
    for out in ensemble.output:
        assert out.name in available and available[out.name] == out.data_type


def test_entry_models_share_the_declared_interface(rendered):
    declared_out = [(t.name, t.data_type, list(t.dims)) for t in ENSEMBLE_OUTPUTS]
    for profile in ("cpu", "trtllm"):
        for model, inputs in (("ensemble", ENSEMBLE_INPUTS), ("mentallama", FRONT_INPUTS)):
            declared_in = [(t.name, t.data_type, list(t.dims), t.optional) for t in inputs]
            config = load(rendered[profile] / model / "config.pbtxt")
            got_in = [
                (t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims), t.optional) for t in config.input
            ]
            got_out = [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output]
            assert got_in == declared_in and got_out == declared_out
    # The front model adds `stop` alone (in-band stop by request id) to the ensemble's inputs.
    assert [t.name for t in FRONT_INPUTS] == [*(t.name for t in ENSEMBLE_INPUTS), "stop"]


def test_shared_models_are_identical_in_both_profiles(rendered):
    for model in SHARED_MODELS:
        for path in sorted((rendered["cpu"] / model).rglob("*")):
            if path.is_file():
                twin = rendered["trtllm"] / path.relative_to(rendered["cpu"])
                assert twin.read_bytes() == path.read_bytes(), f"{path.relative_to(rendered['cpu'])} differs"


def test_python_models_carry_the_bootstrap_and_the_glue(rendered):
    models = list(rendered["cpu"].glob("*/1/model.py"))
    assert len(models) == 4
    for model_py in models:
        assert (model_py.parent / "_bootstrap.py").is_file() and (model_py.parent / "_glue.py").is_file()


def test_missing_value_is_a_render_error(tmp_path):
    values = CpuSettings().template_values() | SHARED
    with pytest.raises(RenderError, match=r"\$\{engine_dir\}"):
        render_repository("cpu", values, tmp_path / "repo")
    with pytest.raises(RenderError, match="unknown profile"):
        render_repository("gpu", values, tmp_path / "repo")


def test_trtllm_render_needs_no_engine(tmp_path):
    out = render_trtllm(TrtllmProfile(), tmp_path / "repo")
    assert load(out / "tensorrt_llm" / "config.pbtxt").backend == "tensorrtllm"
