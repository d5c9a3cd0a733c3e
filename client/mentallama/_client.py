"""``MentaLLaMAClient`` and ``AsyncMentaLLaMAClient``: same constructor, same methods.

Both build on :class:`BaseClient` (``_base_client``: configuration, request preparation, retry and
failover decisions); ``_sync_client`` and ``_async_client`` hold the two ways of waiting.
"""

from ._async_client import AsyncMentaLLaMAClient
from ._base_client import AnalysisResult, BaseClient, GenerationResult
from ._sync_client import MentaLLaMAClient

__all__ = ["AnalysisResult", "AsyncMentaLLaMAClient", "BaseClient", "GenerationResult", "MentaLLaMAClient"]
