"""Streams of text deltas that clean up after themselves.

``Stream`` / ``AsyncStream`` are iterators of ``str`` deltas and (async) context managers. Leaving
the ``with`` block early, ``break`` followed by ``close()``, or cancelling the task closes the
underlying generator, whose ``finally`` cancels the gRPC call: the server stops generating for that
request. After the loop, ``final()`` returns the whole result (an :class:`Analysis` or a
:class:`Generation`) with token counts, latency and time to first token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Generic, TypeVar

from ._transport import StreamEvent
from .types import Analysis, Generation

__all__ = ["AnalysisStream", "AsyncAnalysisStream", "AsyncGenerationStream", "AsyncStream",
           "GenerationBuilder", "GenerationStream", "Stream"]

ResultT = TypeVar("ResultT", Analysis, Generation)


class GenerationBuilder:
    """Collects the events of one request into a :class:`Generation`."""

    def __init__(self, request_id: str, max_tokens: int, *, streamed: bool) -> None:
        self.request_id = request_id
        self.max_tokens = max_tokens
        self.streamed = streamed
        self.started = time.perf_counter()
        self.parts: list[str] = []
        self.first_text_at: float | None = None
        self.last_at: float | None = None
        self.num_input_tokens: int | None = None
        self.num_output_tokens: int | None = None
        self.finished = False
        self.sequences: dict[int, list[str]] = {}  # text parts of every sequence (``n``), by sequence_index
        self.beams: tuple[str, ...] = ()  # the latest whole beams (each beam response replaces the last)

    def restart_clock(self) -> None:
        """Start timing now (a stream is timed from its first read, when the request is sent)."""
        self.started = time.perf_counter()

    def add(self, event: StreamEvent) -> str:
        """Record ``event``; returns the text it adds."""
        now = time.perf_counter()
        self.last_at = now
        if event.text and self.first_text_at is None:
            self.first_text_at = now
        added = ""
        if event.texts:  # whole beams, replacing the last ones: no delta to stream
            self.beams = event.texts
        elif event.text:
            self.sequences.setdefault(event.sequence_index, []).append(event.text)
            if event.sequence_index == 0:  # a stream's deltas are its first sequence's
                self.parts.append(event.text)
                added = event.text
        if event.num_input_tokens is not None:
            self.num_input_tokens = event.num_input_tokens
        if event.num_output_tokens is not None:
            self.num_output_tokens = event.num_output_tokens
        self.finished = self.finished or event.final
        return added

    def finish_reason(self) -> str | None:
        if not self.finished:
            return "cancelled"
        if self.num_output_tokens is None:
            # Every request asks for the count, and the server sends it with the last text; a final response
            # without it ended a request that a `stop` cut short (another stream of this client's, say).
            return "stopped"
        # The ensemble interface has no finish reason; a full budget is the only sign of truncation.
        return "length" if self.num_output_tokens >= self.max_tokens else "stop"

    def build(self) -> Generation:
        end = self.last_at if self.finished and self.last_at is not None else time.perf_counter()
        ttft = None
        if self.streamed and self.first_text_at is not None:
            ttft = self.first_text_at - self.started
        if self.beams:
            texts = self.beams
        elif len(self.sequences) > 1:
            texts = tuple("".join(self.sequences[i]) for i in sorted(self.sequences))
        else:
            texts = ()
        return Generation(
            text=texts[0] if texts else "".join(self.parts),
            texts=texts,
            request_id=self.request_id,
            num_input_tokens=self.num_input_tokens,
            num_output_tokens=self.num_output_tokens,
            latency_s=end - self.started,
            ttft_s=ttft,
            finish_reason=self.finish_reason(),
        )


class _StreamState(Generic[ResultT]):
    """What the sync and async streams share: delta bookkeeping and the final result."""

    def __init__(
        self, builder: GenerationBuilder, convert: Callable[[Generation], ResultT], *, strip_leading: bool
    ) -> None:
        self._builder = builder
        self._convert = convert
        self._strip_leading = strip_leading  # analyses drop the first token's leading space
        self._started = False
        self._sent = False
        self._done = False
        self._closed = False
        self._error: BaseException | None = None
        self._result: ResultT | None = None

    @property
    def request_id(self) -> str:
        """Id the request was sent with."""
        return self._builder.request_id

    def _begin(self) -> None:
        if not self._sent:
            self._sent = True
            self._builder.restart_clock()

    def _delta(self, event: StreamEvent) -> str:
        delta = self._builder.add(event)
        if self._strip_leading and not self._started:
            delta = delta.lstrip()
        if delta:
            self._started = True
        return delta

    def _fail(self, exc: BaseException) -> None:
        # Errors are kept for final(); a cancelled task or an interrupt is a stop by the caller, after
        # which final() gives the partial result like close() does.
        self._closed = True
        if isinstance(exc, Exception):
            self._error = exc

    def _finished_result(self) -> ResultT | None:
        if self._error is not None:
            raise self._error
        if not (self._done or self._closed):
            return None
        if self._result is None:
            self._result = self._convert(self._builder.build())
        return self._result


class Stream(_StreamState[ResultT]):
    """Iterator of text deltas of one generation; a context manager that cancels it when left early."""

    def __init__(
        self,
        events: Generator[StreamEvent, None, None],
        builder: GenerationBuilder,
        convert: Callable[[Generation], ResultT],
        *,
        strip_leading: bool = False,
    ) -> None:
        super().__init__(builder, convert, strip_leading=strip_leading)
        self._events = events

    def __iter__(self) -> Stream[ResultT]:
        return self

    def __next__(self) -> str:
        self._begin()
        while not (self._done or self._closed):
            try:
                event = next(self._events)
            except StopIteration:
                self._done = True
                break
            except BaseException as exc:
                self._fail(exc)
                raise
            delta = self._delta(event)
            if delta:
                return delta
        raise StopIteration

    def __enter__(self) -> Stream[ResultT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading; cancels the request on the server if it is still generating."""
        if not (self._done or self._closed):
            self._closed = True
            self._events.close()

    def final(self) -> ResultT:
        """The whole result: reads what is left first; after an early close, the partial result
        (``finish_reason="cancelled"``). Re-raises the error that ended the stream, if any."""
        for _ in self:
            pass
        result = self._finished_result()
        assert result is not None
        return result


