"""Engine build plan: exact TensorRT-LLM 1.2.1 command lines, option validation, the CLI, the step runner
and the build manifest. No GPU and no TensorRT-LLM: commands are checked flag by flag against the options
the 1.2.1 sources declare, and steps are run as real (small) subprocesses."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mentallama_build.cli import app
from mentallama_build.engine_config import (
    PRESETS,
    QUANTIZATIONS,
    BuildConfig,
    GpuInfo,
    gpu_from_name,
    parse_nvidia_smi,
    validate,
)
from mentallama_build.manifest import (
    MANIFEST_NAME,
    checkpoint_digest,
    read_manifest,
    save_manifest,
    verify_manifest,
    write_manifest,
)
from mentallama_build.shapes import llama_tensor_shapes, parameter_count
from mentallama_build.trtllm_commands import Step, StepFailed, build_steps, run_steps

# ---- Options the TensorRT-LLM 1.2.1 command lines accept ------------------------------------------------
# trtllm-build: tensorrt_llm/commands/build.py parse_arguments() plus the plugin options that
# tensorrt_llm/plugin/plugin.py adds through add_plugin_argument() (its `cli_plugin_args` list).
TRTLLM_BUILD_OPTIONS = {
    "--checkpoint_dir", "--model_config", "--build_config", "--model_cls_file", "--model_cls_name",
    "--output_dir", "--max_batch_size", "--max_input_len", "--max_seq_len", "--max_decoder_seq_len",
    "--max_beam_width", "--max_num_tokens", "--opt_num_tokens", "--max_encoder_input_len",
    "--max_prompt_embedding_table_size", "--max_multimodal_len", "--kv_cache_type", "--paged_kv_cache",
    "--input_timing_cache", "--output_timing_cache", "--profiling_verbosity", "--strip_plan",
    "--weight_sparsity", "--weight_streaming", "--fast_build", "--workers", "--log_level",
    "--enable_debug_output", "--visualize_network", "--dry_run", "--monitor_memory", "--logits_dtype",
    "--gather_context_logits", "--gather_generation_logits", "--gather_all_token_logits", "--lora_dir",
    "--lora_ckpt_source", "--lora_target_modules", "--max_lora_rank", "--speculative_decoding_mode",
    "--max_draft_len",
    # plugin.py cli_plugin_args
    "--bert_attention_plugin", "--gpt_attention_plugin", "--gemm_plugin", "--gemm_swiglu_plugin",
    "--fp8_rowwise_gemm_plugin", "--lora_plugin", "--dora_plugin", "--moe_plugin", "--mamba_conv1d_plugin",
    "--nccl_plugin", "--low_latency_gemm_plugin", "--low_latency_gemm_swiglu_plugin",
    "--gemm_allreduce_plugin", "--context_fmha", "--bert_context_fmha_fp32_acc", "--remove_input_padding",
    "--tokens_per_block", "--use_paged_context_fmha", "--use_fp8_context_fmha", "--fuse_fp4_quant",
    "--multiple_profiles", "--paged_state", "--streamingllm", "--norm_quant_fusion", "--reduce_fusion",
    "--user_buffer", "--use_fused_mlp", "--pp_reduce_scatter",
}  # fmt: skip
# Value choices (plugin.py: PluginConfig field Literals; bool features take enable/disable).
TRTLLM_BUILD_CHOICES = {
    "--gemm_plugin": {"auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", "disable"},
    "--gpt_attention_plugin": {"auto", "float16", "float32", "bfloat16", "int32", "disable"},
    "--kv_cache_type": {"continuous", "paged", "disabled"},
    **{
        flag: {"enable", "disable"}
        for flag in ("--context_fmha", "--remove_input_padding", "--use_paged_context_fmha",
                     "--use_fp8_context_fmha", "--multiple_profiles")
    },
}  # fmt: skip
# examples/models/core/llama/convert_checkpoint.py parse_arguments()
CONVERT_OPTIONS = {
    "--model_dir", "--meta_ckpt_dir", "--tp_size", "--pp_size", "--moe_tp_size", "--cp_size", "--moe_ep_size",
    "--dtype", "--vocab_size", "--n_positions", "--n_layer", "--n_head", "--n_kv_head", "--n_embd",
    "--inter_size", "--multiple_of", "--ffn_dim_multiplier", "--rms_norm_eps", "--use_weight_only",
    "--disable_weight_only_quant_plugin", "--weight_only_precision", "--calib_dataset", "--calib_size",
    "--calib_max_seq_length", "--smoothquant", "--use_qserve", "--per_channel", "--per_token",
    "--int8_kv_cache", "--fp8_kv_cache", "--quant_ckpt_path", "--use_fp8", "--use_nvfp4", "--use_fp8_rowwise",
    "--use_meta_fp8_rowwise_recipe", "--per_group", "--load_by_shard", "--hidden_act", "--rotary_base",
    "--group_size", "--load_model_on_cpu", "--use_parallel_embedding", "--embedding_sharding_dim",
    "--output_dir", "--workers", "--moe_num_experts", "--moe_top_k", "--moe_renorm_mode",
    "--save_config_only", "--remove_duplicated_kv_heads", "--log_level",
}  # fmt: skip
CONVERT_CHOICES = {
    "--dtype": {"auto", "float16", "bfloat16", "float32"},
    "--weight_only_precision": {"int8", "int4", "int8_gptq", "int4_gptq", "int4_awq"},
}
# examples/quantization/quantize.py (ModelOpt) argparse
QUANTIZE_OPTIONS = {
    "--model_dir", "--nemo_ckpt_path", "--decoder_type", "--device", "--device_map", "--calib_dataset",
    "--calib_tp_size", "--calib_pp_size", "--dtype", "--qformat", "--seed", "--tokenizer_max_seq_length",
    "--batch_size", "--calib_size", "--calib_max_seq_length", "--output_dir", "--tp_size", "--pp_size",
    "--cp_size", "--awq_block_size", "--kv_cache_dtype", "--quantize_lm_head", "--num_medusa_heads",
    "--num_medusa_layers", "--max_draft_len", "--medusa_hidden_act", "--medusa_model_dir",
    "--quant_medusa_head", "--autoq_format", "--auto_quantize_bits", "--export_format",
}  # fmt: skip
QUANTIZE_CHOICES = {
    "--dtype": {"auto", "float16", "bfloat16", "float32"},
    "--qformat": {"nvfp4", "fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "full_prec"},
    "--kv_cache_dtype": {"int8", "fp8"},
}
STORE_TRUE = {"--use_weight_only"}


def parse_flags(argv: tuple[str, ...], start: int) -> dict[str, str | None]:
    """argparse-style `--flag value` pairs from argv[start:]; store_true flags map to None."""
    flags: dict[str, str | None] = {}
    i = start
    while i < len(argv):
        flag = argv[i]
        assert flag.startswith("--"), f"positional {flag!r} where a flag was expected"
        assert flag not in flags, f"{flag} given twice"
        if flag in STORE_TRUE:
            flags[flag] = None
            i += 1
        else:
            flags[flag] = argv[i + 1]
            i += 2
    return flags


def cfg_for(preset: str, quantization: str = "none", **kw: object) -> BuildConfig:
    return BuildConfig.from_preset(
        preset, Path("/ckpt/in"), Path("/engines/out"), quantization=quantization,
        trtllm_examples_dir=Path("/trtllm/examples"), **kw,
    )  # fmt: skip


@pytest.mark.parametrize("preset", ["7b", "13b"])
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_commands_use_only_known_flags_and_required_values(preset: str, quantization: str) -> None:
    cfg = cfg_for(preset, quantization)
    convert, build = build_steps(cfg)
    expected_tp = "2" if preset == "13b" else "1"

    # Conversion / quantisation step.
    assert convert.argv[0] == "python3"
    modelopt = quantization in ("fp8", "int4_awq")
    script = "/trtllm/examples/" + (
        "quantization/quantize.py" if modelopt else "models/core/llama/convert_checkpoint.py"
    )
    assert convert.argv[1] == script
    conv = parse_flags(convert.argv, 2)
    known, choices = (QUANTIZE_OPTIONS, QUANTIZE_CHOICES) if modelopt else (CONVERT_OPTIONS, CONVERT_CHOICES)
    assert set(conv) <= known, set(conv) - known
    for flag, allowed in choices.items():
        if flag in conv:
            assert conv[flag] in allowed, (flag, conv[flag])
    assert conv["--model_dir"] == "/ckpt/in"
    assert conv["--output_dir"] == "/engines/out.tllm_checkpoint"
    assert conv["--dtype"] == "float16"
    assert conv["--tp_size"] == expected_tp and conv["--pp_size"] == "1"
    if quantization == "int8_wo":
        assert "--use_weight_only" in conv and conv["--weight_only_precision"] == "int8"
    elif quantization == "int4_wo":
        assert "--use_weight_only" in conv and conv["--weight_only_precision"] == "int4"
    elif quantization == "fp8":
        assert (
            conv["--qformat"] == "fp8" and conv["--kv_cache_dtype"] == "fp8" and conv["--calib_size"] == "512"
        )
    elif quantization == "int4_awq":
        assert conv["--qformat"] == "int4_awq" and conv["--awq_block_size"] == "128"
        assert "--kv_cache_dtype" not in conv
    else:
        assert "--use_weight_only" not in conv
    if not modelopt:
        assert conv["--workers"] == "1"

    # trtllm-build step: in-flight batching features always on.
    assert build.argv[0] == "trtllm-build"
    flags = parse_flags(build.argv, 1)
    assert set(flags) <= TRTLLM_BUILD_OPTIONS, set(flags) - TRTLLM_BUILD_OPTIONS
    for flag, allowed in TRTLLM_BUILD_CHOICES.items():
        if flag in flags:
            assert flags[flag] in allowed, (flag, flags[flag])
    assert flags["--checkpoint_dir"] == conv["--output_dir"]
    assert flags["--output_dir"] == "/engines/out"
    assert flags["--kv_cache_type"] == "paged"
    assert flags["--gpt_attention_plugin"] == "auto"
    assert flags["--remove_input_padding"] == "enable"
    assert flags["--context_fmha"] == "enable"
    assert flags["--use_paged_context_fmha"] == "enable"
    assert flags["--max_batch_size"] == "64"
    assert (flags["--max_input_len"], flags["--max_seq_len"], flags["--max_num_tokens"]) == (
        "3072",
        "4096",
        "8192",
    )
    # GEMM plugin: auto per the LLaMA README; disabled for fp8 per the FP8 tuning guide.
    assert flags["--gemm_plugin"] == ("disable" if quantization == "fp8" else "auto")
    assert ("--use_fp8_context_fmha" in flags) == (quantization == "fp8")


def test_options_flow_into_commands() -> None:
    cfg = cfg_for(
        "7b", tp=2, pp=2, workers=4, max_batch_size=16, max_input_len=1000, max_seq_len=2000,
        max_num_tokens=4096, dtype="bfloat16", work_dir=Path("/scratch/ckpt"),
    )  # fmt: skip
    convert, build = build_steps(cfg)
    conv, flags = parse_flags(convert.argv, 2), parse_flags(build.argv, 1)
    assert (conv["--tp_size"], conv["--pp_size"], conv["--dtype"], conv["--workers"]) == (
        "2",
        "2",
        "bfloat16",
        "4",
    )
    assert conv["--output_dir"] == flags["--checkpoint_dir"] == "/scratch/ckpt"
    assert (flags["--max_batch_size"], flags["--max_input_len"], flags["--max_seq_len"]) == (
        "16",
        "1000",
        "2000",
    )
    assert (flags["--max_num_tokens"], flags["--workers"]) == ("4096", "4")


def test_calibration_options_reach_modelopt() -> None:
    convert = build_steps(cfg_for("7b", "int4_awq", calib_size=64, calib_dataset="/data/calib"))[0]
    conv = parse_flags(convert.argv, 2)
    assert conv["--calib_size"] == "64" and conv["--calib_dataset"] == "/data/calib"


# ---- Validation ------------------------------------------------------------------------------------------

H100 = gpu_from_name("H100")
A100 = gpu_from_name("A100-SXM4-80GB")


def test_fp8_refused_on_a100_with_clear_message() -> None:
    result = validate(cfg_for("7b", "fp8"), PRESETS["7b"].shape, A100)
    assert len(result.problems) == 1
    message = result.problems[0]
    assert "fp8" in message and "8.9" in message and "A100" in message and "8.0" in message
    assert validate(cfg_for("7b", "fp8"), PRESETS["7b"].shape, H100).ok
    assert validate(cfg_for("7b", "fp8"), PRESETS["7b"].shape, gpu_from_name("NVIDIA L4")).ok


def test_fp8_on_unknown_gpu_is_only_a_warning() -> None:
    result = validate(cfg_for("7b", "fp8"), PRESETS["7b"].shape, None)
    assert result.ok and any("8.9" in w for w in result.warnings)


@pytest.mark.parametrize(("tp", "ok"), [(1, True), (2, True), (3, False), (5, False), (8, True)])
def test_tp_must_divide_heads(tp: int, ok: bool) -> None:
    result = validate(cfg_for("7b", tp=tp), PRESETS["7b"].shape, H100)
    assert result.ok == ok
    if not ok:
        assert any(f"--tp {tp} does not divide the model's 32 attention heads" in p for p in result.problems)


def test_pp_must_divide_layers() -> None:
    result = validate(cfg_for("13b", pp=3), PRESETS["13b"].shape, H100)
    assert any("--pp 3 does not divide the model's 40 layers" in p for p in result.problems)


def test_lengths_beyond_context_refused() -> None:
    shape = PRESETS["7b"].shape
    too_long = validate(cfg_for("7b", max_seq_len=8192, max_input_len=4096), shape, H100)
    assert any("exceeds the model's context length 4096" in p for p in too_long.problems)
    inverted = validate(cfg_for("7b", max_seq_len=2048, max_input_len=2048), shape, H100)
    assert any("must be smaller than --max-seq-len" in p for p in inverted.problems)


def test_bfloat16_refused_before_ampere_and_fraction_checked() -> None:
    result = validate(cfg_for("7b", dtype="bfloat16"), PRESETS["7b"].shape, gpu_from_name("Tesla T4"))
    assert any("bfloat16" in p and "8.0" in p for p in result.problems)
    bad_fraction = validate(cfg_for("7b", kv_cache_free_gpu_mem_fraction=1.5), PRESETS["7b"].shape, H100)
    assert any("kv-cache-free-gpu-mem-fraction" in p for p in bad_fraction.problems)


def test_preset_parameter_counts_match_the_checkpoint_shape_table() -> None:
    for preset, (hidden, inter, layers) in {"7b": (4096, 11008, 32), "13b": (5120, 13824, 40)}.items():
        config = {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                  "num_attention_heads": hidden // 128, "vocab_size": 32000}  # fmt: skip
        assert PRESETS[preset].shape.parameter_count == parameter_count(config)
    assert PRESETS["7b"].shape.parameter_count == 6_738_415_616
    assert PRESETS["13b"].shape.parameter_count == 13_015_864_320


def test_nvidia_smi_line_from_a_real_h200_parses() -> None:
    # Verbatim output of `nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader,nounits`
    # on an H200 (checked on a lent GPU machine).
    gpu = parse_nvidia_smi("NVIDIA H200, 9.0, 143771\n")
    assert gpu == GpuInfo("NVIDIA H200", (9, 0), 140.4, 1)
    assert (
        parse_nvidia_smi("NVIDIA A100-SXM4-80GB, 8.0, 81920\nNVIDIA A100-SXM4-80GB, 8.0, 81920\n").count == 2
    )
    assert parse_nvidia_smi("") is None
    assert gpu_from_name("A100-SXM4-40GB").memory_gib == 40.0
    assert gpu_from_name("A100").memory_gib is None  # 40 and 80 GB variants: unknown from the name alone


# ---- CLI -------------------------------------------------------------------------------------------------


def shaped_checkpoint(base: Path, target: Path, preset: str) -> Path:
    """A checkpoint folder that passes the checkpoint check with LLaMA-2 7B/13B shapes: the tiny
    checkpoint's tokenizer and ids, a 7B/13B config.json and a sparse safetensors file (zero weights)."""
    target.mkdir(parents=True)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):  # fmt: skip
        shutil.copy2(base / name, target / name)
    config = json.loads((base / "config.json").read_text())
    shape = PRESETS[preset].shape
    config.update(hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                  num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                  intermediate_size=11008 if preset == "7b" else 13824, vocab_size=32000,
                  max_position_embeddings=4096, torch_dtype="float16")  # fmt: skip
    (target / "config.json").write_text(json.dumps(config))
    header: dict[str, object] = {}
    offset = 0
    for name, dims in llama_tensor_shapes(config).items():
        size = 2
        for d in dims:
            size *= d
        header[name] = {"dtype": "F16", "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with (target / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: the full size on paper, no bytes on disk
    return target


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shaped")
    return {p: shaped_checkpoint(tiny_checkpoint, root / p, p) for p in ("7b", "13b")}


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["engine", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("preset", ["7b", "13b"])
def test_dry_run_prints_plan_and_commands(checkpoints: dict[str, Path], tmp_path: Path, preset: str) -> None:
    out = tmp_path / "engine"
    code, text = run_cli("--checkpoint", str(checkpoints[preset]), "--output", str(out), "--preset", preset,
                         "--gpu-name", "H100", "--dry-run")  # fmt: skip
    assert code == 0, text
    per_token = {"7b": "524288 B", "13b": "819200 B"}[preset]
    assert "Capacity plan" in text and per_token in text
    assert f"--tp_size {'2' if preset == '13b' else '1'}" in text
    assert "trtllm-build --checkpoint_dir" in text and "--use_paged_context_fmha enable" in text
    assert "dry run: nothing executed" in text
    assert not out.exists()


def test_dry_run_refuses_fp8_on_a100_without_running_anything(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    code, text = run_cli("--checkpoint", str(checkpoints["7b"]), "--output", str(tmp_path / "e"),
                         "--quantization", "fp8", "--gpu-name", "A100-SXM4-80GB", "--dry-run")  # fmt: skip
    assert code == 1
    assert "Refusing to build" in text and "fp8 needs compute capability >= 8.9" in text


def test_cli_refuses_a_broken_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    code, text = run_cli("--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "e"), "--dry-run")
    assert code == 1
    # The checkpoint check's own findings are relayed, prefixed, and refuse the build.
    relayed = [line for line in text.splitlines() if line.strip().startswith("- checkpoint: ")]
    assert any("tokenizer" in line for line in relayed)


def test_container_hint_mounts_paths_and_repeats_options(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    image = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    code, text = run_cli("--checkpoint", str(checkpoints["13b"]), "--output", str(tmp_path / "e"), "--preset",
                         "13b", "--quantization", "int4_awq", "--gpu-name", "L40S", "--dry-run",
                         "--container-image", image)  # fmt: skip
    assert code == 0, text
    docker = next(line for line in text.splitlines() if line.strip().startswith("docker run"))
    assert image in docker and f"-v {checkpoints['13b']}:{checkpoints['13b']}" in docker
    assert "mentallama-build engine" in docker and "--quantization int4_awq" in docker and "--tp 2" in docker
    assert any(line.strip().startswith("apptainer exec --nv") for line in text.splitlines())


def test_real_run_stops_at_preflight_without_tensorrt_llm(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """No TensorRT-LLM on this machine (a fact here, not a mock): the build stops before any step."""
    code, text = run_cli("--checkpoint", str(checkpoints["7b"]), "--output", str(tmp_path / "e"),
                         "--gpu-name", "H100", "--trtllm-examples", str(tmp_path / "missing"))  # fmt: skip
    assert code == 2
    assert "convert_checkpoint.py not found" in text
    assert not (tmp_path / "e").exists()


def test_existing_engine_needs_force(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "e"
    out.mkdir()
    (out / "rank0.engine").write_bytes(b"x")
    args = ["--checkpoint", str(checkpoints["7b"]), "--output", str(out), "--gpu-name", "H100", "--dry-run"]
    code, text = run_cli(*args)
    assert code == 1 and "pass --force" in text
    assert run_cli(*args, "--force")[0] == 0


# ---- Step runner (real subprocesses) ---------------------------------------------------------------------


def py_step(name: str, code: str) -> Step:
    return Step(name, (sys.executable, "-c", code))


def test_run_steps_streams_output_and_stops_at_first_failure(tmp_path: Path) -> None:
    marker = tmp_path / "third-ran"
    lines: list[str] = []
    steps = [
        py_step("one", "import sys; print('alpha', flush=True); print('beta', file=sys.stderr)"),
        py_step("two", "print('gamma'); raise SystemExit(3)"),
        py_step("three", f"open({str(marker)!r}, 'w').close()"),
    ]
    with pytest.raises(StepFailed) as info:
        run_steps(steps, lines.append, log_path=tmp_path / "build.log", timeout_s=60)
    assert info.value.returncode == 3 and info.value.step.name == "two"
    assert "exit code 3" in str(info.value)
    assert not marker.exists()
    assert lines.index("alpha") < lines.index("gamma") and "beta" in lines
    log = (tmp_path / "build.log").read_text()
    assert "alpha" in log and "gamma" in log


def test_run_steps_times_out(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StepFailed, match="timed out"):
        run_steps([py_step("slow", "import time; time.sleep(60)")], lambda _: None, timeout_s=1)
    assert time.monotonic() - started < 30


# ---- Build manifest --------------------------------------------------------------------------------------


def fake_engine(tmp_path: Path, ranks: int = 1) -> Path:
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"build_config": {"max_batch_size": 64}}))
    for rank in range(ranks):
        (engine / f"rank{rank}.engine").write_bytes(b"engine bytes")
    return engine


@pytest.fixture
def built(tiny_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    engine = fake_engine(tmp_path)
    cfg = BuildConfig.from_preset("7b", checkpoint, engine)
    write_manifest(engine, cfg, gpu=H100, shape=PRESETS["7b"].shape, versions={"tensorrt_llm": "1.2.1"})
    return checkpoint, engine


def test_manifest_round_trip(built: tuple[Path, Path]) -> None:
    checkpoint, engine = built
    manifest = read_manifest(engine)
    assert manifest["options"]["preset"] == "7b" and manifest["options"]["world_size"] == 1
    assert manifest["tools"] == {"tensorrt_llm": "1.2.1"}
    assert manifest["gpu"]["name"] == "H100" and manifest["gpu"]["compute_capability"] == "9.0"
    assert manifest["checkpoint"]["sha256"] == checkpoint_digest(checkpoint)["sha256"]
    assert {"tokenizer.model", "tokenizer.json", "config.json", "model.safetensors"} <= set(
        manifest["checkpoint"]["files"]
    )
    assert verify_manifest(engine, checkpoint) == []


def test_changed_tokenizer_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, engine = built
    other = tmp_path / "other-tokenizer"
    shutil.copytree(checkpoint, other)
    data = json.loads((other / "tokenizer.json").read_text())
    data["added_tokens"] = [*data.get("added_tokens", []), {"id": 3999, "content": "<x>"}]
    (other / "tokenizer.json").write_text(json.dumps(data))
    problems = verify_manifest(engine, other)
    assert problems == [
        f"tokenizer file tokenizer.json in {other} differs from the one the engine was built with"
    ]


def test_missing_extra_and_foreign_files_are_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, engine = built
    tok = tmp_path / "tok"
    shutil.copytree(checkpoint, tok)
    (tok / "tokenizer.model").unlink()
    (tok / "added_tokens.json").write_text("{}")
    config = json.loads((tok / "config.json").read_text())
    (tok / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 40}))
    problems = "\n".join(verify_manifest(engine, tok))
    assert "tokenizer.model of the engine's checkpoint is missing" in problems
    assert "has added_tokens.json" in problems
    assert "config.json differs from the checkpoint" in problems


def test_engine_side_problems(built: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, engine = built
    (engine / "config.json").write_text("{}")
    (engine / "rank0.engine").unlink()
    problems = "\n".join(verify_manifest(engine, checkpoint))
    assert "rank0.engine is missing" in problems and "changed after the manifest was written" in problems
    assert verify_manifest(tmp_path / "nowhere", checkpoint) == [
        f"no {MANIFEST_NAME} in {tmp_path / 'nowhere'}: build the engine with `mentallama-build engine`"
    ]


def test_one_manifest_reader_for_the_tensorrt_llm_and_the_openvino_engines(tmp_path: Path) -> None:
    """`read_manifest` reads both builds' manifests; each side refuses the other's and names its own command."""
    from mentallama_build.openvino_build import verify_engine

    save_manifest(tmp_path, {"manifest_version": 1, "engine": "openvino", "engine_files": {}})
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed
    openvino = {"engine": "openvino", "build": "mentallama-build openvino"}
    assert read_manifest(tmp_path, version=1, **openvino)["engine_files"] == {}
    with pytest.raises(ValueError, match=r"is not an openvino engine manifest of version 2 .*mentallama-build openv"):
        read_manifest(tmp_path, version=2, **openvino)
    save_manifest(tmp_path, {"manifest_version": 1, "engine_files": {}})  # a TensorRT-LLM build's: no `engine`
    assert read_manifest(tmp_path)["manifest_version"] == 1
    assert verify_engine(tmp_path) == [
        f"{tmp_path / MANIFEST_NAME} is not an openvino engine manifest of version 1 (engine None, manifest_version "
        "1); rebuild it with `mentallama-build openvino`"
    ]
    (tmp_path / MANIFEST_NAME).write_text("[1]")
    with pytest.raises(ValueError, match="is not a manifest of version 1"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    assert verify_engine(tmp_path) == [
        f"no {MANIFEST_NAME} in {tmp_path}: build the engine with `mentallama-build openvino`"
    ]


def test_digest_sees_weight_bytes_not_only_shapes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Two fine-tunes share every shape; the sampled tensor bytes tell them apart."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    before = checkpoint_digest(checkpoint)
    weights = checkpoint / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    raw[8 + header_len + 10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    after = checkpoint_digest(checkpoint)
    assert after["sha256"] != before["sha256"]
    assert after["files"]["config.json"] == before["files"]["config.json"]
