"""``MentaLLaMAClient`` and ``AsyncMentaLLaMAClient``: same constructor, same methods.

Both build on :class:`BaseClient`, which holds the configuration, turns arguments into ensemble
inputs and decides retries and failover; the subclasses only differ in how they wait (threads and
blocking gRPC vs. asyncio and ``grpc.aio``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any, TypeVar

from ._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    ENDPOINT_COOLDOWN,
    ENV_ENDPOINTS,
    ENV_MODEL,
)
from ._exceptions import APITimeoutError, InvalidRequestError, MentaLLaMAError
from ._retry import RetryPolicy
from ._streaming import (
    AnalysisStream,
    AsyncAnalysisStream,
    AsyncGenerationStream,
    GenerationBuilder,
    GenerationStream,
)
from ._transport import (
    AsyncTransport,
    EndpointPool,
    StreamEvent,
    SyncTransport,
    TLSConfig,
    build_request,
    is_endpoint_failure,
    normalize_endpoint,
)
from .parsing import parse_response
from .prompts import build_prompt
from .tasks import TaskInfo, get_task
from .types import Analysis, Generation

__all__ = ["AnalysisResult", "AsyncMentaLLaMAClient", "BaseClient", "GenerationResult", "MentaLLaMAClient"]

AnalysisResult = Analysis | MentaLLaMAError
"""One slot of ``analyze_many``: the analysis, or the error that request ended with."""

GenerationResult = Generation | MentaLLaMAError
"""One slot of ``generate_many``."""

PemSource = bytes | str | Path
ResultT = TypeVar("ResultT", Analysis, Generation)
_CONNECTION_OPTIONS = ("endpoints", "tls", "root_certificates", "certificate_chain", "private_key",
                       "tls_server_name")


def _endpoints_from(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        value = os.environ.get(ENV_ENDPOINTS) or DEFAULT_ENDPOINT
    items = value.split(",") if isinstance(value, str) else list(value)
    endpoints = tuple(normalize_endpoint(e) for e in items if e.strip())
    if not endpoints:
        raise ValueError("no endpoint given")
    return endpoints


# Keyword arguments of the public methods that are ensemble inputs under the same name; the methods
# pass ``locals()`` so that the long signatures (kept explicit for IDEs and ``help()``) cannot drift
# from what is sent.
_ANALYSIS_SAMPLING_NAMES = ("temperature", "top_k", "top_p", "seed", "repetition_penalty", "presence_penalty",
                            "frequency_penalty", "min_tokens", "stop_words", "bad_words")  # fmt: skip
_SAMPLING_NAMES = (*_ANALYSIS_SAMPLING_NAMES, "end_id", "pad_id", "beam_width")  # generate() takes these too
# Keyword arguments of ``analyze_many`` passed on to each ``analyze``.
_PER_REQUEST_NAMES = ("max_tokens", "chat", "system_prompt", *_ANALYSIS_SAMPLING_NAMES, "timeout")
# Keyword arguments of ``generate_many`` passed on to each ``generate``.
_PER_GENERATION_NAMES = ("max_tokens", "stream", *_SAMPLING_NAMES, "timeout")


def _sampling(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The optional ensemble inputs that were given (``None`` means "server default")."""
    return {name: arguments[name] for name in _SAMPLING_NAMES if arguments.get(name) is not None}


def _per_request_options(
    arguments: Mapping[str, Any], names: Sequence[str] = _PER_REQUEST_NAMES
) -> dict[str, Any]:
    return {name: arguments[name] for name in names}


def _aspects(aspect: str | Sequence[str | None] | None, count: int) -> list[str | None]:
    if aspect is None or isinstance(aspect, str):
        return [aspect] * count
    aspects = list(aspect)
    if len(aspects) != count:
        raise ValueError(f"aspect has {len(aspects)} values for {count} posts")
    return aspects


def _check_batch(task: str | TaskInfo, aspect: str | Sequence[str | None] | None) -> None:
    """Raise :class:`InvalidRequestError` once, before sending, for a task (or a single aspect) that
    would be wrong for every post; per-post aspects stay per-post errors."""
    try:
        info = get_task(task)
        if aspect is None or isinstance(aspect, str):
            info.question_for(aspect)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(str(exc)) from None


def _new_request_id() -> str:
    return uuid.uuid4().hex


