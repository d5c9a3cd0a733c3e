"""The ensemble interface, declared once.

Both entry models (`ensemble` and the `mentallama` BLS front model) and both profiles (cpu, trtllm)
render their `input`/`output` blocks from these tuples, so a client written for TensorRT-LLM's
ensemble works unchanged against either. Names, data types and dims follow TensorRT-LLM 1.2.1's
`inflight_batcher_llm/ensemble/config.pbtxt`; `max_batch_size` > 0, so each request sends `[1, 1]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a Triton model config."""

    name: str
    data_type: str  # Triton config type, e.g. "TYPE_INT32"
    dims: tuple[int, ...]
    optional: bool = False


def _opt(name: str, data_type: str, dims: tuple[int, ...] = (1,)) -> TensorSpec:
    return TensorSpec(name, data_type, dims, optional=True)


ENSEMBLE_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", "TYPE_STRING", (1,)),
    TensorSpec("max_tokens", "TYPE_INT32", (1,)),
    _opt("stream", "TYPE_BOOL"),
    _opt("end_id", "TYPE_INT32"),
    _opt("pad_id", "TYPE_INT32"),
    _opt("top_k", "TYPE_INT32"),
    _opt("top_p", "TYPE_FP32"),
    _opt("temperature", "TYPE_FP32"),
    _opt("repetition_penalty", "TYPE_FP32"),
    _opt("presence_penalty", "TYPE_FP32"),
    _opt("frequency_penalty", "TYPE_FP32"),
    _opt("min_tokens", "TYPE_INT32"),
    _opt("seed", "TYPE_UINT64"),
    _opt("stop_words", "TYPE_STRING", (-1,)),
    _opt("bad_words", "TYPE_STRING", (-1,)),
    _opt("exclude_input_in_output", "TYPE_BOOL"),
    _opt("beam_width", "TYPE_INT32"),
    _opt("return_log_probs", "TYPE_BOOL"),
    _opt("return_num_input_tokens", "TYPE_BOOL"),
    _opt("return_num_output_tokens", "TYPE_BOOL"),
)

ENSEMBLE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", "TYPE_STRING", (-1,)),
    TensorSpec("cum_log_probs", "TYPE_FP32", (-1,)),
    TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1)),
    TensorSpec("batch_index", "TYPE_INT32", (1,)),
    TensorSpec("num_input_tokens", "TYPE_INT32", (1,)),
    TensorSpec("num_output_tokens", "TYPE_INT32", (1,)),
)

# Ensemble inputs that the engine step takes directly, under the `tensorrt_llm` model's names.
ENGINE_INPUT_NAMES: dict[str, str] = {
    "stream": "streaming",
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "temperature": "temperature",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_tokens": "min_tokens",
    "seed": "seed",
    "exclude_input_in_output": "exclude_input_in_output",
    "beam_width": "beam_width",
    "return_log_probs": "return_log_probs",
    "return_num_input_tokens": "return_num_input_tokens",
    "return_num_output_tokens": "return_num_output_tokens",
}


def _dims(dims: Iterable[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def pbtxt_tensors(tensors: Iterable[TensorSpec]) -> str:
    """Render tensors as the body of a config.pbtxt `input [...]` or `output [...]` block."""
    entries = []
    for t in tensors:
        lines = [f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: {_dims(t.dims)}"]
        if t.optional:
            lines.append("    optional: true")
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return ",\n".join(entries)
