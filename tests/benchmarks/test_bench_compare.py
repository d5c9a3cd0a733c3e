"""Served vs bare-engine comparison: ratio arithmetic, and the in-process CpuEngine backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mentallama_bench.compare import compare_summaries, format_comparison
from mentallama_bench.datasets import SyntheticDataset
from mentallama_bench.records import SamplingParams
from mentallama_bench.runner import LoadSpec, SessionConfig, StopSpec, run_session
from mentallama_bench.tokens import load_tokenizer


def _summary(backend: str, load: str, ttft_p50: float, tok_s: float) -> dict:
    stats = {"p50": ttft_p50, "p99": 2 * ttft_p50}
    return {
        "run": {"backend": backend, "label": f"{backend}-{load}", "load": {"label": load}},
        "ttft": stats,
        "itl": {"p50": None},
        "e2e_latency": stats,
        "output_token_throughput": tok_s,
        "request_throughput": tok_s / 10,
    }


def test_ratios_are_served_over_engine_per_load() -> None:
    rows = compare_summaries(
        [
            _summary("triton-grpc", "c1", 30.0, 100.0),
            _summary("triton-grpc", "c4", 60.0, 300.0),
            _summary("engine", "c1", 20.0, 125.0),
        ]
    )
    assert [r["served"] for r in rows] == ["triton-grpc-c1"]  # c4 has no engine run to compare with
    row = rows[0]
    assert row["TTFT p50"] == {"served": 30.0, "engine": 20.0, "ratio": pytest.approx(1.5)}
    assert row["out tok/s"]["ratio"] == pytest.approx(0.8)
    assert row["ITL p50"]["ratio"] is None
    table = format_comparison(rows)
    assert table[0][0] == "served run" and table[1][1] == "1.50x" and table[1][3] == "-"


def test_engine_backend_runs_the_same_load_in_process(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from mentallama_bench.engine_backend import EngineBackend, engine_kwargs, engine_settings

    settings = engine_settings({"engine_max_batch_size": "4", "cache_num_blocks": "64", "prefix_caching": "true"})
    kwargs = engine_kwargs(settings)
    assert kwargs["max_num_seqs"] == 4 and kwargs["num_kv_blocks"] == 64 and kwargs["enable_prefix_caching"]
    with pytest.raises(ValueError, match="unknown engine setting"):
        engine_settings({"max_queue_size": "3"})

    backend = EngineBackend(tiny_checkpoint, settings)
    dataset = SyntheticDataset(input_len=16, output_len=6, tokenizer=load_tokenizer(tiny_checkpoint))
    config = SessionConfig(
        loads=[LoadSpec(concurrency=2)],
        stop=StopSpec(requests=6),
        warmup=1,
        progress=False,
        params=SamplingParams(force_output_len=True),
        metrics_urls=["http://127.0.0.1:1/metrics"],
    )
    [result] = asyncio.run(run_session([[backend]], dataset, config, tmp_path))
    assert result.label == "engine-c2"
    assert result.summary["requests"]["completed"] == 6, result.summary["errors"]
    assert all(r.output_tokens == 6 and r.token_source == "engine" for r in result.records)
    assert all(r.input_tokens == 17 for r in result.records)  # 16 prompt tokens + BOS
    assert result.summary["ttft"]["count"] == 6 and result.summary["itl"]["count"] == 6
    assert result.summary["server"] == {}  # no server in this path: nothing scraped
