"""Pydantic models of the `/v1` routes: what the front door accepts and answers, and the OpenAPI document.

Request models allow extra fields so the routes can say which field is wrong in OpenAI's error shape (an
unknown field is refused naming it, unless it is one that clients commonly send and that changes nothing here:
`openai_api.IGNORED_FIELDS`). Field names and shapes follow OpenAI's API reference; `top_k`, `min_tokens` and
`repetition_penalty` are vLLM's extensions of it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UINT64_MAX = 2**64 - 1
MAX_STOP = 16


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = Field(None, description="A last chunk (empty `choices`) carries `usage`.")


class ContentPart(_Open):
    type: str = Field(description="Only `text` is served (MentaLLaMA is a text model).")
    text: str | None = None


class ChatMessage(_Open):
    role: str = Field(description="`system` (or `developer`), `user` or `assistant`.")
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, description="Accepted and ignored (the chat template has no names).")


class _Sampling(_Open):
    """Fields both completion routes share."""

    model: str = Field(description="The served model: `mentallama` (GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="Tokens to generate at most (256).")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="0: greedy. Omitted with `top_p` and `top_k`: greedy (the server's default)."
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=UINT64_MAX, description="Same seed and settings: same text.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} strings that end the generation.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, strict=True, description="Choices to return, up to the server's max_sequences "
                          "(4 by default): one request whose engine samples n sequences of the prompt (greedy "
                          "ones are n copies).")  # fmt: skip
    user: str | None = Field(None, description="Accepted and ignored.")
    top_k: int | None = Field(None, ge=0, le=2**31 - 1, description="vLLM's extension; 0: off.")
    min_tokens: int | None = Field(None, ge=0, le=2**31 - 1, description="vLLM's extension.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0, description="vLLM's extension.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1, description="Wins over `max_tokens`.")
    logprobs: bool | None = Field(False, description="Not served: the engine's log probabilities carry no tokens.")
    top_logprobs: int | None = Field(None, description="Not served (no alternatives are computed).")


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="The prompt text as is (no template); a list of one prompt.")
    logprobs: int | None = Field(None, description="Not served: the engine's log probabilities carry no tokens.")
    echo: bool | None = Field(False, description="Not served.")
    best_of: int | None = Field(None, ge=1, strict=True, description="Sequences sampled, >= n and up to the "
                                "server's max_sequences; the n with the highest log probability per token are "
                                "returned (not streamed when above n). Every one counts in `usage`.")  # fmt: skip
    suffix: str | None = Field(None, description="Not served (no fill-in-the-middle).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "stopped"]
FINISH_HELP = ("`stop` (end of sequence or a stop string), `length` (max_tokens reached), `stopped` (ended early "
               "by an in-band stop, so the text is cut)")  # fmt: skip


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason = Field(description=FINISH_HELP)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion (the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = Field(None, description=FINISH_HELP)


class Completion(BaseModel):
    """A completion, or one `data:` event of a streamed one (`usage` then only on the include_usage chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


MAX_POSTS = 32


class AnalyzeRequest(_Open):
    post: str | list[str] = Field(description=f"One post, or a list of up to {MAX_POSTS}.")
    task: str = Field(description="An IMHI task name or alias (GET /v1/tasks).")
    aspect: str | None = Field(None, description="Irf: the risk; MultiWD: the wellness dimension.")
    model: str | None = Field(None, description="`mentallama` (the default).")
    max_tokens: int = Field(256, ge=1, le=2**31 - 1)
    chat: bool = Field(False, description="Wrap the IMHI query in the LLaMA-2 chat format.")
    system_prompt: str | None = Field(None, description="The system block (needs `chat`).")
    temperature: float | None = Field(None, ge=0.0, description="As the SDK: omitted sampling = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    seed: int | None = Field(None, ge=0, le=UINT64_MAX)


class AnalyzeResult(BaseModel):
    label: str | None = Field(description="One of the task's labels, or null when the answer does not say.")
    label_source: Literal["stated", "inferred"] | None
    confidence: float | None = Field(description="The label model's probability of the label (tasks with a label "
                                     "model); low on a stated label: the explanation argues otherwise.")
    conflict: bool = Field(False, description="The label is stated but the explanation argues for another one.")
    off_task: str | None = Field(None, description="The subject of another task the answer's verdict is about "
                                 "(e.g. `stress` when asked about loneliness); that verdict is not this task's label.")
    note: str | None = Field(None, description="A plain sentence when the answer is off-task or conflicts.")
    reasoning: str
    raw_text: str
    finish_reason: FinishReason | None = Field(description=FINISH_HELP)
    usage: Usage | None


class AnalyzeResponse(BaseModel):
    object: Literal["analysis"] = "analysis"
    model: str
    task: str
    aspect: str | None
    results: list[AnalyzeResult] = Field(description="One per post, in the order given.")


class TaskCard(BaseModel):
    name: str
    aliases: list[str]
    question: str
    labels: list[str]
    aspects: list[str]
    description: str
    is_binary: bool


class TaskList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskCard]


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/analyze": AnalyzeRequest,
}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its body itself (bounded, depth-checked) instead of FastAPI."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
