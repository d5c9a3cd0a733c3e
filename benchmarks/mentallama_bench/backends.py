"""Request functions: one backend class per way of reaching a model, registered in `BACKENDS`.

A backend turns one `SampleRequest` into one `RequestOutcome` and never raises: transport and server
failures come back as an `error_code` (the gRPC status name where there is one) and a short message.
Timing starts just before the request is handed to the transport and each text-bearing response is
stamped on arrival, as vLLM's request functions do.

- `triton-grpc` (default): Triton's bidirectional `ModelStreamInfer`, one stream per request, through
  `tritonclient.grpc.aio`. The models are decoupled, so even a single response comes over a stream.
  We ask for Triton's empty final response so the end of every request is seen as a response flagged
  `triton_final_response`, however the model sends its final flag.
- `triton-http`: Triton's HTTP `generate_stream` extension (server-sent events), through aiohttp.
- `openai`: the front door's OpenAI-compatible `/v1/chat/completions`, streamed with `include_usage`, through
  aiohttp (the same load through `/v1` and through gRPC in one run).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from mentallama_bench.records import RequestOutcome, SampleRequest, SamplingParams
from mentallama_interface import ENSEMBLE_INPUTS, wire_types

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "HTTP_KINDS",
    "AiohttpBackend",
    "Backend",
    "OpenAIChatBackend",
    "SseParser",
    "TritonGrpcBackend",
    "TritonHttpBackend",
    "make_backend",
    "request_fields",
]

DEFAULT_MODEL = "mentallama"
_ERROR_CHARS = 300  # error messages are truncated: enough to diagnose, too short to echo a prompt back
_DRAIN_S = 5.0  # how long to wait for the server to close a stream after the final response


def _short(message: object) -> str:
    return str(message).replace("\n", " ")[:_ERROR_CHARS]


def request_fields(sample: SampleRequest, params: SamplingParams) -> dict[str, Any]:
    """The ensemble inputs one request sends, by name (both backends send the same ones)."""
    fields: dict[str, Any] = {
        "text_input": sample.prompt,
        "max_tokens": sample.max_tokens,
        "stream": True,
        "exclude_input_in_output": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }
    if params.force_output_len:
        fields["min_tokens"] = sample.max_tokens
    return {**fields, **sampling_fields(params)}


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """The sampling settings a run fixed (the server's defaults for the rest), named as both APIs name them."""
    names = ("temperature", "top_k", "top_p", "seed")
    return {name: getattr(params, name) for name in names if getattr(params, name) is not None}


class Backend(ABC):
    """One endpoint of one kind. Use as `async with backend:` or call `open()`/`close()`."""

    kind: str = "backend"
    count_label: str = "server"  # what `RequestRecord.token_source` says when this backend reports counts
    uses_server: bool = True  # False: nothing to scrape (the in-process engine)

    def __init__(self, endpoint: str, model: str = DEFAULT_MODEL, request_timeout_s: float = 600.0) -> None:
        self.endpoint = endpoint
        self.model = model
        self.request_timeout_s = request_timeout_s

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Create connections (called once before the first request)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def is_ready(self) -> bool:
        """One readiness probe: server and model ready. False (not an exception) when unreachable."""

    async def wait_ready(self, timeout_s: float, interval_s: float = 0.5) -> None:
        """Poll `is_ready` until it holds; `TimeoutError` naming the endpoint otherwise."""
        deadline = time.monotonic() + timeout_s
        while not await self.is_ready():
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.kind} {self.endpoint}: model {self.model!r} not ready after {timeout_s:g} s"
                )
            await asyncio.sleep(interval_s)

    @abstractmethod
    async def generate(self, sample: SampleRequest, params: SamplingParams) -> RequestOutcome:
        """Send one request and observe its responses. Never raises."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "endpoint": self.endpoint, "model": self.model}


# --- Triton gRPC -------------------------------------------------------------------------------

# Wire datatype and numpy dtype of each input this backend sends, from the one declaration of the interface.
_GRPC_TYPES: dict[str, tuple[str, Any]] = {
    name: (wire, np.dtype(dtype).type) for name, (wire, _, dtype) in wire_types(ENSEMBLE_INPUTS).items()
}


def _first_int(result: Any, name: str) -> int | None:
    arr = result.as_numpy(name)  # None when the response does not carry this output
    if arr is None or arr.size == 0:
        return None
    return int(arr.reshape(-1)[0])


def _text(result: Any) -> str:
    arr = result.as_numpy("text_output")
    if arr is None:
        return ""
    parts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    return "".join(parts)


class TritonGrpcBackend(Backend):
    """Triton gRPC streaming (`ModelStreamInfer`), one stream per request over one shared channel."""

    kind = "triton-grpc"

    def __init__(self, endpoint: str, model: str = DEFAULT_MODEL, request_timeout_s: float = 600.0) -> None:
        super().__init__(endpoint.removeprefix("grpc://"), model, request_timeout_s)
        self._client: Any = None

    async def open(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        if self._client is None:
            self._client = grpcclient.InferenceServerClient(url=self.endpoint)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def is_ready(self) -> bool:
        await self.open()
        try:
            return bool(await self._client.is_server_ready()) and bool(
                await self._client.is_model_ready(self.model)
            )
        except Exception:  # noqa: BLE001 - unreachable or starting: not ready yet
            return False

    def _inputs(self, sample: SampleRequest, params: SamplingParams) -> list[Any]:
        import tritonclient.grpc.aio as grpcclient

        inputs = []
        for name, value in request_fields(sample, params).items():
            triton_type, np_type = _GRPC_TYPES[name]
            data = np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=np_type)
            tensor = grpcclient.InferInput(name, list(data.shape), triton_type)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        return inputs

    async def generate(self, sample: SampleRequest, params: SamplingParams) -> RequestOutcome:
        import grpc
        from tritonclient.utils import InferenceServerException

        stream: Any = None
        try:
            await self.open()
            request = {
                "model_name": self.model,
                "inputs": self._inputs(sample, params),
                "request_id": str(sample.index),
                "parameters": {"triton_enable_empty_final_response": True},
            }
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise
            now = time.perf_counter()
            return RequestOutcome(start=now, end=now, error_code="CLIENT_ERROR", error=_short(exc))

        async def one_request() -> Any:
            yield request

        out = RequestOutcome(start=time.perf_counter())  # tensors are built: latency starts here
        try:
            stream = self._client.stream_infer(one_request(), stream_timeout=self.request_timeout_s)
            async for result, error in stream:
                now = time.perf_counter()
                out.num_responses += 1
                if error is not None:
                    out.error_code, out.error = "INFER_ERROR", _short(error.message())
                    break
                text = _text(result)
                if text:
                    out.chunk_times.append(now)
                    out.text += text
                n_in, n_out = _first_int(result, "num_input_tokens"), _first_int(result, "num_output_tokens")
                out.server_input_tokens = n_in if n_in is not None else out.server_input_tokens
                out.server_output_tokens = n_out if n_out is not None else out.server_output_tokens
                param = result.get_response().parameters.get("triton_final_response")
                if param is not None and param.bool_param:
                    out.final_seen = True
                    break
        except grpc.aio.AioRpcError as exc:
            out.error_code, out.error = exc.code().name, _short(exc.details())
        except InferenceServerException as exc:
            out.error_code, out.error = exc.status() or "CLIENT_ERROR", _short(exc.message())
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise
            out.error_code, out.error = "CLIENT_ERROR", _short(f"{type(exc).__name__}: {exc}")
        out.end = time.perf_counter()
        if stream is not None:
            await self._drain(stream, out)
        if out.error_code is None and not out.final_seen:
            out.error_code, out.error = "INCOMPLETE", "stream closed before the final response"
        return out

    @staticmethod
    async def _drain(stream: Any, out: RequestOutcome) -> None:
        """Let the server close the stream it has finished; cancel it if we stopped early or it lingers."""
        if not out.final_seen:
            stream.cancel()
            return

        async def rest() -> None:
            async for _ in stream:
                pass

        try:
            await asyncio.wait_for(rest(), _DRAIN_S)
        except Exception:  # noqa: BLE001 - already measured; just make sure nothing stays open
            stream.cancel()


# --- Triton HTTP generate_stream -----------------------------------------------------------------


class SseParser:
    """Incremental server-sent-events parser: bytes in, the `data:` payload of each complete event out."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += self._decoder.decode(chunk).replace("\r\n", "\n")
        events = []
        while "\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split("\n\n", 1)
            data = [line[5:].lstrip(" ") for line in raw.split("\n") if line.startswith("data:")]
            if data:
                events.append("\n".join(data))
        return events

    def flush(self) -> list[str]:
        """Events left when the body ended without a trailing blank line."""
        rest, self._buffer = self._buffer + self._decoder.decode(b"", final=True), ""
        return self.feed((rest + "\n\n").encode()) if rest.strip() else []