class AnalysisStream(Stream[Analysis]):
    """Deltas of an analysis; leading whitespace of the answer is dropped, as in ``Analysis.raw``."""

    @property
    def analysis(self) -> Analysis:
        """Same as :meth:`final`."""
        return self.final()


class GenerationStream(Stream[Generation]):
    """Deltas of a raw generation, exactly as the server sent them."""

    @property
    def generation(self) -> Generation:
        """Same as :meth:`final`."""
        return self.final()


class AsyncStream(_StreamState[ResultT]):
    """Async iterator of text deltas; an async context manager that cancels the request when left early.

    Cancelling the task that iterates it cancels the request on the server too.
    """

    def __init__(
        self,
        events: AsyncGenerator[StreamEvent, None],
        builder: GenerationBuilder,
        convert: Callable[[Generation], ResultT],
        *,
        strip_leading: bool = False,
    ) -> None:
        super().__init__(builder, convert, strip_leading=strip_leading)
        self._events = events

    def __aiter__(self) -> AsyncStream[ResultT]:
        return self

    async def __anext__(self) -> str:
        self._begin()
        while not (self._done or self._closed):
            try:
                event = await self._events.__anext__()
            except StopAsyncIteration:
                self._done = True
                break
            except BaseException as exc:
                self._fail(exc)
                raise
            delta = self._delta(event)
            if delta:
                return delta
        raise StopAsyncIteration

    async def __aenter__(self) -> AsyncStream[ResultT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading; cancels the request on the server if it is still generating."""
        if not (self._done or self._closed):
            self._closed = True
            await self._events.aclose()

    async def final(self) -> ResultT:
        """The whole result: reads what is left first; after an early close, the partial result
        (``finish_reason="cancelled"``). Re-raises the error that ended the stream, if any."""
        async for _ in self:
            pass
        result = self._finished_result()
        assert result is not None
        return result

    def _require_finished(self) -> ResultT:
        result = self._finished_result()
        if result is None:
            raise RuntimeError("the stream is still open: iterate it to the end or `await stream.final()`")
        return result


class AsyncAnalysisStream(AsyncStream[Analysis]):
    """Deltas of an analysis; leading whitespace of the answer is dropped, as in ``Analysis.raw``."""

    @property
    def analysis(self) -> Analysis:
        """The final analysis once the stream is exhausted or closed (``await final()`` otherwise)."""
        return self._require_finished()


class AsyncGenerationStream(AsyncStream[Generation]):
    """Deltas of a raw generation, exactly as the server sent them."""

    @property
    def generation(self) -> Generation:
        """The final generation once the stream is exhausted or closed (``await final()`` otherwise)."""
        return self._require_finished()
