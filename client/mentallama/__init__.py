"""MentaLLaMA SDK: interpretable mental-health analysis served on Triton (non-clinical research only).

Everything public is importable from here; the underscore modules are private::

    from mentallama import MentaLLaMAClient

    with MentaLLaMAClient("localhost:8001") as client:
        result = client.analyze("I haven't left my room in weeks.", task="depression")
        print(result.label, result.reasoning, result.num_output_tokens)
"""

from ._client import AnalysisResult, AsyncMentaLLaMAClient, BaseClient, GenerationResult, MentaLLaMAClient
from ._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    ENDPOINT_COOLDOWN,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_DELAY,
)
from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InvalidRequestError,
    MentaLLaMAError,
    ServerError,
    ServerOverloadedError,
)
from ._retry import RETRYABLE_STATUSES, RetryPolicy
from ._streaming import (
    AnalysisStream,
    AsyncAnalysisStream,
    AsyncGenerationStream,
    AsyncStream,
    GenerationStream,
    Stream,
)
from .parsing import parse_response
from .prompts import build_prompt
from .tasks import TASKS, TaskInfo, get_task, task_names
from .types import Analysis, Generation

__all__ = [
    # clients
    "MentaLLaMAClient",
    "AsyncMentaLLaMAClient",
    "BaseClient",
    "RetryPolicy",
    "RETRYABLE_STATUSES",
    # results and streams
    "Analysis",
    "Generation",
    "AnalysisResult",
    "GenerationResult",
    "Stream",
    "AsyncStream",
    "AnalysisStream",
    "AsyncAnalysisStream",
    "GenerationStream",
    "AsyncGenerationStream",
    # prompts, parsing, tasks
    "build_prompt",
    "parse_response",
    "TASKS",
    "TaskInfo",
    "get_task",
    "task_names",
    # errors
    "MentaLLaMAError",
    "APIConnectionError",
    "APITimeoutError",
    "InvalidRequestError",
    "AuthenticationError",
    "ServerError",
    "ServerOverloadedError",
    # defaults
    "DEFAULT_CONCURRENCY",
    "DEFAULT_ENDPOINT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "ENDPOINT_COOLDOWN",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_DELAY",
]

__version__ = "0.1.0"

# Show the public path in reprs and tracebacks (``mentallama.APITimeoutError``), as httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("mentallama._"):
        _obj.__module__ = "mentallama"
del _name, _obj
