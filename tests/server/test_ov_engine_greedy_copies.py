"""Several greedy sequences on the CPU engine are one greedy run, copied (issue 21); the pipeline streams that run,
so each read holds only the tokens since the last one: the copies must carry the whole run (they carried the last
step's token alone before the reads were joined)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.test_ov_engine import prompt, reference, request, run

pytestmark = pytest.mark.slow  # runs the OpenVINO engine and transformers, as test_ov_engine.py does


@pytest.mark.parametrize("log_probs", [False, True])
def test_greedy_copies_are_the_whole_greedy_run(cpu_engine: Any, reference_model: Any, log_probs: bool) -> None:
    ids = prompt(12, seed=41)
    single = run(cpu_engine, request(ids, 16, end_id=-1, temperature=0.0, return_log_probs=log_probs))
    copies = run(cpu_engine, request(ids, 16, end_id=-1, temperature=0.0, num_return_sequences=3,
                                     return_log_probs=log_probs)).final.sequences  # fmt: skip
    assert single.tokens == reference(reference_model, ids, 16)[:16] and len(single.tokens) == 16
    assert [list(s.token_ids) for s in copies] == [single.tokens] * 3
    assert {s.finish_reason for s in copies} == {"length"}
    if log_probs:
        assert [list(s.log_probs) for s in copies] == [pytest.approx(single.log_probs)] * 3
        assert copies[0].cum_log_prob == pytest.approx(sum(single.log_probs))
