"""OpenAI-compatible `/v1` routes and the JSON analysis endpoint, on the front door's HTTP app (issue 19).

`/v1/models`, `/v1/completions`, `/v1/chat/completions` (OpenAI's shapes, SSE streaming ending in
`data: [DONE]`), `POST /v1/analyze` (the SDK's own IMHI templating and label parsing, for services not written in
Python) and `GET /v1/tasks` (the SDK's task catalog). Every request goes the way a KServe `generate` does
(`HttpFront`): API key, bounded and depth-checked body, per-client admission, one upstream request to the
`mentallama` model over the shared streams, an in-band stop when the client disconnects. Request text is never
logged. `/openapi.json` describes the /v1 routes only.

`n` > 1 is one upstream request with `num_return_sequences` = n: the front model relays each sampled sequence in
responses of its own, tagged with its `sequence_index`, which becomes the choice's `index` (streamed chunks carry
it too, as OpenAI's do). `best_of` samples that many and returns the n with the highest log probability per token.
Both are bounded by the server's max_sequences (`FrontDoorConfig.max_sequences`), refused above it naming the field.
Refused with a 400 naming the field, because the engine cannot honour them: `logprobs` / `top_logprobs` / `echo` /
`suffix` (the engine's log probabilities come per chunk without the tokens they belong to), tools and functions,
`response_format` other than text, `logit_bias`, non-text content parts, and any field not known here unless it
changes nothing (`IGNORED_FIELDS`).
Sampling fields left out use the server's defaults, greedy decoding, as the SDK does (OpenAI's default temperature
is 1): a `temperature` above 0 samples (top_p 1 unless given).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from tritonclient.grpc import service_pb2

from mentallama_server.front_door.admission import Refused, Ticket
from mentallama_server.front_door.chat_template import ChatTemplate, TemplateError, load_chat_template
from mentallama_server.front_door.config import FrontDoorConfig
from mentallama_server.front_door.http_front import HttpFront, status_of
from mentallama_server.front_door.openai_schema import (
    MAX_POSTS,
    MAX_STOP,
    REQUEST_MODELS,
    AnalyzeRequest,
    AnalyzeResponse,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    TaskList,
    request_body,
)
from mentallama_server.front_door.tensors import generate_request, response_json

MODEL = "mentallama"  # the one served model id: the front model (the ensemble answers the same, one hop longer)
DEFAULT_MAX_TOKENS = 256  # the SDK's default; MentaLLaMA's answers are a verdict and a paragraph
CREATED = int(time.time())
# Fields OpenAI clients commonly send that change nothing here (no store, no tiers, no tools without `tools`).
IGNORED_FIELDS = frozenset({
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier", "prompt_cache_key",
    "stream_options", "reasoning_effort", "verbosity",
})  # fmt: skip
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error"}  # fmt: skip
ERROR_CODES = {401: "invalid_api_key", 413: "request_too_large", 415: "unsupported_media_type",
               429: "rate_limit_exceeded", 503: "service_unavailable"}  # fmt: skip
# The upstream (`mentallama` input) names in error messages, and the OpenAI field each comes from.
UPSTREAM_PARAMS = {"text_input": "messages", "max_tokens": "max_tokens", "stop_words": "stop", "top_p": "top_p",
                   "temperature": "temperature", "top_k": "top_k", "seed": "seed", "min_tokens": "min_tokens",
                   "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                   "repetition_penalty": "repetition_penalty"}  # fmt: skip


class ApiError(Exception):
    """A request refused in OpenAI's error shape: `param` names the field at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    @classmethod
    def of(cls, refusal: Refused, prompt_field: str = "messages") -> ApiError:
        """A front door refusal (auth, size, limits, a value out of its input's range)."""
        return cls.upstream(refusal.message, prompt_field, refusal.status)

    @classmethod
    def upstream(cls, message: str, prompt_field: str, status: int | None = None) -> ApiError:
        """An error the model answered; the input it names, if any, as the OpenAI field."""
        status = status_of(message) if status is None else status
        match = re.match(r"\W*([a-z_]+)", message)
        param = UPSTREAM_PARAMS.get(match.group(1)) if match and status == 400 else None
        return cls(message, status, prompt_field if param == "messages" else param, ERROR_CODES.get(status))

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _param(loc: tuple[Any, ...]) -> str:
    """`('messages', 0, 'content')` -> `messages[0].content`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse(model: type[BaseModel], body: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _param(tuple(p for p in first["loc"] if not (isinstance(p, str) and p in ("str", "list[str]"))))
        raise ApiError(f"{where}: {first['msg']}", 400, where or None) from None


def _refuse_unknown(extra: Mapping[str, Any] | None, prefix: str = "") -> None:
    for name, value in (extra or {}).items():
        if name in IGNORED_FIELDS or value is None:
            continue
        where = f"{prefix}{name}"
        raise ApiError(f"{where} is not supported by this server", 400, where, "unsupported_parameter")


# Fields OpenAI defines that we do not serve: accepted at their harmless values only.
_NOT_SERVED: dict[str, tuple[Any, str]] = {
    "tools": (lambda v: v == [], "tools are not supported: MentaLLaMA is served without tool calling"),
    "tool_choice": (lambda v: v in ("none", "auto"), "tool_choice is not supported (no tools)"),
    "functions": (lambda v: v == [], "functions are not supported: MentaLLaMA is served without tool calling"),
    "function_call": (lambda v: v in ("none", "auto"), "function_call is not supported (no functions)"),
    "response_format": (lambda v: isinstance(v, dict) and v.get("type") == "text",
                        "response_format: only {\"type\": \"text\"} is served (no structured output)"),
    "logit_bias": (lambda v: v == {}, "logit_bias is not supported by this engine"),
    "modalities": (lambda v: v == ["text"], "modalities: only [\"text\"] is served"),
    "audio": (lambda v: False, "audio output is not served (a text model)"),
    "prediction": (lambda v: False, "predicted outputs are not served"),
    "web_search_options": (lambda v: False, "web search is not served"),
}  # fmt: skip


def sequences_of(req: ChatCompletionRequest | CompletionRequest) -> tuple[int, int]:
    """(choices returned, sequences generated): `n`, and `best_of` where given (the best n of them)."""
    n = req.n or 1
    return n, max(n, getattr(req, "best_of", None) or 1)


def check_fields(req: ChatCompletionRequest | CompletionRequest,
                 max_sequences: int = FrontDoorConfig.max_sequences) -> None:  # fmt: skip
    """Refuse what this server would silently get wrong, naming the field; `max_sequences`: the most sequences one
    request may generate (the front door's cap)."""
    extra = dict(req.model_extra or {})
    for name, (harmless, why) in _NOT_SERVED.items():
        value = extra.pop(name, None)
        if value is not None and not harmless(value):
            raise ApiError(why, 400, name, "unsupported_parameter")
    _refuse_unknown(extra)
    n = req.n or 1
    if n > max_sequences:
        raise ApiError(f"n is {n}; this server returns at most {max_sequences} choices per request (its "
                       "max_sequences)", 400, "n")  # fmt: skip
    if isinstance(req, ChatCompletionRequest):
        if req.logprobs or req.top_logprobs:
            name = "logprobs" if req.logprobs else "top_logprobs"
            raise ApiError(f"{name} is not served: the engine's log probabilities come per chunk, without the "
                           "tokens they belong to", 400, name, "unsupported_parameter")  # fmt: skip
        for index, message in enumerate(req.messages):
            _refuse_unknown({k: v for k, v in (message.model_extra or {}).items() if k != "refusal"},
                            f"messages[{index}].")  # fmt: skip
    else:
        for name, bad in (("logprobs", req.logprobs is not None), ("echo", bool(req.echo)),
                          ("suffix", bool(req.suffix))):  # fmt: skip
            if bad:
                raise ApiError(f"{name} is not served by this engine", 400, name, "unsupported_parameter")
        if req.best_of is not None:
            if req.best_of < n:
                raise ApiError(f"best_of ({req.best_of}) must be >= n ({n})", 400, "best_of")
            if req.best_of > max_sequences:
                raise ApiError(f"best_of is {req.best_of}; this server generates at most {max_sequences} sequences "
                               "per request (its max_sequences)", 400, "best_of")  # fmt: skip
            if req.best_of > n and req.stream:
                raise ApiError("best_of above n cannot be streamed: the best are known only at the end", 400,
                               "best_of")  # fmt: skip
    if isinstance(req.stop, list):
        if len(req.stop) > MAX_STOP:
            raise ApiError(f"stop has {len(req.stop)} strings; the limit is {MAX_STOP}", 400, "stop")
        if any(not s for s in req.stop):
            raise ApiError("stop strings must not be empty", 400, "stop")
    if req.min_tokens is not None and req.min_tokens > max_tokens_of(req):
        raise ApiError(f"min_tokens ({req.min_tokens}) is above max_tokens ({max_tokens_of(req)})", 400, "min_tokens")


def max_tokens_of(req: ChatCompletionRequest | CompletionRequest) -> int:
    chosen = getattr(req, "max_completion_tokens", None) or req.max_tokens
    return chosen if chosen is not None else DEFAULT_MAX_TOKENS


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as the template takes them: text only, `developer` as `system`."""
    messages = []
    for index, message in enumerate(req.messages):
        role = "system" if message.role == "developer" else message.role
        if role not in ("system", "user", "assistant"):
            raise ApiError(f"messages[{index}].role {message.role!r} is not served (system, developer, user, "
                           "assistant; no tools)", 400, f"messages[{index}].role")  # fmt: skip
        content = message.content
        if isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    where = f"messages[{index}].content[{part_index}]"
                    raise ApiError(f"{where}: only text parts are served (a text model)", 400, where)
                texts.append(part.text)
            content = "\n".join(texts)
        if content is None:
            raise ApiError(f"messages[{index}].content is required", 400, f"messages[{index}].content")
        messages.append({"role": role, "content": content})
    return messages


def upstream_fields(req: ChatCompletionRequest | CompletionRequest, prompt: str) -> dict[str, Any]:
    """The `mentallama` inputs of a completion request (the JSON of a KServe `generate`)."""
    fields: dict[str, Any] = {
        "text_input": prompt,
        "max_tokens": max_tokens_of(req),
        "stream": bool(req.stream),
        "exclude_input_in_output": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }
    # TensorRT-LLM semantics: no top_p and no top_k is greedy whatever the temperature, so a temperature above 0
    # brings top_p 1 (OpenAI's default); temperature 0 is greedy: nothing sampled is sent.
    if req.temperature != 0.0:
        sampling = req.temperature is not None or req.top_p is not None or req.top_k
        if sampling:
            fields["temperature"] = 1.0 if req.temperature is None else req.temperature
            fields["top_p"] = 1.0 if req.top_p is None else req.top_p
            if req.top_k:
                fields["top_k"] = req.top_k
    for name in ("seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens"):
        value = getattr(req, name)
        if value is not None:
            fields[name] = value
    if req.stop:
        fields["stop_words"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    n, generated = sequences_of(req)
    if generated > 1:
        fields["num_return_sequences"] = generated
    if generated > n:  # best_of ranks the sequences by their log probabilities
        fields["return_log_probs"] = True
    return fields


@dataclass
class Progress:
    """What a request's responses said so far: its text, counts and how it ended.

    Stop strings: the engine stops after the tokens of a stop string (TensorRT-LLM's semantics: the tokens the
    tokenizer gives the string, included in its output); OpenAI's text ends before the string. So text that may
    be the start of a stop string is held back until the next response tells, and a stop string that ends the
    text is dropped."""

    max_tokens: int
    stops: tuple[str, ...] = ()
    texts: list[str] = field(default_factory=list)
    held: str = ""
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    cum_log_prob: float | None = None
    error: str | None = None

    def add(self, message: service_pb2.ModelStreamInferResponse, ticket: Ticket) -> str:
        """Record one response; returns the text it lets out."""
        if message.error_message:
            self.error = ticket.own_words(message.error_message)
            return ""
        return self.take(response_json(message.infer_response, ""))

    def take(self, body: Mapping[str, Any]) -> str:
        """Record one response's outputs; returns the text they let out."""
        text = body.get("text_output", "")
        text = "".join(text) if isinstance(text, list) else str(text)
        if isinstance(body.get("num_input_tokens"), int):
            self.num_input_tokens = body["num_input_tokens"]
        if isinstance(body.get("num_output_tokens"), int):
            self.num_output_tokens = body["num_output_tokens"]
        if isinstance(body.get("cum_log_probs"), float):
            self.cum_log_prob = body["cum_log_probs"]
        return self._out(self._hold(text))

    def _hold(self, text: str) -> str:
        if not self.stops:
            return text
        pending = self.held + text
        keep = 0
        for size in range(min(len(pending), max(map(len, self.stops))), 0, -1):
            if any(stop.startswith(pending[-size:]) for stop in self.stops):
                keep = size
                break
        self.held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def _out(self, text: str) -> str:
        if text:
            self.texts.append(text)
        return text

    def finish(self) -> str:
        """The held-back rest, less a stop string that ends the text."""
        rest, self.held = self.held, ""
        if self.finish_reason() == "stop":
            for stop in self.stops:
                if rest.endswith(stop):
                    rest = rest[: len(rest) - len(stop)]
                    break
        return self._out(rest)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def finish_reason(self) -> str:
        """`length` when the budget was used up; `stopped` when a stop ended it (its final response is bare: the
        counts every request asks for never came), `stop` otherwise (end of sequence or a stop string)."""
        if self.num_output_tokens is None:
            return "stopped"
        return "length" if self.num_output_tokens >= self.max_tokens else "stop"

    def usage(self) -> dict[str, int]:
        prompt, completion = self.num_input_tokens or 0, self.num_output_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def per_token(self) -> float:
        """Log probability per generated token, best_of's ranking (OpenAI's); unknown ranks last."""
        if self.cum_log_prob is None:
            return -math.inf
        return self.cum_log_prob / max(self.num_output_tokens or 1, 1)


@dataclass
class Choices:
    """The sequences of one request (`num_return_sequences`), each followed by a `Progress` of its own: the front
    model tags a sequence's responses with its `sequence_index` (none for a single sequence)."""

    sequences: list[Progress]
    error: str | None = None

    @classmethod
    def of(cls, count: int, max_tokens: int, stops: tuple[str, ...] = ()) -> Choices:
        return cls([Progress(max_tokens, stops) for _ in range(count)])

    def add(self, message: service_pb2.ModelStreamInferResponse, ticket: Ticket) -> tuple[int, str]:
        """Record one response; returns its sequence's index and the text it lets out."""
        if message.error_message:
            self.error = ticket.own_words(message.error_message)
            return 0, ""
        body = response_json(message.infer_response, "")
        index = body.get("sequence_index", 0)
        if not isinstance(index, int) or not 0 <= index < len(self.sequences):
            self.error = (f"generation failed: the model answered sequence_index {str(index)[:20]} for "
                          f"{len(self.sequences)} sequences")  # fmt: skip
            return 0, ""
        return index, self.sequences[index].take(body)

    def best(self, n: int) -> list[Progress]:
        """The n sequences returned: all of them in order, or (best_of) the n of highest log probability per
        token, best first."""
        if n >= len(self.sequences):
            return self.sequences
        return sorted(self.sequences, key=lambda p: p.per_token(), reverse=True)[:n]

    def usage(self) -> dict[str, int]:
        """Prompt tokens once, completion tokens of every sequence generated (best_of's too, as OpenAI counts)."""
        prompt = next((p.num_input_tokens for p in self.sequences if p.num_input_tokens is not None), 0)
        completion = sum(p.num_output_tokens or 0 for p in self.sequences)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAIFront:
    """The /v1 routes, over the HTTP front door's checks, admission and upstream machinery."""

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self._template: ChatTemplate | None = None

    async def template(self) -> ChatTemplate:
        """The checkpoint's chat template, from the tokenizer folder in the front door's settings (the launcher
        writes it there), else from the served model's config when Triton shares it."""
        if self._template is None:
            folder = self.front.config.tokenizer_dir
            if not folder:
                try:
                    reply = await self.front.pool.unary("ModelConfig", service_pb2.ModelConfigRequest(name=MODEL))
                    folder = reply.config.parameters["tokenizer_dir"].string_value
                except Exception:  # noqa: BLE001 - no folder to read: the LLaMA-2-chat format, not a failure
                    folder = None
            self._template = await asyncio.to_thread(load_chat_template, folder)
        return self._template

    async def _admitted(self, request: Request, model_cls: type[BaseModel]) -> tuple[str, Any]:
        """The client (API key checked first) and its parsed, bounded request body."""
        try:
            client = self.front.client(request)
            body = await self.front.body(request)
        except Refused as refusal:
            raise ApiError.of(refusal) from None
        return client, parse(model_cls, body)

    @staticmethod
    def _check_model(model: str | None) -> None:
        if model is not None and model != MODEL:
            raise ApiError(f"The model `{model}` does not exist; this server serves `{MODEL}`", 404, "model",
                           "model_not_found")  # fmt: skip

    async def _start(
        self, request: Request, client: str, client_id: str, fields: dict[str, Any], prompt_field: str
    ) -> tuple[Any, asyncio.Queue, Any]:
        """Send a request upstream and wait for its first response; ApiError when it is refused before that.
        Returns None in place of the first delivery when the client disconnected first (then abandoned)."""
        try:
            upstream = generate_request(MODEL, fields, await self.front.inputs_of(MODEL))
            ticket, queue = self.front.submit(client, client_id, upstream)
        except Refused as refusal:
            raise ApiError.of(refusal, prompt_field) from None
        first = await self.front._next(request, queue)
        if first is None:
            self.front._abandon(ticket, queue)
        elif first[0].error_message:
            self.front.admission.release(ticket)
            raise ApiError.upstream(ticket.own_words(first[0].error_message), prompt_field)
        return ticket, queue, first

    async def _collect(self, request: Request, ticket: Any, queue: asyncio.Queue, first: Any,
                       progress: Progress | Choices) -> bool:  # fmt: skip
        """All responses into `progress`; False when the client disconnected (the request is stopped)."""
        delivery = first
        while True:
            message, final = delivery
            progress.add(message, ticket)
            if final:
                self.front.admission.release(ticket)
                return True
            delivery = await self.front._next(request, queue)
            if delivery is None:
                self.front._abandon(ticket, queue)
                return False

    # --- /v1/chat/completions and /v1/completions ---------------------------------------------------------------
    async def completion(self, request: Request, chat: bool) -> Response:
        try:
            client, req = await self._admitted(request, ChatCompletionRequest if chat else CompletionRequest)
            self._check_model(req.model)
            check_fields(req, self.front.config.max_sequences)
            if chat:
                try:
                    prompt = (await self.template()).render(chat_messages(req))
                except TemplateError as exc:
                    raise ApiError(str(exc), 400, "messages") from None
            else:
                prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
                if len(prompts) != 1:
                    raise ApiError(f"prompt: give one prompt per request, got {len(prompts)} (send one request per "
                                   "prompt)", 400, "prompt", "unsupported_parameter")  # fmt: skip
                prompt = prompts[0]
            completion_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
            fields = upstream_fields(req, prompt)
            ticket, queue, first = await self._start(request, client, completion_id, fields,
                                                     "messages" if chat else "prompt")  # fmt: skip
        except ApiError as error:
            return error.response()
        if first is None:
            return Response(status_code=499)
        n, generated = sequences_of(req)
        choices = Choices.of(generated, fields["max_tokens"], tuple(fields.get("stop_words", ())))
        head = {"id": completion_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": MODEL}  # fmt: skip
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._events(ticket, queue, first, choices, head, chat, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip
        if not await self._collect(request, ticket, queue, first, choices):
            return Response(status_code=499)
        for progress in choices.sequences:
            progress.finish()
        if choices.error:
            return ApiError.upstream(choices.error, "messages" if chat else "prompt").response()
        listed = []
        for index, progress in enumerate(choices.best(n)):
            if chat:
                content = {"message": {"role": "assistant", "content": progress.text, "refusal": None}}
            else:
                content = {"text": progress.text}
            listed.append({"index": index, **content, "logprobs": None, "finish_reason": progress.finish_reason()})
        body = {**head, "choices": listed, "usage": choices.usage()}
        if chat:
            body["object"] = "chat.completion"
        return Response(_dumps(body), media_type="application/json")

    async def _events(self, ticket: Any, queue: asyncio.Queue, first: Any, choices: Choices,
                      head: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
        """SSE chunks, each with one choice and its index: (chat) a role chunk per choice, one chunk per text
        response, a chunk with finish_reason per choice, (include_usage) a chunk with `usage` and no choices, then
        `data: [DONE]`. Streams are never best_of above n (check_fields), so every sequence is a choice."""
        prefix = _dumps(head)[:-1]  # `{"id":...,"model":"mentallama"` without its brace: each chunk appends to it
        tail = ',"usage":null}' if include_usage else "}"

        def chunk(choice: dict[str, Any]) -> str:
            return f'data: {prefix},"choices":[{_dumps(choice)}]{tail}\n\n'

        def piece(index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> str:
            if not chat:
                return chunk({"index": index, "text": text or "", "logprobs": None, "finish_reason": finish})
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            return chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": finish})

        if chat:
            for index in range(len(choices.sequences)):
                yield piece(index, role=True)
        async with contextlib.aclosing(self.front.relay(ticket, queue, first)) as messages:
            async for message in messages:
                index, text = choices.add(message, ticket)
                if text:
                    yield piece(index, text)
        for index, progress in enumerate(choices.sequences):
            if rest := progress.finish():
                yield piece(index, rest)
        if choices.error:
            yield f"data: {_dumps(ApiError.upstream(choices.error, 'messages' if chat else 'prompt').body())}\n\n"
        else:
            for index, progress in enumerate(choices.sequences):
                yield piece(index, finish=progress.finish_reason())
            if include_usage:
                yield f'data: {prefix},"choices":[],"usage":{_dumps(choices.usage())}}}\n\n'
        yield "data: [DONE]\n\n"

    # --- /v1/models ---------------------------------------------------------------------------------------------
    def models(self, request: Request, model: str | None = None) -> Response:
        try:
            self.front.client(request)
            if model is not None:
                self._check_model(model)
        except Refused as refusal:
            return ApiError.of(refusal).response()
        except ApiError as error:
            return error.response()
        card = ModelCard(id=MODEL, created=CREATED, owned_by="mentallama").model_dump()
        return JSONResponse(card if model is not None else ModelList(data=[card]).model_dump())

    # --- /v1/analyze and /v1/tasks ------------------------------------------------------------------------------
    async def analyze(self, request: Request) -> Response:
        from mentallama.parsing import parse_response
        from mentallama.prompts import build_prompt
        from mentallama.tasks import get_task

        try:
            client, req = await self._admitted(request, AnalyzeRequest)
            _refuse_unknown(req.model_extra)
            self._check_model(req.model)
            posts = [req.post] if isinstance(req.post, str) else list(req.post)
            if not 1 <= len(posts) <= MAX_POSTS:
                raise ApiError(f"post: give 1 to {MAX_POSTS} posts, got {len(posts)}", 400, "post")
            try:
                info = get_task(req.task)
            except ValueError as exc:
                raise ApiError(str(exc), 400, "task") from None
            try:
                info.question_for(req.aspect)
                aspect = None if req.aspect is None else info.normalize_aspect(req.aspect)
            except ValueError as exc:
                raise ApiError(str(exc), 400, "aspect") from None
            prompts = []
            for index, post in enumerate(posts):
                where = "post" if isinstance(req.post, str) else f"post[{index}]"
                try:
                    prompts.append(build_prompt(info, post, aspect=aspect, chat=req.chat,
                                                system_prompt=req.system_prompt))  # fmt: skip
                except ValueError as exc:
                    param = "system_prompt" if "system_prompt" in str(exc) else where
                    raise ApiError(f"{param}: {exc}", 400, param) from None
        except ApiError as error:
            return error.response()
        # The SDK's `analyze` request, field for field (streamed, as the SDK streams it), so the same post gives
        # the same text, label and reasoning.
        names = ("temperature", "top_k", "top_p", "seed")
        sampling = {name: getattr(req, name) for name in names if getattr(req, name) is not None}
        requests = [{"text_input": prompt, "max_tokens": req.max_tokens, "stream": True,
                     "exclude_input_in_output": True, "return_num_input_tokens": True,
                     "return_num_output_tokens": True, **sampling} for prompt in prompts]  # fmt: skip
        outcomes = await asyncio.gather(*(self._analyze_one(request, client, fields) for fields in requests),
                                        return_exceptions=True)  # fmt: skip
        results = []
        for outcome in outcomes:
            if isinstance(outcome, ApiError):
                return outcome.response()
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is None:
                return Response(status_code=499)
            analysis = parse_response(info, outcome.text.lstrip())  # as the SDK: the answer as written
            results.append({
                "label": analysis.label, "label_source": analysis.label_source, "confidence": analysis.confidence,
                "conflict": analysis.conflict, "off_task": analysis.off_task, "note": analysis.note,
                "reasoning": analysis.reasoning, "raw_text": analysis.raw,
                "finish_reason": outcome.finish_reason(), "usage": outcome.usage(),
            })  # fmt: skip
        body = AnalyzeResponse(model=MODEL, task=info.name, aspect=aspect, results=results)
        return Response(body.model_dump_json(), media_type="application/json")

    async def _analyze_one(self, request: Request, client: str, fields: dict[str, Any]) -> Progress | None:
        ticket, queue, first = await self._start(request, client, f"analyze-{uuid.uuid4().hex}", fields, "post")
        if first is None:
            return None
        progress = Progress(fields["max_tokens"])
        if not await self._collect(request, ticket, queue, first, progress):
            return None
        if progress.error:
            raise ApiError.upstream(progress.error, "post")
        return progress

    def tasks(self, request: Request) -> Response:
        from mentallama.tasks import TASKS

        try:
            self.front.client(request)
        except Refused as refusal:
            return ApiError.of(refusal).response()
        data = [{**task.to_dict(), "is_binary": task.is_binary} for task in TASKS.values()]
        return JSONResponse(TaskList(data=data).model_dump())


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in ((400, "A field is wrong (`param` names it)"), (401, "A valid API key is required"),
                         (404, "Unknown model"), (413, "The body is too large"),
                         (429, "This client has too many requests in flight (Retry-After)"),
                         (503, "The server is overloaded or not reachable (Retry-After)"))
}  # fmt: skip


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of the /v1 routes alone (KServe /v2 stays out), with the request models that the
    routes read themselves."""
    routes = [r for r in app.routes if getattr(r, "path", "").startswith("/v1/")]
    document = get_openapi(title="MentaLLaMA OpenAI-compatible and analysis API", version="1",
                           description=__doc__, routes=routes)  # fmt: skip
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for path in document["paths"].values():  # FastAPI's 422 for path parameters: never answered, errors are 400
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for model in REQUEST_MODELS.values():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return document


def install(app: FastAPI, front: HttpFront) -> OpenAIFront:
    """Add the /v1 routes and /openapi.json to the front door's app (before its catch-all 404 route)."""
    api = OpenAIFront(front)
    stream_doc = {"text/event-stream": {"schema": {"type": "string"}}}

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def list_models(request: Request) -> Response:
        return api.models(request)

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=ERRORS)
    async def get_model(model: str, request: Request) -> Response:
        return api.models(request, model)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        openapi_extra=request_body(ChatCompletionRequest),
        responses={
            **ERRORS,
            200: {
                "content": stream_doc,
                "description": "A chat completion, or with `stream` "
                "server-sent events of ChatCompletionChunk ending in `data: [DONE]`",
            },
        },
    )
    async def chat_completions(request: Request) -> Response:
        return await api.completion(request, chat=True)

    @app.post(
        "/v1/completions",
        response_model=Completion,
        openapi_extra=request_body(CompletionRequest),
        responses={
            **ERRORS,
            200: {
                "content": stream_doc,
                "description": "A completion, or with `stream` "
                "server-sent events of Completion ending in `data: [DONE]`",
            },
        },
    )
    async def completions(request: Request) -> Response:
        return await api.completion(request, chat=False)

    @app.post(
        "/v1/analyze", response_model=AnalyzeResponse, openapi_extra=request_body(AnalyzeRequest), responses=ERRORS
    )
    async def analyze(request: Request) -> Response:
        return await api.analyze(request)

    @app.get("/v1/tasks", response_model=TaskList, responses=ERRORS)
    async def tasks(request: Request) -> Response:
        return api.tasks(request)

    document: dict[str, Any] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        if not document:
            document.update(openapi_document(app))
        return JSONResponse(document)

    return api
