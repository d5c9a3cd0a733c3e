"""Request handling of the `mentallama` front model, without Triton: ensemble inputs -> engine inputs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mentallama_interface import ENGINE_INPUT_NAMES, FRONT_INPUTS
from mentallama_server.models.batching import refuse_unserved, split_batch
from mentallama_server.models.preprocess import Preprocessor, RequestError, scalar, to_word_list
from mentallama_server.models.sampling import Inputs, Sampling, check_sampling_values, require_one_sequence

INPUT_NAMES = tuple(spec.name for spec in FRONT_INPUTS)
# The front model always streams from the engine (to watch for cancellation between chunks) and
# adds the prompt text itself, so these two ensemble inputs are not passed through.
_NOT_PASSED = {"stream", "exclude_input_in_output"}


def engine_declares_output(model_repository: str | Path, name: str, engine: str = "tensorrt_llm") -> bool:
    """Whether the engine model's config.pbtxt, beside the front model's folder `model_repository` (the
    path Triton passes to `initialize`) or inside it, declares an output `name`."""
    folder = Path(model_repository)
    for config in (folder.parent / engine / "config.pbtxt", folder / engine / "config.pbtxt"):
        if config.is_file():
            text = config.read_text(encoding="utf-8")
            block = re.search(r"^\s*output\s*\[", text, re.MULTILINE)
            return block is not None and re.search(rf'name:\s*"{re.escape(name)}"', text[block.start() :]) is not None
    return False


@dataclass
class FrontRequest:
    input_ids: list[int]
    max_tokens: int
    end_id: int
    pad_id: int
    stop_words: list[list[int]]
    bad_words: list[list[int]]
    stream: bool
    exclude_input_in_output: bool
    return_log_probs: bool
    return_num_input_tokens: bool
    return_num_output_tokens: bool
    passthrough: dict[str, np.ndarray] = field(default_factory=dict)
    batch_index: int = 0
    """Row of this prompt in a request of N prompts; sent back as `batch_index`."""


def _flag(inputs: Mapping[str, np.ndarray | None], name: str) -> bool:
    value = scalar(inputs.get(name), name)
    return bool(value) if value is not None else False


def is_stop_request(inputs: Mapping[str, np.ndarray | None]) -> bool:
    """Whether the request asks to stop the running request with its id (input `stop` true)."""
    return _flag(inputs, "stop")


_FRONT_LIMITS = {
    "beam_width": "the `mentallama` model returns one sequence per prompt; beam search is served by the "
    "`ensemble` on the GPU (trtllm) profile",
    "num_return_sequences": "the `mentallama` model returns one sequence per prompt; the `ensemble` on the GPU "
    "profile serves more, or send the prompt several times with different seeds",
    "return_perf_metrics": "the `mentallama` model does not relay the engine's per-request metrics; the "
    "`ensemble` on the GPU profile serves them",
}


def check_front_sampling(inputs: Inputs) -> Sampling:
    """What the front model relays, on every profile: one sequence per prompt (the first beam's tokens alone
    are read), no per-request perf metrics; values as every engine allows them."""
    require_one_sequence(inputs, _FRONT_LIMITS)
    return check_sampling_values(inputs)


def parse_front_batch(inputs: Mapping[str, np.ndarray | None], preprocessor: Preprocessor) -> list[FrontRequest]:
    """A request of N prompts (`[N, 1]` tensors, `[1, 1]` for one): one FrontRequest per prompt, with its
    `batch_index`, as TensorRT-LLM serves them; any bad prompt refuses the request (`RequestError`)."""
    refuse_unserved(inputs)
    fronts = [parse_front_request(item, preprocessor) for item in split_batch(inputs)]
    for i, front in enumerate(fronts):
        front.batch_index = i
    return fronts


def parse_front_request(inputs: Mapping[str, np.ndarray | None], preprocessor: Preprocessor) -> FrontRequest:
    """Validate and tokenise one prompt; raises `RequestError` naming the bad field."""
    refuse_unserved(inputs)
    for name, array in inputs.items():
        if array is not None and np.asarray(array).ndim >= 1 and np.asarray(array).shape[0] != 1:
            raise RequestError(
                f"{name}: one text per request is supported, got a batch of {np.asarray(array).shape[0]}"
            )

    def words(name: str):
        array = inputs.get(name)
        return None if array is None else np.asarray(array).reshape(-1).tolist()

    prepared = preprocessor.prepare(
        scalar(inputs.get("text_input"), "text_input"),
        scalar(inputs.get("max_tokens"), "max_tokens"),
        stop_words=words("stop_words"),
        bad_words=words("bad_words"),
        end_id=scalar(inputs.get("end_id"), "end_id"),
        pad_id=scalar(inputs.get("pad_id"), "pad_id"),
    )
    passthrough = {
        ENGINE_INPUT_NAMES[name]: np.asarray(inputs[name]).reshape(1, 1)
        for name in ENGINE_INPUT_NAMES
        if name not in _NOT_PASSED and inputs.get(name) is not None
    }
    sampling = check_front_sampling(passthrough)  # refuse bad sampling values here, with INVALID_ARGUMENT
    if sampling.min_tokens > prepared.max_tokens:
        raise RequestError(f"min_tokens ({sampling.min_tokens}) is above max_tokens ({prepared.max_tokens})")
    return FrontRequest(
        input_ids=prepared.input_ids,
        max_tokens=prepared.max_tokens,
        end_id=prepared.end_id,
        pad_id=prepared.pad_id,
        stop_words=prepared.stop_words,
        bad_words=prepared.bad_words,
        stream=_flag(inputs, "stream"),
        exclude_input_in_output=_flag(inputs, "exclude_input_in_output"),
        return_log_probs=_flag(inputs, "return_log_probs"),
        return_num_input_tokens=_flag(inputs, "return_num_input_tokens"),
        return_num_output_tokens=_flag(inputs, "return_num_output_tokens"),
        passthrough=passthrough,
    )


def engine_inputs(front: FrontRequest, streaming: bool = True) -> dict[str, np.ndarray]:
    """The `tensorrt_llm` request for a front request (output without the prompt). The front model streams
    from the engine only for clients that stream: with one engine response, an engine failure is that first
    response, the only kind a BLS caller of Triton 2.51 receives (model.py)."""
    tensors = {
        "input_ids": np.array([front.input_ids], dtype=np.int32),
        "input_lengths": np.array([[len(front.input_ids)]], dtype=np.int32),
        "request_output_len": np.array([[front.max_tokens]], dtype=np.int32),
        "end_id": np.array([[front.end_id]], dtype=np.int32),
        "pad_id": np.array([[front.pad_id]], dtype=np.int32),
        "streaming": np.array([[streaming]]),
        "exclude_input_in_output": np.array([[True]]),
        **front.passthrough,
    }
    if front.stop_words:
        tensors["stop_words_list"] = to_word_list(front.stop_words)[None]
    if front.bad_words:
        tensors["bad_words_list"] = to_word_list(front.bad_words)[None]
    return tensors
