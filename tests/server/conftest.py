"""Fixtures of the server tests: the tiny checkpoint's tokenizer, its fp32 OpenVINO engine, a started engine.

`tiny_checkpoint` (tests/conftest.py) builds `artifacts/checkpoints/tiny` on a fresh machine; `tiny_engine`
(tests/conftest.py) exports it once (artifacts/engines/, reused afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Small on purpose (2 shared CPU cores): 128 blocks x 32 tokens = 4096 tokens of cache. f32 throughout, so
# greedy output equals transformers' token for token.
ENGINE_KWARGS: dict[str, Any] = dict(
    max_num_seqs=16, num_kv_blocks=128, max_num_batched_tokens=256, kv_cache_precision="f32", inference_precision="f32"
)


@pytest.fixture(scope="session")
def engine_kwargs() -> dict[str, Any]:
    return dict(ENGINE_KWARGS)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def cpu_engine(tiny_engine: Path) -> Iterator[Any]:
    """One started engine per test module; tests must leave it idle (every request finished)."""
    from mentallama_server.engine.ov_engine import OpenVinoEngine

    engine = OpenVinoEngine(tiny_engine, **ENGINE_KWARGS)
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


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Any:
    """The tiny model's tokenizer as the serving processes load it (`tokenizers` only; transformers' AutoTokenizer
    is slower and tested elsewhere)."""
    from mentallama_server.models.text_tokenizer import load_tokenizer

    return load_tokenizer(tiny_checkpoint)
