"""Fixtures of the server tests: the tiny checkpoint's tokenizer and a started CPU engine.

`tiny_checkpoint` (tests/conftest.py) builds `artifacts/checkpoints/tiny` on a fresh machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Small on purpose (2 shared CPU cores): 256 blocks x 16 tokens = 4096 tokens of cache.
ENGINE_KWARGS: dict[str, Any] = dict(max_batch_size=16, num_blocks=256, block_size=16, max_batch_tokens=256)


@pytest.fixture(scope="session")
def engine_kwargs() -> dict[str, Any]:
    return dict(ENGINE_KWARGS)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def cpu_engine(tiny_checkpoint: Path) -> Iterator[Any]:
    """One started engine per test module; tests must leave it idle (every request finished)."""
    from mentallama_server.cpu_engine import CpuEngine

    engine = CpuEngine(tiny_checkpoint, **ENGINE_KWARGS)
    engine.start()
    try:
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture(scope="session")
def reference_model(tiny_checkpoint: Path) -> Any:
    """A separate copy of the tiny model for `generate()` references (the engine's runs paged attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
