"""``MentaLLaMAClient``: the blocking client (threads and blocking gRPC)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
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
from ._streaming import AnalysisStream, GenerationBuilder, GenerationStream
from ._transport import StreamEvent, SyncTransport, build_request
from ._transport_protocol import TransportProtocol
from .tasks import TaskInfo
from .types import Analysis, Generation

__all__ = ["MentaLLaMAClient"]


class MentaLLaMAClient(BaseClient[TransportProtocol]):
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

    def _make_transport(self) -> TransportProtocol:
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
        request_id, inputs = self._analysis_request(locals())
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
        request_id, inputs = self._analysis_request(locals())
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
        n: int | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Generation:
        """Send ``prompt`` as is and return the generated text (without the prompt).

        ``stream`` is the server's mode: ``False`` answers in one response, ``True`` in chunks that
        are joined here (and the result gets ``ttft_s``). The text is exactly what the server sent,
        leading space included. ``n`` sequences (``num_return_sequences``; sampled ones differ only with
        ``top_k``/``top_p`` set, greedy ones are the same) or ``beam_width`` beams come back in
        ``Generation.texts`` (the beams best first), ``text`` being the first.
        """
        request_id, inputs = self._generation_request(locals(), stream)
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
        request_id, inputs = self._generation_request(locals(), True)
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
        n: int | None = None,
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
        timeout = self._health_timeout()
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
