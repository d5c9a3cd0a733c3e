"""What ``MentaLLaMAClient`` and ``AsyncMentaLLaMAClient`` share: :class:`BaseClient`.

It holds the configuration, turns arguments into ensemble inputs and decides retries and failover;
the two clients (``_sync_client``, ``_async_client``) only differ in how they wait (threads and
blocking gRPC vs. asyncio and ``grpc.aio``) and talk to the server through their transport.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from ._constants import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    ENDPOINT_COOLDOWN,
    ENV_ENDPOINTS,
    ENV_MODEL,
)
from ._exceptions import APITimeoutError, InvalidRequestError, MentaLLaMAError
from ._retry import RetryPolicy
from ._streaming import GenerationBuilder
from ._transport import EndpointPool, TLSConfig, is_endpoint_failure, normalize_endpoint
from ._transport_protocol import TransportT
from .parsing import parse_response
from .prompts import build_prompt
from .tasks import TaskInfo, get_task
from .types import Analysis, Generation

__all__ = ["AnalysisResult", "BaseClient", "GenerationResult"]

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
_SAMPLING_NAMES = (*_ANALYSIS_SAMPLING_NAMES, "end_id", "pad_id", "beam_width", "n")  # generate() takes these too
# Keyword arguments named otherwise than their ensemble input (OpenAI's and vLLM's `n`).
_INPUT_OF = {"n": "num_return_sequences"}
# Keyword arguments of ``analyze_many`` passed on to each ``analyze``.
_PER_REQUEST_NAMES = ("max_tokens", "chat", "system_prompt", *_ANALYSIS_SAMPLING_NAMES, "timeout")
# Keyword arguments of ``generate_many`` passed on to each ``generate``.
_PER_GENERATION_NAMES = ("max_tokens", "stream", *_SAMPLING_NAMES, "timeout")


def _sampling(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The optional ensemble inputs that were given (``None`` means "server default")."""
    return {_INPUT_OF.get(name, name): arguments[name] for name in _SAMPLING_NAMES if arguments.get(name) is not None}


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


class BaseClient(Generic[TransportT]):
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
    transport: what carries the requests, in place of the gRPC transport the client builds (which the
        TLS options configure); any object with its methods (``TransportProtocol`` for the blocking
        client, ``AsyncTransportProtocol`` for the asyncio one), e.g. a test double. The client closes
        it on ``close()``; copies made with ``with_options`` share it.

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
        transport: TransportT | None = None,
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
            "retry_policy": retry_policy, "endpoint_cooldown": endpoint_cooldown, "transport": transport,
        }  # fmt: skip
        self._pool = EndpointPool(self.endpoints, endpoint_cooldown)
        self._transport: TransportT = self._make_transport() if transport is None else transport
        self._owns_transport = True

    def _make_transport(self) -> TransportT:
        """The gRPC transport used when none is given."""
        raise NotImplementedError

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(endpoints={list(self.endpoints)!r}, model={self.model!r}, tls={self.tls})"

    # --- request preparation (shared) ---

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = self.timeout if timeout is None else timeout
        return None if seconds is None else time.monotonic() + seconds

    @classmethod
    def _analysis_request(cls, arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Request id and ensemble inputs of an ``analyze``/``analyze_stream`` call (its ``locals()``)."""
        request_id = arguments["request_id"] or _new_request_id()
        try:
            prompt = build_prompt(arguments["task"], arguments["post"], aspect=arguments["aspect"],
                                  chat=arguments["chat"], system_prompt=arguments["system_prompt"])  # fmt: skip
        except (ValueError, TypeError) as exc:  # caught before sending: same error type as the server's
            raise InvalidRequestError(str(exc), request_id=request_id) from None
        return request_id, cls._inputs(prompt, arguments["max_tokens"], True, request_id, arguments)

    @classmethod
    def _generation_request(cls, arguments: Mapping[str, Any], stream: bool) -> tuple[str, dict[str, Any]]:
        """Request id and ensemble inputs of a ``generate``/``generate_stream`` call (its ``locals()``)."""
        request_id = arguments["request_id"] or _new_request_id()
        return request_id, cls._inputs(arguments["prompt"], arguments["max_tokens"], stream, request_id, arguments)

    @staticmethod
    def _inputs(
        prompt: str, max_tokens: int, stream: bool, request_id: str, arguments: Mapping[str, Any]
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
            **_sampling(arguments),
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

    def _health_timeout(self) -> float:
        return self.timeout if self.timeout is not None else DEFAULT_TIMEOUT

    def _timeout_left(self, deadline: float | None, request_id: str) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise APITimeoutError("deadline exceeded before the request could be sent", request_id=request_id)
        return left

    def copy(self, **overrides: Any) -> Any:
        """A client with these constructor options changed; it shares connections when it can (a
        transport given to the constructor always, unless ``transport`` is among the changes)."""
        unknown = set(overrides) - set(self._options)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        clone = type(self)(**{**self._options, **overrides})
        if "transport" in overrides:
            return clone
        same_connections = not any(name in overrides for name in _CONNECTION_OPTIONS)
        if same_connections:
            clone._pool = self._pool
        if same_connections or self._options["transport"] is not None:
            clone._transport, clone._owns_transport = self._transport, False
        return clone

    with_options = copy
