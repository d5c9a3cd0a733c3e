"""UTF-8-safe text for an engine that ends chunks inside characters, as the GPU engine does (issue 12).

The `tensorrt_llm` model here is a test double of the TensorRT-LLM C++ backend's streaming chunks
(tests/server/cxx_chunking_double/model.py): it streams a fixed answer full of byte-fallback characters
(emojis, CJK, an accented letter) in chunks of 1-3 tokens, so chunks end inside byte runs. The `mentallama`
front model decodes each call incrementally: no chunk carries a partial character or a U+FFFD, and streamed
text equals non-streamed text. The `ensemble`'s stateless postprocessing decodes each chunk alone: its
non-streamed text is exact, its streamed chunks are only exact when the engine ends them on characters (our
CPU engine does; the C++ one does not: README, "Text contract").
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mentallama_server.launch.cpu_profile import CpuSettings
from mentallama_server.launch.launcher import TritonProcess, bundled_server
from mentallama_server.launch.serve_cpu import render_cpu
from mentallama_server.models.detokenize import byte_token_map
from mentallama_server.models.text_tokenizer import load_tokenizer
from tests.server.triton_io import StreamCall, make_inputs
from tests.support.servers import READY_TIMEOUT_S, loopback_options

pytestmark = pytest.mark.server
DOUBLE = Path(__file__).parent / "cxx_chunking_double" / "model.py"
ANSWER = " Tired 😞 café 漢字 ok 🙂 and 🇺🇦"
PROMPT = "How are you?"


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path):
    return load_tokenizer(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def answer_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(ANSWER, add_special_tokens=False)
    byte_tokens = sum(1 for i in ids if i in byte_token_map(tokenizer))
    assert byte_tokens > 10, "the answer must be spelt with byte-fallback tokens"
    return ids


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, answer_ids: list[int], tmp_path_factory) -> Iterator[TritonProcess]:
    run_dir = tmp_path_factory.mktemp("cxx-chunking")
    repository = render_cpu(tiny_checkpoint, CpuSettings(cache_num_blocks=64), run_dir / "model_repository")
    engine = repository / "tensorrt_llm" / "1"
    shutil.copy2(DOUBLE, engine / "model.py")
    (engine / "tokens.json").write_text(json.dumps(answer_ids))
    opts = loopback_options()
    argv, env = bundled_server(repository, run_dir, opts)
    process = TritonProcess(argv, env, run_dir, opts)
    try:
        process.wait_ready(READY_TIMEOUT_S)
        yield process
    finally:
        process.stop()


def expected_continuation(tokenizer, answer_ids: list[int]) -> str:
    prompt_ids = tokenizer.encode(PROMPT)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + answer_ids, skip_special_tokens=True)
    assert full.startswith(head)
    return full[len(head) :]


def call(server: TritonProcess, model: str, stream: bool, **extra):
    result = StreamCall(server.opts.grpc_url, model, make_inputs(PROMPT, 64, stream=stream, **extra)).result()
    assert result.error is None, result.error
    return result


def test_front_model_streams_whole_characters(server, tokenizer, answer_ids) -> None:
    expected = expected_continuation(tokenizer, answer_ids)
    assert "😞" in expected and "漢字" in expected and "\ufffd" not in expected
    streamed = call(server, "mentallama", stream=True)
    assert len(streamed.chunks) > 3
    assert all("\ufffd" not in chunk for chunk in streamed.chunks), streamed.chunks
    assert streamed.text == expected
    whole = call(server, "mentallama", stream=False, exclude_input_in_output=True)
    assert whole.text == streamed.text
    with_prompt = call(server, "mentallama", stream=False)
    assert with_prompt.text == PROMPT + expected


def test_ensemble_non_streamed_text_is_exact(server, tokenizer, answer_ids) -> None:
    expected = expected_continuation(tokenizer, answer_ids)
    assert call(server, "ensemble", stream=False).text == PROMPT + expected
    assert call(server, "ensemble", stream=False, exclude_input_in_output=True).text == expected


def test_ensemble_streamed_chunks_split_by_the_engine_are_decoded_alone(server, tokenizer, answer_ids) -> None:
    """What the README states for the `ensemble` on the GPU engine: a character the engine splits over two
    chunks comes out as U+FFFD (one per byte). Use `mentallama` (the SDK's default) for exact text."""
    streamed = call(server, "ensemble", stream=True)
    assert "\ufffd" in streamed.text and streamed.text != expected_continuation(tokenizer, answer_ids)