def _json_int(value: Any) -> int | None:
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return None if value is None else int(value)


def _json_text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(_json_text(v) for v in value)
    return "" if value is None else str(value)


class AiohttpBackend(Backend):
    """An HTTP backend: one aiohttp session per endpoint, opened on first use (`self._session`)."""

    def __init__(self, endpoint: str, model: str = DEFAULT_MODEL, request_timeout_s: float = 600.0) -> None:
        super().__init__(endpoint, model, request_timeout_s)
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                connector=aiohttp.TCPConnector(limit=0),  # the runner, not the pool, bounds concurrency
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TritonHttpBackend(AiohttpBackend):
    """Triton's `POST /v2/models/<model>/generate_stream` (SSE), one aiohttp session per endpoint."""

    kind = "triton-http"

    def __init__(self, endpoint: str, model: str = DEFAULT_MODEL, request_timeout_s: float = 600.0) -> None:
        base = endpoint if "://" in endpoint else f"http://{endpoint}"
        super().__init__(base.rstrip("/"), model, request_timeout_s)

    async def is_ready(self) -> bool:
        await self.open()
        try:
            for path in ("/v2/health/ready", f"/v2/models/{self.model}/ready"):
                async with self._session.get(self.endpoint + path) as resp:
                    if resp.status != 200:
                        return False
            return True
        except Exception:  # noqa: BLE001 - unreachable or starting: not ready yet
            return False

    def _handle_event(self, data: str, now: float, out: RequestOutcome) -> None:
        out.num_responses += 1
        body = json.loads(data)
        if "error" in body:
            out.error_code, out.error = "INFER_ERROR", _short(body["error"])
            return
        text = _json_text(body.get("text_output"))
        if text:
            out.chunk_times.append(now)
            out.text += text
        n_in, n_out = _json_int(body.get("num_input_tokens")), _json_int(body.get("num_output_tokens"))
        out.server_input_tokens = n_in if n_in is not None else out.server_input_tokens
        out.server_output_tokens = n_out if n_out is not None else out.server_output_tokens

    def _request(self, sample: SampleRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body of one streamed request."""
        return f"{self.endpoint}/v2/models/{self.model}/generate_stream", request_fields(sample, params)

    def _stream_ended(self, out: RequestOutcome) -> None:
        out.final_seen = out.error_code is None  # the server ends the body after the final response

    async def generate(self, sample: SampleRequest, params: SamplingParams) -> RequestOutcome:
        await self.open()
        out = RequestOutcome(start=time.perf_counter())
        try:
            url, payload = self._request(sample, params)
            async with self._session.post(url, json=payload) as resp:
                if resp.status != 200:
                    out.error_code, out.error = f"HTTP_{resp.status}", _short(await resp.text())
                else:
                    parser = SseParser()
                    async for chunk in resp.content.iter_any():
                        now = time.perf_counter()
                        for data in parser.feed(chunk):
                            self._handle_event(data, now, out)
                    for data in parser.flush():
                        self._handle_event(data, time.perf_counter(), out)
                    self._stream_ended(out)
        except (asyncio.TimeoutError, TimeoutError):
            out.error_code, out.error = (
                "DEADLINE_EXCEEDED",
                f"no complete response within {self.request_timeout_s:g} s",
            )
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise
            out.error_code, out.error = "CLIENT_ERROR", _short(f"{type(exc).__name__}: {exc}")
        out.end = time.perf_counter()
        return out


# --- OpenAI-compatible chat completions --------------------------------------------------------------------


def openai_payload(sample: SampleRequest, params: SamplingParams, model: str) -> dict[str, Any]:
    """A streamed chat completion of the sample's prompt (the front door renders the chat template), with the
    usage chunk so token counts are the server's. `min_tokens` and `top_k` are vLLM's extensions, which the
    front door serves too."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": sample.prompt}],
        "max_tokens": sample.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.force_output_len:
        payload["min_tokens"] = sample.max_tokens
    return {**payload, **sampling_fields(params)}


