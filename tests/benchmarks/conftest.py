"""The benchmark tests' fake Triton (tests/support/fake_triton.py): real wire protocols, scripted answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_triton import FakeTriton, run_fake_triton


@pytest.fixture()
def fake_triton() -> Iterator[FakeTriton]:
    """Both fake endpoints (gRPC and HTTP) on loopback, fresh for each test."""
    with run_fake_triton() as fake:
        yield fake
