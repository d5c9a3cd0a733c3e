"""The ensemble interface, declared once: the wire contract between the SDK and the server.

Standard library only, and outside the `mentallama` package so that Triton's model processes can import it
without the SDK's gRPC stack. The server renders its model configs from it and its front model reads its
inputs by it; the SDK encodes requests by it (`mentallama._transport.INPUT_TYPES`) and so do the benchmark
backends.

Both entry models (`ensemble` and the `mentallama` BLS front model) and both profiles (cpu, trtllm)
render their `input`/`output` blocks from these tuples, so a client written for TensorRT-LLM's
ensemble works unchanged against either. Names, data types and dims follow TensorRT-LLM 1.2.1's
`inflight_batcher_llm/ensemble/config.pbtxt`; `max_batch_size` > 0, so each request sends `[N, 1]`
tensors: `[1, 1]` for one prompt, `[N, 1]` for a batch of N prompts (upstream's `--batch-inputs`), answered
by responses of one prompt each, tagged with `batch_index`. `text_output` is flat over (prompt, sequence),
shape `[1]` per response, as upstream's postprocessing returns it; the engine's outputs (`cum_log_probs`
`[1, 1]`, `output_log_probs` `[1, 1, n]`, `batch_index` `[1, 1]`, ...) keep the engine's shapes.

Every optional input of upstream's ensemble and BLS model is declared, so none gets Triton's "unexpected
inference input": the engine step serves or refuses those in ENGINE_INPUT_NAMES (e.g. the CPU engine
refuses `num_return_sequences` > 1 and `return_perf_metrics`), and `preprocessing` (or the front model)
refuses those in UNSERVED_INPUTS, with the reason given there.
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


# The inputs that our engines serve (or refuse by value, e.g. beam_width > 1 on the CPU).
SERVED_INPUTS: tuple[TensorSpec, ...] = (
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
    _opt("num_return_sequences", "TYPE_INT32"),
    _opt("length_penalty", "TYPE_FP32"),
    _opt("return_perf_metrics", "TYPE_BOOL"),
)

_NO_LOGITS = "need an engine built with gather_context_logits / gather_generation_logits, which ours are not"
_TEXT_ONLY = "MentaLLaMA is a LLaMA-2 text model served without"
# Inputs of upstream's ensemble / BLS model that no engine of ours serves: name -> (tensor, why refused).
UNSERVED_INPUTS: dict[str, tuple[TensorSpec, str]] = {
    "return_context_logits": (_opt("return_context_logits", "TYPE_BOOL"), f"context logits {_NO_LOGITS}"),
    "return_generation_logits": (
        _opt("return_generation_logits", "TYPE_BOOL"),
        f"generation logits {_NO_LOGITS}",
    ),
    "embedding_bias_words": (_opt("embedding_bias_words", "TYPE_STRING", (-1,)), "embedding bias is not served"),
    "embedding_bias_weights": (_opt("embedding_bias_weights", "TYPE_FP32", (-1,)), "embedding bias is not served"),
    "num_draft_tokens": (_opt("num_draft_tokens", "TYPE_INT32"), f"{_TEXT_ONLY} a draft model"),
    "use_draft_logits": (_opt("use_draft_logits", "TYPE_BOOL"), f"{_TEXT_ONLY} a draft model"),
    "lora_task_id": (_opt("lora_task_id", "TYPE_UINT64"), f"{_TEXT_ONLY} LoRA adapters"),
    "lora_weights": (_opt("lora_weights", "TYPE_FP16", (-1, -1)), f"{_TEXT_ONLY} LoRA adapters"),
    "lora_config": (_opt("lora_config", "TYPE_INT32", (-1, 3)), f"{_TEXT_ONLY} LoRA adapters"),
    "prompt_embedding_table": (_opt("prompt_embedding_table", "TYPE_FP16", (-1, -1)), f"{_TEXT_ONLY} p-tuning"),
    "prompt_vocab_size": (_opt("prompt_vocab_size", "TYPE_INT32"), f"{_TEXT_ONLY} p-tuning"),
    "prompt_table_extra_id": (_opt("prompt_table_extra_id", "TYPE_UINT64"), f"{_TEXT_ONLY} p-tuning"),
    "guided_decoding_guide_type": (
        _opt("guided_decoding_guide_type", "TYPE_STRING"),
        "guided decoding is not served (no guided-decoding backend configured)",
    ),
    "guided_decoding_guide": (
        _opt("guided_decoding_guide", "TYPE_STRING"),
        "guided decoding is not served (no guided-decoding backend configured)",
    ),
    "decoder_text_input": (_opt("decoder_text_input", "TYPE_STRING"), f"{_TEXT_ONLY} an encoder-decoder model"),
    "lookahead_window_size": (_opt("lookahead_window_size", "TYPE_INT32"), f"{_TEXT_ONLY} lookahead decoding"),
    "lookahead_ngram_size": (_opt("lookahead_ngram_size", "TYPE_INT32"), f"{_TEXT_ONLY} lookahead decoding"),
    "lookahead_verification_set_size": (
        _opt("lookahead_verification_set_size", "TYPE_INT32"),
        f"{_TEXT_ONLY} lookahead decoding",
    ),
    "return_kv_cache_reuse_stats": (
        _opt("return_kv_cache_reuse_stats", "TYPE_BOOL"),
        "KV-cache reuse statistics are not reported per request",
    ),
    "image_input": (_opt("image_input", "TYPE_FP16", (3, -1, -1)), f"{_TEXT_ONLY} a vision encoder"),
    "image_bytes_input": (_opt("image_bytes_input", "TYPE_UINT8", (-1, -1, -1, -1)), f"{_TEXT_ONLY} a vision encoder"),
    "image_url_input": (_opt("image_url_input", "TYPE_STRING"), f"{_TEXT_ONLY} a vision encoder"),
    "video_bytes_input": (_opt("video_bytes_input", "TYPE_UINT8", (-1, -1, -1, -1)), f"{_TEXT_ONLY} a vision encoder"),
}


# Declared by both entry models (after the served ones), so a request that sets one gets its reason.
ENSEMBLE_INPUTS: tuple[TensorSpec, ...] = (*SERVED_INPUTS, *(spec for spec, _ in UNSERVED_INPUTS.values()))


# Inputs of the `mentallama` front model alone. `stop` (as on TensorRT-LLM's `tensorrt_llm` model): a request
# with `stop` true ends the running request that has the same request id, and is answered at once with an
# empty final response. Clients stop a stream this way instead of cancelling the gRPC call, which Triton 2.51
# mishandles under load (docs/RELIABILITY.md). The ensemble cannot offer it: its steps run per request.
STOP_INPUT = _opt("stop", "TYPE_BOOL")
FRONT_INPUTS: tuple[TensorSpec, ...] = (*ENSEMBLE_INPUTS, STOP_INPUT)

# Config data type -> (wire datatype of a gRPC/HTTP request, struct format of one element ("" for BYTES),
# numpy dtype name).
WIRE_TYPES: dict[str, tuple[str, str, str]] = {
    "TYPE_STRING": ("BYTES", "", "object"),
    "TYPE_BOOL": ("BOOL", "<?", "bool"),
    "TYPE_INT32": ("INT32", "<i", "int32"),
    "TYPE_INT64": ("INT64", "<q", "int64"),
    "TYPE_UINT64": ("UINT64", "<Q", "uint64"),
    "TYPE_UINT8": ("UINT8", "<B", "uint8"),
    "TYPE_FP16": ("FP16", "<e", "float16"),
    "TYPE_FP32": ("FP32", "<f", "float32"),
}


def wire_types(tensors: Iterable[TensorSpec]) -> dict[str, tuple[str, str, str]]:
    """Name -> WIRE_TYPES entry of each tensor: how a client encodes it."""
    return {t.name: WIRE_TYPES[t.data_type] for t in tensors}


def unserved_reason(name: str) -> str:
    """The error for a request that sets an input of UNSERVED_INPUTS."""
    return f"{name} is not supported: {UNSERVED_INPUTS[name][1]}"

ENSEMBLE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", "TYPE_STRING", (-1,)),
    TensorSpec("cum_log_probs", "TYPE_FP32", (-1,)),
    TensorSpec("output_log_probs", "TYPE_FP32", (-1, -1)),
    TensorSpec("batch_index", "TYPE_INT32", (1,)),
    TensorSpec("num_input_tokens", "TYPE_INT32", (1,)),
    TensorSpec("num_output_tokens", "TYPE_INT32", (1,)),
    TensorSpec("sequence_index", "TYPE_INT32", (1,)),
    TensorSpec("kv_cache_alloc_new_blocks", "TYPE_INT32", (1,)),
    TensorSpec("kv_cache_reused_blocks", "TYPE_INT32", (1,)),
    TensorSpec("kv_cache_alloc_total_blocks", "TYPE_INT32", (1,)),
    TensorSpec("arrival_time_ns", "TYPE_INT64", (1,)),
    TensorSpec("first_scheduled_time_ns", "TYPE_INT64", (1,)),
    TensorSpec("first_token_time_ns", "TYPE_INT64", (1,)),
    TensorSpec("last_token_time_ns", "TYPE_INT64", (1,)),
    TensorSpec("acceptance_rate", "TYPE_FP32", (1,)),
    TensorSpec("total_accepted_draft_tokens", "TYPE_INT32", (1,)),
    TensorSpec("total_draft_tokens", "TYPE_INT32", (1,)),
    # Declared so that a client asking for them gets the refusal of return_*_logits, not "unexpected output".
    TensorSpec("context_logits", "TYPE_FP32", (-1, -1)),
    TensorSpec("generation_logits", "TYPE_FP32", (-1, -1, -1)),
)
# Ensemble outputs taken from the engine step under the same name (the rest come from postprocessing).
ENGINE_OUTPUT_NAMES: tuple[str, ...] = tuple(
    spec.name for spec in ENSEMBLE_OUTPUTS if spec.name not in ("text_output", "context_logits", "generation_logits")
)

# An engine step that declares this output reports a failure after its first response in it (a final response
# without error) when the request's parameters ask for it (`errors_in_band`): Triton 2.51's BLS loses an error
# response that is not a call's first (docs/RELIABILITY.md, "Attacks"). The CPU engine step declares it and the
# `mentallama` front model asks; the ensemble does not ask, and gets the error.
ENGINE_ERROR_OUTPUT = "error_message"
ERRORS_IN_BAND = "errors_in_band"
# A caller that ends every request it abandons with a `stop` request, and never by cancelling its call, sets this
# request parameter (the front door for `mentallama` and `ensemble`, the front model for `tensorrt_llm`): the model
# then does not ask Triton whether the client cancelled. Each `is_cancelled` is a round trip between the stub and
# tritonserver, asked every 50 ms of every running request, and for these callers it is never true.
STOPS_IN_BAND = "stops_in_band"

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
    "num_return_sequences": "num_return_sequences",
    "length_penalty": "len_penalty",
    "return_perf_metrics": "return_perf_metrics",
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