class OpenAIChatBackend(TritonHttpBackend):
    """`POST /v1/chat/completions` with `stream` and `stream_options.include_usage` (SSE ending in `[DONE]`),
    as vLLM's `openai-chat` request function; the endpoint is the HTTP port (`/v1` is added)."""

    kind = "openai"

    async def is_ready(self) -> bool:
        await self.open()
        try:
            async with self._session.get(self.endpoint + "/v2/health/ready") as resp:
                if resp.status != 200:
                    return False
            async with self._session.get(f"{self.endpoint}/v1/models/{self.model}") as resp:
                return resp.status == 200
        except Exception:  # noqa: BLE001 - unreachable or starting: not ready yet
            return False

    def _handle_event(self, data: str, now: float, out: RequestOutcome) -> None:
        if data.strip() == "[DONE]":
            out.final_seen = out.error_code is None
            return
        out.num_responses += 1
        body = json.loads(data)
        if "error" in body:
            error = body["error"]
            message = error.get("message") if isinstance(error, dict) else error
            out.error_code, out.error = "INFER_ERROR", _short(message)
            return
        for choice in body.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                out.chunk_times.append(now)
                out.text += text
        usage = body.get("usage")
        if usage:
            out.server_input_tokens = _json_int(usage.get("prompt_tokens"))
            out.server_output_tokens = _json_int(usage.get("completion_tokens"))

    def _request(self, sample: SampleRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        return f"{self.endpoint}/v1/chat/completions", openai_payload(sample, params, self.model)

    def _stream_ended(self, out: RequestOutcome) -> None:
        if out.error_code is None and not out.final_seen:
            out.error_code, out.error = "INCOMPLETE", "stream ended without data: [DONE]"


BACKENDS: dict[str, type[Backend]] = {
    TritonGrpcBackend.kind: TritonGrpcBackend,
    TritonHttpBackend.kind: TritonHttpBackend,
    OpenAIChatBackend.kind: OpenAIChatBackend,
}
HTTP_KINDS = (TritonHttpBackend.kind, OpenAIChatBackend.kind)  # reached at the HTTP endpoints


def make_backend(
    kind: str, endpoint: str, model: str = DEFAULT_MODEL, request_timeout_s: float = 600.0
) -> Backend:
    """Registry lookup; the error lists the known kinds."""
    try:
        cls = BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown backend {kind!r}; known: {', '.join(BACKENDS)}") from None
    return cls(endpoint, model, request_timeout_s)
