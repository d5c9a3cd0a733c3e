"""``AsyncMentaLLaMAClient``: the asyncio client (``grpc.aio``), same methods as the blocking one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from typing import Any

from ._base_client import (
    _PER_GENERATION_NAMES,
    AnalysisResult,
    BaseClient,
    GenerationResult,
    ResultT,
    _Answer,
    _aspects,
    _check_batch,
    _per_request_options,
)
from ._constants import DEFAULT_CONCURRENCY, DEFAULT_MAX_TOKENS
from ._exceptions import MentaLLaMAError
from ._streaming import AsyncAnalysisStream, AsyncGenerationStream, GenerationBuilder
from ._transport import AsyncTransport, StreamEvent, build_request
from ._transport_protocol import AsyncTransportProtocol
from .tasks import TaskInfo
from .types import Analysis, Generation

__all__ = ["AsyncMentaLLaMAClient"]


class AsyncMentaLLaMAClient(BaseClient[AsyncTransportProtocol]):
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

    def _make_transport(self) -> AsyncTransportProtocol:
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
        request_id, inputs = self._analysis_request(locals())
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
        request_id, inputs = self._analysis_request(locals())
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
        n: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generation:
        """See :meth:`MentaLLaMAClient.generate`."""
        request_id, inputs = self._generation_request(locals(), stream)
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
        request_id, inputs = self._generation_request(locals(), True)
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
        n: int | None = None,
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
        timeout = self._health_timeout()
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
