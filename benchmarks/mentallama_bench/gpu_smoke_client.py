"""The requests `mentallama-bench gpu-smoke` sends: one gRPC stream per request, read as TensorRT-LLM's own
end-to-end client reads it (flat `text_output`, `batch_index` and `sequence_index` when present), so the smoke
test and the CPU reference it compares with see responses the same way."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

__all__ = ["Answer", "greedy_inputs", "stream_request", "stream_responses"]


@dataclass
class Answer:
    """What one request got: the text per (batch_index, sequence_index) (streamed chunks appended), each
    text-bearing response's chunk in arrival order, the counts the server reported, and the errors."""

    texts: dict[tuple[int, int], str] = field(default_factory=dict)
    chunks: list[str] = field(default_factory=list)
    num_output_tokens: dict[tuple[int, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts.get((0, 0), "")


def greedy_inputs(prompt: str, max_tokens: int, *, stream: bool, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """A greedy request (no top_k/top_p: TensorRT-LLM's rule) for the prompt's continuation alone."""
    inputs = {
        "text_input": np.array([[prompt]], dtype=object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": np.array([[stream]], dtype=bool),
        "exclude_input_in_output": np.array([[True]], dtype=bool),
        "return_num_output_tokens": np.array([[True]], dtype=bool),
    }
    return {**inputs, **extra}


def _index(result, name: str) -> int:
    value = result.as_numpy(name)
    return 0 if value is None else int(np.asarray(value).reshape(-1)[0])


def stream_responses(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], *,
                     timeout_s: float | None = 300.0, request_id: str = "") -> list[Any]:  # fmt: skip
    """Send one request on its own gRPC stream, wait for the server to close it, and return what arrived in
    order: results, and `InferenceServerException`s for error responses."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url=url)
    try:
        client.start_stream(callback=partial(lambda q, result, error: q.put(error or result), responses),
                            stream_timeout=timeout_s)  # fmt: skip
        client.async_stream_infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                                  request_id=request_id)  # fmt: skip
        client.stop_stream()  # waits until the server ends the stream
    finally:
        client.close()
    return [responses.get() for _ in range(responses.qsize())]


def stream_request(
    url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], *, timeout_s: float = 300.0
) -> Answer:
    """Send one request on its own gRPC stream and read its responses into an `Answer`."""
    from tritonclient.utils import InferenceServerException

    responses = stream_responses(url, model, inputs, outputs, timeout_s=timeout_s)
    answer = Answer()
    streamed = bool(np.asarray(inputs.get("stream", np.array([[False]]))).reshape(-1)[0])
    for result in responses:
        if isinstance(result, InferenceServerException):
            answer.errors.append(f"{result.status()}: {result.message()}")
            continue
        output = result.as_numpy("text_output")
        if output is None:  # the bare final response of a decoupled model
            continue
        key = (_index(result, "batch_index"), _index(result, "sequence_index"))
        chunk = output.reshape(-1)[0].decode("utf-8", "replace")
        answer.chunks.append(chunk)
        answer.texts[key] = answer.texts.get(key, "") + chunk if streamed else chunk
        count = result.as_numpy("num_output_tokens")
        if count is not None:
            answer.num_output_tokens[key] = int(np.asarray(count).reshape(-1)[0])
    return answer
