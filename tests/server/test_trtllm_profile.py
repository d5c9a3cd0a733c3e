"""The trtllm profile: settings, the `tensorrt_llm` config template, engine limits and the MPI launch argv.

Rendered configs are parsed with Triton's own ModelConfig protobuf (text_format.Parse rejects unknown
fields), so a misspelt field or a bad value type fails here instead of at server start on a GPU node."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mentallama_server.launch.render import interface_values, render_repository
from mentallama_server.launch.trtllm_profile import (
    SCALAR_RESHAPED_INPUTS,
    TENSORRT_LLM_INPUTS,
    TENSORRT_LLM_OUTPUTS,
    TENSORRT_LLM_TENSORS,
    EngineLimits,
    ProfileError,
    TrtllmProfile,
    engine_problems,
    fit_to_engine,
    load_profile,
    mpi_command,
    read_engine_limits,
    shm_pool_args,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "model_repository" / "engines" / "trtllm" / "tensorrt_llm" / "config.pbtxt"
SHARED = ("ensemble", "preprocessing", "postprocessing", "mentallama")
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def render_engine(profile: TrtllmProfile) -> model_config_pb2.ModelConfig:
    return parse(string.Template(TEMPLATE.read_text()).substitute(profile.template_values()))


def dtype_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def test_template_placeholders_are_exactly_covered() -> None:
    placeholders = set(PLACEHOLDER.findall(TEMPLATE.read_text()))
    values = TrtllmProfile().template_values()
    assert placeholders <= set(values), placeholders - set(values)
    shared = set()
    for name in SHARED:
        shared |= set(PLACEHOLDER.findall((REPO / "model_repository" / name / "config.pbtxt").read_text()))
    shared -= set(interface_values())
    assert shared <= set(values), f"shared templates need {shared - set(values)}"
    # No dead settings: every value feeds some template.
    assert set(values) <= placeholders | shared, set(values) - placeholders - shared


def test_rendered_engine_config_parses_as_triton_model_config() -> None:
    cfg = render_engine(TrtllmProfile(engine_dir="/engines/7b", tokenizer_dir="/ckpt/7b"))
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("tensorrt_llm", "tensorrtllm", 64)
    assert cfg.model_transaction_policy.decoupled is True
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(cfg.dynamic_batching.preferred_batch_size) == [64]
    params = {key: value.string_value for key, value in cfg.parameters.items()}
    assert params == {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": "/engines/7b",
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": "0.9",
        "max_tokens_in_paged_kv_cache": "",
        "enable_chunked_context": "true",
        "enable_kv_cache_reuse": "true",
        "exclude_input_in_output": "false",
        "cancellation_check_period_ms": "100",
        # Read by the backend without a fallback: must be present even when empty.
        "tokenizer_dir": "/ckpt/7b",
        "guided_decoding_backend": "",
        "xgrammar_tokenizer_info_path": "",
    }
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


def test_overridden_values_reach_the_config() -> None:
    profile = TrtllmProfile().with_overrides(
        ["max_tokens_in_paged_kv_cache=120000", "batch_scheduler_policy=max_utilization",
         "kv-cache-free-gpu-mem-fraction=0.85", "enable_kv_cache_reuse=false", "max_batch_size=128"]
    )  # fmt: skip
    cfg = render_engine(profile)
    params = {key: value.string_value for key, value in cfg.parameters.items()}
    assert params["max_tokens_in_paged_kv_cache"] == "120000"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.85"
    assert params["enable_kv_cache_reuse"] == "false"
    assert cfg.max_batch_size == 128 and list(cfg.dynamic_batching.preferred_batch_size) == [128]


def test_template_tensors_equal_the_declared_interface() -> None:
    cfg = render_engine(TrtllmProfile())
    inputs = {t.name: (dtype_name(t.data_type), tuple(t.dims), t.optional) for t in cfg.input}
    outputs = {t.name: (dtype_name(t.data_type), tuple(t.dims), False) for t in cfg.output}
    assert inputs == TENSORRT_LLM_INPUTS
    assert outputs == TENSORRT_LLM_OUTPUTS
    assert not set(TENSORRT_LLM_INPUTS) & set(TENSORRT_LLM_OUTPUTS)
    assert TENSORRT_LLM_TENSORS == {**TENSORRT_LLM_INPUTS, **TENSORRT_LLM_OUTPUTS}
    reshaped = {t.name for t in cfg.input if t.HasField("reshape")}
    assert reshaped == SCALAR_RESHAPED_INPUTS
    assert all(len(t.reshape.shape) == 0 for t in cfg.input if t.HasField("reshape"))
    ragged = {t.name for t in cfg.input if t.allow_ragged_batch}
    assert ragged == {"input_ids", "stop_words_list", "bad_words_list", "embedding_bias"}


# Rows copied from TensorRT-LLM 1.2.1
# triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt, kept apart from the module
# constant so an edit to one is caught by the other.
REFERENCE_ROWS = {
    "input_ids": ("TYPE_INT32", (-1,), True),
    "input_lengths": ("TYPE_INT32", (1,), False),
    "request_output_len": ("TYPE_INT32", (1,), False),
    "end_id": ("TYPE_INT32", (1,), True),
    "stop_words_list": ("TYPE_INT32", (2, -1), True),
    "seed": ("TYPE_UINT64", (1,), True),
    "runtime_top_p": ("TYPE_FP32", (1,), True),
    "stop": ("TYPE_BOOL", (1,), True),
    "streaming": ("TYPE_BOOL", (1,), True),
    "return_num_output_tokens": ("TYPE_BOOL", (1,), True),
    "output_ids": ("TYPE_INT32", (-1, -1), False),
    "sequence_length": ("TYPE_INT32", (-1,), False),
    "output_log_probs": ("TYPE_FP32", (-1, -1), False),
    "arrival_time_ns": ("TYPE_INT64", (1,), False),
    "num_output_tokens": ("TYPE_INT32", (1,), False),
}


def test_interface_matches_reference_rows() -> None:
    for name, row in REFERENCE_ROWS.items():
        assert TENSORRT_LLM_TENSORS[name] == row, name


def test_cpu_engine_step_declares_a_compatible_subset() -> None:
    """The CPU profile stands in for the same model: same names, types and dims; every required input."""
    cpu_template = (
        REPO / "model_repository" / "engines" / "cpu" / "tensorrt_llm" / "config.pbtxt"
    ).read_text()
    cpu = parse(PLACEHOLDER.sub("1", cpu_template))
    # The one CPU-only tensor: the cause of a failure after output, for callers that ask (errors_in_band).
    cpu_only = {"error_message"}
    for tensor in [*cpu.input, *cpu.output]:
        if tensor.name in cpu_only:
            continue
        assert tensor.name in TENSORRT_LLM_TENSORS, (
            f"CPU engine declares {tensor.name}, unknown to TensorRT-LLM"
        )
        data_type, dims, _ = TENSORRT_LLM_TENSORS[tensor.name]
        assert (dtype_name(tensor.data_type), tuple(tensor.dims)) == (data_type, dims), tensor.name
    required = {name for name, (_, _, optional) in TENSORRT_LLM_INPUTS.items() if not optional}
    assert required <= {t.name for t in cpu.input}


def test_whole_trtllm_repository_renders_and_parses(tmp_path: Path) -> None:
    profile = TrtllmProfile(engine_dir="/engines/7b", tokenizer_dir="/ckpt/7b")
    out = render_repository("trtllm", profile.template_values(), tmp_path / "repo")
    configs = {p.parent.name: parse(p.read_text()) for p in out.glob("*/config.pbtxt")}
    assert set(configs) == {*SHARED, "tensorrt_llm"}
    assert configs["tensorrt_llm"].backend == "tensorrtllm"
    # The ensemble's engine step only maps tensors this interface declares.
    step = next(s for s in configs["ensemble"].ensemble_scheduling.step if s.model_name == "tensorrt_llm")
    assert set(step.input_map) <= set(TENSORRT_LLM_INPUTS), set(step.input_map) - set(TENSORRT_LLM_INPUTS)
    assert set(step.output_map) <= set(TENSORRT_LLM_OUTPUTS)


# ---- Settings: defaults, files, overrides -----------------------------------------------------------------


def test_defaults_are_valid_and_documented() -> None:
    profile = TrtllmProfile()
    assert profile.problems() == []
    source = Path(sys.modules[TrtllmProfile.__module__].__file__).read_text()
    for name in TrtllmProfile.__dataclass_fields__:
        assert re.search(rf"\n    {name}: .*\n    \"\"\"", source), f"{name} has no docstring"


def test_overrides_are_typed() -> None:
    profile = TrtllmProfile().with_overrides({"max_tokens_in_paged_kv_cache": "none", "decoupled": "yes"})
    assert profile.max_tokens_in_paged_kv_cache is None and profile.decoupled is True


@pytest.mark.parametrize(("override", "error"), [
    ("max_batch=4", "unknown trtllm profile setting"),
    ("batch_scheduler_policy=fifo", "batch_scheduler_policy 'fifo' must be one of"),
    ("enable_chunked_context=maybe", "enable_chunked_context: 'maybe' is not a valid bool"),
    ("max_batch_size=1.5", "max_batch_size: '1.5' is not a valid int"),
    ("max_batch_size", "not key=value"),
    ("decoupled=false", "decoupled must be true"),
])  # fmt: skip
def test_overrides_are_checked(override: str, error: str) -> None:
    with pytest.raises(ProfileError, match=error):
        TrtllmProfile().with_overrides([override])


def test_load_profile_from_toml_and_json_then_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "h100.toml"
    toml.write_text(
        "[trtllm]\nmax_batch_size = 128\nkv_cache_free_gpu_mem_fraction = 0.8\n"
        "enable_kv_cache_reuse = false\n"
    )
    profile = load_profile(toml, ["max_batch_size=96"])
    assert (profile.max_batch_size, profile.kv_cache_free_gpu_mem_fraction) == (96, 0.8)
    assert profile.enable_kv_cache_reuse is False
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps({"batch_scheduler_policy": "max_utilization", "max_queue_size": 0}))
    assert load_profile(as_json).batch_scheduler_policy == "max_utilization"
    bad = tmp_path / "bad.toml"
    bad.write_text("max_batch_size = 'many'\n")
    with pytest.raises(ProfileError, match=r"bad\.toml: max_batch_size: 'many' is not a valid int"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="profile files are .toml or .json"):
        load_profile(tmp_path / "p.yaml")


# ---- Engine limits ---------------------------------------------------------------------------------------


def write_engine_config(folder: Path, **build: object) -> Path:
    folder.mkdir(exist_ok=True)
    build_config = {
        "max_batch_size": 64, "max_input_len": 3072, "max_seq_len": 4096, "max_num_tokens": 8192,
        "max_beam_width": 1, "plugin_config": {"use_paged_context_fmha": True}, **build,
    }  # fmt: skip
    mapping = {"world_size": 2, "tp_size": 2, "pp_size": 1}
    config = {"version": "1.2.1", "pretrained_config": {"mapping": mapping}, "build_config": build_config}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_engine_limits_and_fit(tmp_path: Path) -> None:
    limits = read_engine_limits(write_engine_config(tmp_path / "e", max_input_len=2048, max_seq_len=3072))
    assert limits == EngineLimits(64, 2048, 3072, 8192, 1, 2, 1, True)
    assert limits.world_size == 2
    profile = TrtllmProfile()  # 3072 in + 1024 out
    problems = engine_problems(profile, limits)
    assert "max_input_len 3072 > engine max_input_len 2048" in problems
    assert "max_input_len + max_output_len = 4096 > engine max_seq_len 3072" in problems
    fitted = fit_to_engine(profile, limits)
    assert (fitted.max_input_len, fitted.max_output_len) == (2048, 1024)
    assert engine_problems(fitted, limits) == []


def test_engine_without_paged_context_fmha_refuses_chunking_and_reuse(tmp_path: Path) -> None:
    limits = read_engine_limits(
        write_engine_config(tmp_path / "e", plugin_config={"use_paged_context_fmha": False})
    )
    assert any("--use_paged_context_fmha enable" in p for p in engine_problems(TrtllmProfile(), limits))
    off = TrtllmProfile(enable_chunked_context=False, enable_kv_cache_reuse=False)
    assert engine_problems(off, limits) == []
    with pytest.raises(ProfileError, match="not found"):
        read_engine_limits(tmp_path / "nothing")


# ---- MPI launch argv -------------------------------------------------------------------------------------


POOL = [
    "--backend-config=python,shm-default-byte-size=16777216",
    "--backend-config=python,shm-growth-byte-size=16777216",
]


def test_mpi_command_single_gpu_is_plain_tritonserver() -> None:
    assert mpi_command(1, "/repo", http_port=9000, grpc_port=9001, metrics_port=9002) == [
        "/opt/tritonserver/bin/tritonserver", "--model-repository=/repo", "--grpc-port=9001",
        "--http-port=9000", "--metrics-port=9002", "--disable-auto-complete-config",
        "--backend-config=python,shm-region-prefix-name=prefix0_", *POOL,
    ]  # fmt: skip


def test_mpi_command_matches_launch_triton_server_form() -> None:
    """Form of TensorRT-LLM's triton_backend/scripts/launch_triton_server.py: `mpirun --allow-run-as-root`,
    then per rank `-n 1 tritonserver ...`, ranks > 0 loading only tensorrt_llm, ranks separated by ':'; ours
    adds `--bind-to none` (issue 12) and the Python-backend pool flags of mentallama-serve."""
    cmd = mpi_command(2, "/repo", log_file="/logs/t.log", rank0_args=["--exit-timeout-secs=30"])
    rank = [
        "/opt/tritonserver/bin/tritonserver", "--model-repository=/repo", "--grpc-port=8001",
        "--http-port=8000", "--metrics-port=8002",
    ]  # fmt: skip
    assert cmd == [
        "mpirun", "--allow-run-as-root", "--bind-to", "none",
        "-n", "1", *rank, "--log-file=/logs/t.log", "--exit-timeout-secs=30",
        "--disable-auto-complete-config", "--backend-config=python,shm-region-prefix-name=prefix0_", *POOL,
        ":",
        "-n", "1", *rank, "--model-control-mode=explicit", "--load-model=tensorrt_llm",
        "--disable-auto-complete-config", "--backend-config=python,shm-region-prefix-name=prefix1_", *POOL,
    ]  # fmt: skip
    four = mpi_command(4, "/repo", shm_prefix="node1_r0_", oversubscribe=True)
    assert four[:5] == ["mpirun", "--allow-run-as-root", "--bind-to", "none", "--oversubscribe"]
    assert four.count(":") == 3 and four.count("--load-model=tensorrt_llm") == 3
    prefixes = [a for a in four if a.startswith("--backend-config=python,shm-region")]
    assert prefixes == [f"--backend-config=python,shm-region-prefix-name=node1_r0_{i}_" for i in range(4)]
    with pytest.raises(ValueError):
        mpi_command(0, "/repo")


def test_mpi_command_pool_flags_are_not_doubled_and_follow_the_size() -> None:
    """mentallama-serve passes its own pool flags in rank0_args (endpoint_args): rank 0 keeps one copy."""
    cmd = mpi_command(2, "/repo", shm_pool_mib=32, rank0_args=shm_pool_args(32))
    size = 32 * 2**20
    assert cmd.count(f"--backend-config=python,shm-default-byte-size={size}") == 2  # once per rank
    assert cmd.count(f"--backend-config=python,shm-growth-byte-size={size}") == 2
    assert not any("byte-size=16777216" in a for a in cmd)
    with pytest.raises(ValueError, match="at least 1 MiB"):
        mpi_command(1, "/repo", shm_pool_mib=0)


def test_module_cli_prints_the_same_argv() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mentallama_server.launch.trtllm_profile", "mpi-command", "--world-size", "2",
         "--model-repo", "/repo dir", "--http-port", "8100", "--print0", "--", "--log-verbose=1"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    argv = out.stdout.decode().split("\0")[:-1]
    assert argv == mpi_command(2, "/repo dir", http_port=8100, rank0_args=["--log-verbose=1"])