class _Answer:
    """The answer of a call that returns it whole (``analyze``, ``generate``): nothing reaches the caller
    before the final response, so a request whose stream broke can start over on another endpoint."""

    def __init__(self, request_id: str, max_tokens: int, streamed: bool) -> None:
        self.builder = GenerationBuilder(request_id, max_tokens, streamed=streamed)

    def restart(self) -> None:
        old = self.builder
        self.builder = GenerationBuilder(old.request_id, old.max_tokens, streamed=old.streamed)
        self.builder.started = old.started  # latency and ttft count from the caller's call


class BaseClient:
    """Configuration, request preparation and the retry/failover decisions of both clients.

    Parameters
    ----------
    endpoints: one ``host:port`` (or a comma-separated string) or several; requests go round robin
        and an endpoint that cannot be reached is skipped for ``endpoint_cooldown`` seconds. Falls
        back to ``$MENTALLAMA_ENDPOINTS``, then ``localhost:8001``.
    model: served model name; ``$MENTALLAMA_MODEL``, then ``"mentallama"``.
    timeout: seconds allowed for each call, retries included (``None``: no deadline).
    max_retries: retries of a request that failed with UNAVAILABLE or RESOURCE_EXHAUSTED before
        any response arrived (capped exponential backoff with jitter). Trying another endpoint
        after a connection failure is not counted. ``analyze``/``generate`` (and their ``_many``
        forms), which hand out nothing before the final response, also send a request again as a
        whole when its stream broke midway (server killed, connection cut); streams never do.
    tls: use TLS; implied by any of the certificate options.
    root_certificates, certificate_chain, private_key: PEM bytes or file paths (CA bundle; client
        certificate and key for mutual TLS).
    tls_server_name: name to check the server certificate against, if not the endpoint's host.
    headers: gRPC metadata sent with every call (e.g. a proxy's authorization header).
    retry_policy: replaces the default :class:`RetryPolicy` built from ``max_retries``.
    endpoint_cooldown: seconds an unreachable endpoint is skipped before it is tried again.

    Every request carries a request id (a generated uuid unless given), sent as Triton's request
    id and attached to every error. ``with_options(**changes)`` returns a configured copy.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        model: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        tls: bool | None = None,
        root_certificates: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        tls_server_name: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
        endpoint_cooldown: float = ENDPOINT_COOLDOWN,
    ) -> None:
        self.endpoints = _endpoints_from(endpoints)
        self.model = model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
        self.timeout = timeout
        self.max_retries = max_retries
        self.headers = dict(headers or {})
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self.endpoint_cooldown = endpoint_cooldown
        cert_given = any(v is not None for v in (root_certificates, certificate_chain, private_key))
        if tls is False and cert_given:
            raise ValueError("certificates were given but tls=False")
        self.tls = bool(tls) or cert_given
        self._tls_config = (
            TLSConfig.from_options(root_certificates, certificate_chain, private_key, tls_server_name)
            if self.tls
            else None
        )
        self._options: dict[str, Any] = {
            "endpoints": self.endpoints, "model": self.model, "timeout": timeout, "max_retries": max_retries,
            "tls": tls, "root_certificates": root_certificates, "certificate_chain": certificate_chain,
            "private_key": private_key, "tls_server_name": tls_server_name, "headers": self.headers,
            "retry_policy": retry_policy, "endpoint_cooldown": endpoint_cooldown,
        }  # fmt: skip
        self._pool = EndpointPool(self.endpoints, endpoint_cooldown)
        self._transport = self._make_transport()
        self._owns_transport = True

    def _make_transport(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(endpoints={list(self.endpoints)!r}, model={self.model!r}, tls={self.tls})"

    # --- request preparation (shared) ---

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = self.timeout if timeout is None else timeout
        return None if seconds is None else time.monotonic() + seconds

    def _analysis_inputs(
        self, post: str, task: str | TaskInfo, aspect: str | None, chat: bool, system_prompt: str | None,
        max_tokens: int, request_id: str, sampling: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        try:
            prompt = build_prompt(task, post, aspect=aspect, chat=chat, system_prompt=system_prompt)
        except (ValueError, TypeError) as exc:  # caught before sending: same error type as the server's
            raise InvalidRequestError(str(exc), request_id=request_id) from None
        return self._generation_inputs(prompt, max_tokens, True, request_id, sampling)

    @staticmethod
    def _generation_inputs(
        prompt: str, max_tokens: int, stream: bool, request_id: str, sampling: dict[str, Any]
    ) -> dict[str, Any]:
        if not isinstance(prompt, str):
            message = f"prompt must be a str, not {type(prompt).__name__}"
            raise InvalidRequestError(message, request_id=request_id)
        return {
            "text_input": prompt,
            "max_tokens": max_tokens,
            "stream": stream,
            "exclude_input_in_output": True,
            "return_num_input_tokens": True,
            "return_num_output_tokens": True,
            **sampling,
        }

    @staticmethod
    def _to_analysis(task: str | TaskInfo) -> Callable[[Generation], Analysis]:
        # The first token keeps its leading space (text_output is what the tokens add after the
        # prompt); the label parser and users want the answer as written.
        def convert(generation: Generation) -> Analysis:
            return parse_response(task, generation.text.lstrip()).with_generation(generation)

        return convert

    # --- retry / failover (shared decisions) ---

    def _next_endpoint(
        self, error: MentaLLaMAError, endpoint: str, tried: set[str], received: int, retries: int,
        deadline: float | None,
    ) -> tuple[str, float | None] | None:  # fmt: skip
        """Where to try again and the backoff before it (``None``: a free failover, not a retry),
        or ``None`` to give up with ``error``."""
        if is_endpoint_failure(error):
            self._pool.mark_down(endpoint)
        policy = self.retry_policy
        if not policy.retryable(error, responses_received=received):
            return None
        candidate = self._pool.pick(exclude=tuple(tried))
        if candidate not in tried and self._pool.is_up(candidate):
            return candidate, None  # failover to an endpoint not tried yet: immediate, not a retry
        if not policy.should_retry(error, responses_received=received, retries_done=retries):
            return None
        delay = policy.delay(retries)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return self._pool.pick(), delay

    def _resend_whole(self, error: MentaLLaMAError, received: int, on_resend: Callable[[], None] | None) -> int:
        """Responses that count against retrying ``error``: 0 once a broken, partly answered request is
        to be sent again as a whole (its partial answer was never handed out, so nothing is duplicated)."""
        if received and on_resend is not None and self.retry_policy.resendable(error):
            on_resend()
            return 0
        return received

    def _timeout_left(self, deadline: float | None, request_id: str) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise APITimeoutError("deadline exceeded before the request could be sent", request_id=request_id)
        return left

    def copy(self, **overrides: Any) -> Any:
        """A client with these constructor options changed; it shares connections when it can."""
        unknown = set(overrides) - set(self._options)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        clone = type(self)(**{**self._options, **overrides})
        if not any(name in overrides for name in _CONNECTION_OPTIONS):
            clone._transport, clone._pool, clone._owns_transport = self._transport, self._pool, False
        return clone

    with_options = copy


class MentaLLaMAClient(BaseClient):
    """Blocking client. Thread-safe: ``analyze_many`` fans out over a thread pool.

    Usage::

        from mentallama import MentaLLaMAClient

        with MentaLLaMAClient("localhost:8001") as client:
            result = client.analyze("I can't sleep and nothing matters anymore.", task="depression")
            print(result.label, result.reasoning)

            with client.analyze_stream(post, task="stress") as stream:
                for delta in stream:
                    print(delta, end="", flush=True)
            print(stream.final().label)

    See :class:`BaseClient` for the parameters.
    """

    _transport: SyncTransport

    def _make_transport(self) -> SyncTransport:
        return SyncTransport(self._tls_config)

    # --- plumbing ---

    def _events(self, inputs: dict[str, Any], request_id: str, timeout: float | None,
                on_resend: Callable[[], None] | None = None) -> Generator[StreamEvent, None, None]:  # fmt: skip
        """Events of one request, with failover and retries before the first response.

        With ``on_resend`` (callers that hand out nothing before the final response), a stream that
        broke after responses arrived is sent again as a whole: ``on_resend()`` drops what came so far.
        """
        deadline = self._deadline(timeout)
        request = build_request(self.model, request_id, inputs)
        endpoint, tried, retries = self._pool.pick(), set(), 0
        while True:
            tried.add(endpoint)
            received = 0
            left = self._timeout_left(deadline, request_id)
            stream = self._transport.stream(endpoint, request, timeout=left, headers=self.headers)
            with closing(stream):
                try:
                    for event in stream:
                        received += 1
                        yield event
                    self._pool.mark_up(endpoint)
                    return
                except MentaLLaMAError as error:
                    received = self._resend_whole(error, received, on_resend)
                    decision = self._next_endpoint(error, endpoint, tried, received, retries, deadline)
                    if decision is None:
                        raise
            endpoint, delay = decision
            if delay is not None:
                retries += 1
                tried.clear()
                time.sleep(delay)

    def _run(self, inputs: dict[str, Any], request_id: str, timeout: float | None,
             streamed: bool) -> Generation:  # fmt: skip
        answer = _Answer(request_id, inputs["max_tokens"], streamed)
        for event in self._events(inputs, request_id, timeout, on_resend=answer.restart):
            answer.builder.add(event)
        return answer.builder.build()

    # --- analyses ---

    def analyze(
        self,
        post: str,
        task: str | TaskInfo,
        *,
        aspect: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chat: bool = False,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Analysis:
        """Analyse ``post`` for ``task`` (name or alias, see ``mentallama tasks``).

        The prompt is the IMHI query (``chat=True`` wraps it in the LLaMA-2 chat format); sampling
        options left at ``None`` use the server's defaults (greedy decoding). The answer is streamed
        from the server and assembled here, so the result carries the time to first token along
        with the parsed label and explanation, token counts, latency and the request id.
        Raises :class:`InvalidRequestError` (bad post, task, aspect or option),
        :class:`APITimeoutError`, :class:`APIConnectionError` or :class:`ServerError`.
        """
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._analysis_inputs(post, task, aspect, chat, system_prompt, max_tokens, request_id,
                                       sampling)  # fmt: skip
        return self._to_analysis(task)(self._run(inputs, request_id, timeout, streamed=True))

    def analyze_stream(
        self,
        post: str,
        task: str | TaskInfo,
        *,
        aspect: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chat: bool = False,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AnalysisStream:
        """Like :meth:`analyze`, but yields the answer's text as it is generated.

        Use it as ``with client.analyze_stream(...) as stream: for delta in stream: ...``, then
        ``stream.final()`` for the :class:`Analysis`. Leaving the block early cancels the request
        on the server. Nothing is sent until the first delta is requested.
        """
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._analysis_inputs(post, task, aspect, chat, system_prompt, max_tokens, request_id,
                                       sampling)  # fmt: skip
        builder = GenerationBuilder(request_id, max_tokens, streamed=True)
        events = self._events(inputs, request_id, timeout)
        return AnalysisStream(events, builder, self._to_analysis(task), strip_leading=True)

    def analyze_many(
        self,
        posts: Iterable[str],
        task: str | TaskInfo,
        *,
        aspect: str | Sequence[str | None] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[int, AnalysisResult], None] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chat: bool = False,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> list[AnalysisResult]:
        """Analyse many posts, ``concurrency`` requests at a time.

        Returns one slot per post, in input order: the :class:`Analysis`, or the
        :class:`MentaLLaMAError` that request ended with (one failure does not lose the others;
        check with ``isinstance(result, MentaLLaMAError)``). ``aspect`` is one value for all posts
        or one per post. ``on_result(index, result)`` is called as each request completes (for
        progress bars), from the calling thread. ``timeout`` applies to each request.

        Raises :class:`InvalidRequestError` once, before sending anything, when ``task`` (or a
        single ``aspect``) is wrong for every post.
        """
        items = list(posts)
        _check_batch(task, aspect)
        aspects = _aspects(aspect, len(items))
        options = _per_request_options(locals())
        return self._map(lambda i: self.analyze(items[i], task, aspect=aspects[i], **options),
                         len(items), concurrency, on_result)  # fmt: skip

    def _map(self, call: Callable[[int], ResultT], count: int, concurrency: int,
             on_result: Callable[[int, ResultT | MentaLLaMAError], None] | None,
             ) -> list[ResultT | MentaLLaMAError]:  # fmt: skip
        """``call(i)`` for every index on a thread pool; each slot holds the result or the error."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")

        def one(index: int) -> ResultT | MentaLLaMAError:
            try:
                return call(index)
            except MentaLLaMAError as error:
                return error

        results: list[Any] = [None] * count
        workers = min(concurrency, max(1, count))
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mentallama")
        try:
            futures = {executor.submit(one, i): i for i in range(count)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return results

    # --- raw generation ---

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        end_id: int | None = None,
        pad_id: int | None = None,
        beam_width: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generation:
        """Send ``prompt`` as is and return the generated text (without the prompt).

        ``stream`` is the server's mode: ``False`` answers in one response, ``True`` in chunks that
        are joined here (and the result gets ``ttft_s``). The text is exactly what the server sent,
        leading space included.
        """
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._generation_inputs(prompt, max_tokens, stream, request_id, sampling)
        return self._run(inputs, request_id, timeout, streamed=stream)

    def generate_stream(
        self,
        prompt: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        end_id: int | None = None,
        pad_id: int | None = None,
        beam_width: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> GenerationStream:
        """Stream the text generated for ``prompt``; ``stream.final()`` gives the :class:`Generation`."""
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._generation_inputs(prompt, max_tokens, True, request_id, sampling)
        builder = GenerationBuilder(request_id, max_tokens, streamed=True)
        return GenerationStream(self._events(inputs, request_id, timeout), builder, lambda g: g)

    def generate_many(
        self,
        prompts: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[int, GenerationResult], None] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        end_id: int | None = None,
        pad_id: int | None = None,
        beam_width: int | None = None,
        timeout: float | None = None,
    ) -> list[GenerationResult]:
        """:meth:`generate` for many prompts, ``concurrency`` at a time; slots in input order hold the
        :class:`Generation` or the :class:`MentaLLaMAError` of that request (see :meth:`analyze_many`)."""
        items = list(prompts)
        options = _per_request_options(locals(), _PER_GENERATION_NAMES)
        return self._map(lambda i: self.generate(items[i], **options), len(items), concurrency, on_result)

    # --- lifecycle ---

    def health(self) -> bool:
        """True when at least one endpoint is live and ready and serves the model (never raises)."""
        timeout = self.timeout if self.timeout is not None else DEFAULT_TIMEOUT
        return any(self._transport.health(e, self.model, timeout=timeout, headers=self.headers)
                   for e in self.endpoints)  # fmt: skip

    def close(self) -> None:
        """Close the connections (copies made with ``with_options`` share them and close nothing)."""
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> MentaLLaMAClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncMentaLLaMAClient(BaseClient):
    """asyncio client with the same methods as :class:`MentaLLaMAClient` (awaitable).

    Usage::

        async with AsyncMentaLLaMAClient("localhost:8001") as client:
            result = await client.analyze(post, task="depression")
            async with client.analyze_stream(post, task="stress") as stream:
                async for delta in stream:
                    print(delta, end="")
            print((await stream.final()).label)

    Cancelling the task that awaits a call (or iterates a stream) cancels the request on the
    server. See :class:`BaseClient` for the parameters.
    """

    _transport: AsyncTransport

    def _make_transport(self) -> AsyncTransport:
        return AsyncTransport(self._tls_config)

    # --- plumbing ---

    async def _events(self, inputs: dict[str, Any], request_id: str, timeout: float | None,
                      on_resend: Callable[[], None] | None = None,
                      ) -> AsyncGenerator[StreamEvent, None]:  # fmt: skip
        """See :meth:`MentaLLaMAClient._events`."""
        deadline = self._deadline(timeout)
        request = build_request(self.model, request_id, inputs)
        endpoint, tried, retries = self._pool.pick(), set(), 0
        while True:
            tried.add(endpoint)
            received = 0
            left = self._timeout_left(deadline, request_id)
            stream = self._transport.stream(endpoint, request, timeout=left, headers=self.headers)
            async with aclosing(stream):
                try:
                    async for event in stream:
                        received += 1
                        yield event
                    self._pool.mark_up(endpoint)
                    return
                except MentaLLaMAError as error:
                    received = self._resend_whole(error, received, on_resend)
                    decision = self._next_endpoint(error, endpoint, tried, received, retries, deadline)
                    if decision is None:
                        raise
            endpoint, delay = decision
            if delay is not None:
                retries += 1
                tried.clear()
                await asyncio.sleep(delay)

    async def _run(self, inputs: dict[str, Any], request_id: str, timeout: float | None,
                   streamed: bool) -> Generation:  # fmt: skip
        answer = _Answer(request_id, inputs["max_tokens"], streamed)
        events = self._events(inputs, request_id, timeout, on_resend=answer.restart)
        async with aclosing(events):
            async for event in events:
                answer.builder.add(event)
        return answer.builder.build()

    # --- analyses ---

    async def analyze(
        self,
        post: str,
        task: str | TaskInfo,
        *,
        aspect: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chat: bool = False,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Analysis:
        """See :meth:`MentaLLaMAClient.analyze`."""
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._analysis_inputs(post, task, aspect, chat, system_prompt, max_tokens, request_id,
                                       sampling)  # fmt: skip
        return self._to_analysis(task)(await self._run(inputs, request_id, timeout, streamed=True))

    def analyze_stream(
        self,
        post: str,
        task: str | TaskInfo,
        *,
        aspect: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chat: bool = False,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncAnalysisStream:
        """See :meth:`MentaLLaMAClient.analyze_stream` (``async with`` / ``async for``, ``await final()``)."""
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._analysis_inputs(post, task, aspect, chat, system_prompt, max_tokens, request_id,
                                       sampling)  # fmt: skip
        builder = GenerationBuilder(request_id, max_tokens, streamed=True)
        events = self._events(inputs, request_id, timeout)
        return AsyncAnalysisStream(events, builder, self._to_analysis(task), strip_leading=True)

    async def analyze_many(
        self,
        posts: Iterable[str],
        task: str | TaskInfo,
        *,
        aspect: str | Sequence[str | None] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[int, AnalysisResult], None] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chat: bool = False,
        system_prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> list[AnalysisResult]:
        """See :meth:`MentaLLaMAClient.analyze_many`. Cancelling it cancels the requests in flight."""
        items = list(posts)
        _check_batch(task, aspect)
        aspects = _aspects(aspect, len(items))
        options = _per_request_options(locals())
        return await self._map(lambda i: self.analyze(items[i], task, aspect=aspects[i], **options),
                               len(items), concurrency, on_result)  # fmt: skip

    async def _map(self, call: Callable[[int], Awaitable[ResultT]], count: int, concurrency: int,
                   on_result: Callable[[int, ResultT | MentaLLaMAError], None] | None,
                   ) -> list[ResultT | MentaLLaMAError]:  # fmt: skip
        """``await call(i)`` for every index, ``concurrency`` at a time; slots hold results or errors."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        results: list[Any] = [None] * count
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                try:
                    result: ResultT | MentaLLaMAError = await call(index)
                except MentaLLaMAError as error:
                    result = error
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for pending in tasks:  # an error or a cancellation of the whole batch stops the rest
                pending.cancel()
        return results

    # --- raw generation ---

    async def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        end_id: int | None = None,
        pad_id: int | None = None,
        beam_width: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generation:
        """See :meth:`MentaLLaMAClient.generate`."""
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._generation_inputs(prompt, max_tokens, stream, request_id, sampling)
        return await self._run(inputs, request_id, timeout, streamed=stream)

    def generate_stream(
        self,
        prompt: str,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        end_id: int | None = None,
        pad_id: int | None = None,
        beam_width: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerationStream:
        """See :meth:`MentaLLaMAClient.generate_stream`."""
        request_id = request_id or _new_request_id()
        sampling = _sampling(locals())
        inputs = self._generation_inputs(prompt, max_tokens, True, request_id, sampling)
        builder = GenerationBuilder(request_id, max_tokens, streamed=True)
        return AsyncGenerationStream(self._events(inputs, request_id, timeout), builder, lambda g: g)

    async def generate_many(
        self,
        prompts: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[int, GenerationResult], None] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stream: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_tokens: int | None = None,
        stop_words: Sequence[str] | None = None,
        bad_words: Sequence[str] | None = None,
        end_id: int | None = None,
        pad_id: int | None = None,
        beam_width: int | None = None,
        timeout: float | None = None,
    ) -> list[GenerationResult]:
        """See :meth:`MentaLLaMAClient.generate_many`."""
        items = list(prompts)
        options = _per_request_options(locals(), _PER_GENERATION_NAMES)
        return await self._map(lambda i: self.generate(items[i], **options),
                               len(items), concurrency, on_result)  # fmt: skip

    # --- lifecycle ---

    async def health(self) -> bool:
        """See :meth:`MentaLLaMAClient.health`."""
        timeout = self.timeout if self.timeout is not None else DEFAULT_TIMEOUT
        checks = [self._transport.health(e, self.model, timeout=timeout, headers=self.headers)
                  for e in self.endpoints]  # fmt: skip
        return any(await asyncio.gather(*checks))

    async def close(self) -> None:
        """See :meth:`MentaLLaMAClient.close`."""
        if self._owns_transport:
            await self._transport.close()

    async def __aenter__(self) -> AsyncMentaLLaMAClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

