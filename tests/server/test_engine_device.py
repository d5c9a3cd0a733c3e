"""The engine step's `device` option: settings -> rendered config -> `CpuEngine`, dtype by device, and the
sampling processor's batched write-back. The tests named `..._on_cuda` need a GPU and are skipped without one."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from transformers.generation.continuous_batching.requests import FutureRequestState, RequestState
from tritonclient.grpc import model_config_pb2

from mentallama_server.cpu_engine import CpuEngine, GenerationRequest, _auto_dtype, _check_device
from mentallama_server.engine_cb import SamplingProcessor
from mentallama_server.engine_sampling import RequestSampler
from mentallama_server.serve import render_cpu
from mentallama_server.settings import CpuSettings
from mentallama_server.triton_params import get_parameter

SERVE = str(Path(sys.executable).parent / "mentallama-serve")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def engine_parameters(repository: Path) -> dict[str, object]:
    """The rendered `tensorrt_llm` config as the Python backend hands it to `model.py` (JSON parameters)."""
    text = (repository / "tensorrt_llm" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    parameters = {key: {"string_value": value.string_value} for key, value in config.parameters.items()}
    return {"name": config.name, "parameters": parameters}


@pytest.mark.parametrize(("settings", "expected"), [(CpuSettings(), "cpu"), (CpuSettings(device="cuda:0"), "cuda:0")])
def test_device_setting_reaches_the_engine_model_config(tmp_path, tiny_checkpoint, settings, expected):
    repository = render_cpu(tiny_checkpoint, settings, tmp_path / "repo")
    config = engine_parameters(repository)
    assert get_parameter(config, "device", str, "unset") == expected
    assert "KIND_CPU" in (repository / "tensorrt_llm" / "config.pbtxt").read_text()  # the adapter stays on the host


def test_serve_device_flag_is_rendered(tmp_path, tiny_checkpoint):
    out = subprocess.run(
        [SERVE, f"--model={tiny_checkpoint}", "--device=cuda:1", f"--render={tmp_path / 'repo'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert get_parameter(engine_parameters(tmp_path / "repo"), "device", str) == "cuda:1"


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta"])
def test_unknown_device_is_refused(device):
    with pytest.raises(ValueError, match="device must be"):
        _check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_before_loading_when_torch_sees_no_gpu(tiny_checkpoint):
    with pytest.raises(ValueError, match="no CUDA device"):
        CpuEngine(tiny_checkpoint, device="cuda")


def test_auto_dtype_keeps_float16_on_gpu_and_uses_bfloat16_on_cpu(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    assert _auto_dtype(tmp_path, torch.device("cpu")) is torch.bfloat16
    assert _auto_dtype(tmp_path, torch.device("cuda", 0)) is torch.float16
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert _auto_dtype(tmp_path, torch.device("cuda", 0)) is torch.bfloat16


def _future(request_id: str, prompt: list[int]) -> FutureRequestState:
    return FutureRequestState(RequestState(request_id, prompt), True, {}, 1)


def test_processor_forces_chosen_tokens_in_one_batched_write_and_leaves_plain_rows(tiny_checkpoint):
    vocab = 16
    processor = SamplingProcessor()
    # Row 0: min_new_tokens bans the end id (2), which is the raw argmax. Row 1: plain greedy, untouched.
    banned = RequestSampler(GenerationRequest("a", [5, 6], max_new_tokens=4, min_new_tokens=2), [2])
    plain = RequestSampler(GenerationRequest("b", [5, 6], max_new_tokens=4), [2])
    processor.register("a", banned)
    processor.register("b", plain)
    processor.prepare_tensor_args([_future("a", [5, 6]), _future("b", [5, 6])])
    scores = torch.zeros(2, vocab)
    scores[:, 2], scores[:, 7], scores[1, 9] = 5.0, 3.0, 1.0
    before = scores[1].clone()
    out = processor(scores, torch.zeros(2, dtype=torch.int32))
    assert int(out[0].argmax()) == 7 and torch.isinf(out[0]).sum() == vocab - 1
    assert torch.equal(out[1], before)


@needs_cuda
def test_engine_generates_with_min_tokens_and_sampling_on_cuda(tiny_checkpoint):
    engine = CpuEngine(tiny_checkpoint, max_batch_size=4, num_blocks=64, block_size=16, max_batch_tokens=128,
                       device="cuda")
    assert next(engine._model.parameters()).device.type == "cuda"
    events: dict[str, list] = {"greedy": [], "sampled": []}
    done = threading.Semaphore(0)

    def collect(name: str):
        def on_event(event) -> None:
            events[name].append(event)
            if event.finished:
                done.release()
        return on_event

    with engine:
        engine.submit(GenerationRequest("greedy", [1, 5, 6, 7], max_new_tokens=12, min_new_tokens=12),
                      collect("greedy"))
        engine.submit(GenerationRequest("sampled", [1, 8, 9], max_new_tokens=12, min_new_tokens=12, top_k=5,
                                        temperature=0.8, seed=3), collect("sampled"))
        assert done.acquire(timeout=120) and done.acquire(timeout=120)
    for name, got in events.items():
        assert got[-1].finish_reason == "length", (name, got[-1])
        tokens = [t for event in got for t in event.new_token_ids]
        assert len(tokens) == 12 and all(0 <= t < engine.vocab_size for t in tokens)
