"""One KV-cache plan for the launcher and the build step (issue 22): `auto` resolves to the precision the engine
really uses (f32 with f32 inference, else the engine's own runtime option or the CPU plugin's default), the
rendered config names it, and `mentallama-build openvino --dry-run` prints the same plan as `mentallama-serve`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mentallama_server.launch.cpu_profile import CpuSettings

U8 = lambda: "u8"  # noqa: E731 - the plugin's default on x86-64, without asking the plugin


def test_auto_resolves_as_the_engine_runs() -> None:
    bench = CpuSettings().resolved("bfloat16", plugin_default=U8)
    assert (bench.inference_precision, bench.kv_cache_precision, bench.weight_format) == ("bf16", "u8", "int8")
    tiny = CpuSettings().resolved("float32", plugin_default=U8)
    assert (tiny.inference_precision, tiny.kv_cache_precision, tiny.weight_format) == ("f32", "f32", "fp32")
    # An fp16-weight engine asks for f16 itself, which the plugin stores as bf16 with bf16 inference.
    assert CpuSettings(weight_format="fp16").resolved("bfloat16", plugin_default=U8).kv_cache_precision == "bf16"
    known = CpuSettings().resolved("bfloat16", None, engine_known=True, plugin_default=U8)  # an int8 engine
    assert known.kv_cache_precision == "u8"
    assert CpuSettings(kv_cache_precision="f16").resolved("float32", plugin_default=U8).kv_cache_precision == "f16"
    with pytest.raises(ValueError, match="f32 inference"):
        CpuSettings(kv_cache_precision="f32").resolved("bfloat16", plugin_default=U8)
    assert "auto" not in CpuSettings().resolved("bfloat16", plugin_default=U8).template_values().values()


def _kv_line(text: str) -> str:
    return next(line for line in text.splitlines() if "bytes per token" in line).split("KV cache: ", 1)[1]


@pytest.mark.slow
def test_launcher_build_step_and_engine_agree(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """tiny with int8 weights and bf16 inference (as a bfloat16 checkpoint is served): the rendered config, the
    launcher's line, the build step's dry run and the compiled engine all say the same precision."""
    import openvino as ov
    from openvino._offline_transformations import paged_attention_transformation

    from mentallama_server.launch.serve_cpu import render_cpu, resolve_engine

    said: list[str] = []
    settings = CpuSettings(inference_precision="bf16", weight_format="int8")
    engine, resolved = resolve_engine(tiny_checkpoint, settings, say=said.append)
    launcher = _kv_line("\n".join(said))
    rendered = render_cpu(tiny_checkpoint, settings, tmp_path / "repo")
    config = (rendered / "tensorrt_llm" / "config.pbtxt").read_text()
    in_config = re.search(r'key: "kv_cache_precision" value: \{ string_value: "(\w*)" \}', config)
    assert in_config is not None and in_config.group(1) == resolved.kv_cache_precision != ""

    exe = Path(sys.executable).with_name("mentallama-build")
    dry = subprocess.run([str(exe), "openvino", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "e"),
                          "--weight-format", "int8", "--inference-precision", "bf16", "--dry-run"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert _kv_line(dry.stderr) == launcher and f"({resolved.kv_cache_precision};" in launcher

    core = ov.Core()
    model = core.read_model(engine / "openvino_model.xml")
    paged_attention_transformation(model, False, False)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})  # nothing asked: its default
    assert compiled.get_property("KV_CACHE_PRECISION").to_string() == resolved.kv_cache_precision
