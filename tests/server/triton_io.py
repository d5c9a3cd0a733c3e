"""Raw Triton clients for server tests (no SDK), so the server is tested on its own terms."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient

_TYPES = {
    np.dtype(np.int32): "INT32",
    np.dtype(np.float32): "FP32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(bool): "BOOL",
    np.dtype(object): "BYTES",
}


@dataclass
class StreamResult:
    chunks: list[str] = field(default_factory=list)
    error: str | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # last value of every non-text output

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def make_inputs(text: str | bytes | None, max_tokens: int | None, **extra) -> list[grpcclient.InferInput]:
    values: dict[str, np.ndarray] = {}
    if text is not None:
        values["text_input"] = np.array([[text.encode() if isinstance(text, str) else text]], dtype=object)
    if max_tokens is not None:
        values["max_tokens"] = np.array([[max_tokens]], dtype=np.int32)
    for name, value in extra.items():
        values[name] = value if isinstance(value, np.ndarray) else _as_array(value)
    inputs = []
    for name, array in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), _TYPES[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _as_array(value) -> np.ndarray:
    if isinstance(value, bool):
        return np.array([[value]], dtype=bool)
    if isinstance(value, int):
        return np.array([[value]], dtype=np.int32)
    if isinstance(value, float):
        return np.array([[value]], dtype=np.float32)
    if isinstance(value, list | tuple):
        return np.array([[w.encode() for w in value]], dtype=object)
    raise TypeError(f"no tensor type for {value!r}")


class StreamCall:
    """One request on its own gRPC stream; `result()` collects responses until the final one."""

    def __init__(
        self, url: str, model: str, inputs: list[grpcclient.InferInput], request_id: str = ""
    ) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.finished = False
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=lambda result, error: self.queue.put((result, error)))
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)

    def next(self, timeout: float = 60.0):
        return self.queue.get(timeout=timeout)

    def peek(self) -> str:
        """What has arrived so far, for failure messages: response count, whether final, any error."""
        items = list(self.queue.queue)
        errors = [str(error) for _, error in items if error is not None]
        final = any(
            response is not None and response.get_response().parameters["triton_final_response"].bool_param
            for response, _ in items
        )
        return f"{len(items)} responses, final={final}, errors={errors}"

    def result(self, timeout: float = 120.0) -> StreamResult:
        out = StreamResult()
        try:
            while True:
                response, error = self.next(timeout)
                if error is not None:
                    self.finished = True
                    out.error = str(error)
                    return out
                _collect(response, out)
                if response.get_response().parameters["triton_final_response"].bool_param:
                    self.finished = True
                    return out
        finally:
            self.close()

    def close(self) -> None:
        # Cancel only a request still running: Triton 2.51 mishandles a cancellation that arrives after
        # the final response (logs "HandleCancellation called even when the context was not cancelled").
        self.client.stop_stream(cancel_requests=not self.finished)
        self.client.close()


def _collect(response, out: StreamResult) -> None:
    for tensor in response.get_response().outputs:
        array = response.as_numpy(tensor.name)
        if tensor.name == "text_output":
            out.chunks.append(array.reshape(-1)[0].decode("utf-8"))
        else:
            out.outputs[tensor.name] = array


def infer(url: str, model: str, text, max_tokens, **extra) -> StreamResult:
    return StreamCall(url, model, make_inputs(text, max_tokens, **extra)).result()


def http_generate(base_url: str, model: str, payload: dict, stream: bool = False) -> tuple[int, list[dict]]:
    """POST to Triton's generate / generate_stream endpoint; returns the status and the JSON events."""
    endpoint = "generate_stream" if stream else "generate"
    request = urllib.request.Request(
        f"{base_url}/v2/models/{model}/{endpoint}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            body = resp.read().decode("utf-8")
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, [json.loads(exc.read().decode() or "{}")]
    if not stream:
        return status, [json.loads(body)]
    events = [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]
    return status, events
