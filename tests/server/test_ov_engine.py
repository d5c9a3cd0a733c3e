"""OpenVinoEngine on the tiny checkpoint's fp32 engine: in-flight batching, TensorRT-LLM request semantics,
lifecycle. References come from transformers `generate()` on the same checkpoint."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mentallama_server.engine.ov_engine import OpenVinoEngine, UnsupportedRequestError
from mentallama_server.engine.types import GenerationRequest, TokenEvent

EOS = 2
TIMEOUT_S = 60.0


class Collector:
    """Records the events of one request; `wait()` returns once its final event arrived."""

    def __init__(self, on_event: Any = None) -> None:
        self.events: list[TokenEvent] = []
        self.times: list[float] = []
        self.finished = threading.Event()
        self._extra = on_event

    def __call__(self, event: TokenEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        if self._extra is not None:
            self._extra(event)
        if event.finished:
            self.finished.set()

    def wait(self) -> Collector:
        assert self.finished.wait(TIMEOUT_S), "no final event"
        return self

    @property
    def tokens(self) -> list[int]:
        return [t for e in self.events for t in e.new_token_ids]

    @property
    def log_probs(self) -> list[float]:
        return [lp for e in self.events for lp in (e.log_probs or [])]

    @property
    def final(self) -> TokenEvent:
        finals = [e for e in self.events if e.finished]
        assert len(finals) == 1 and self.events[-1].finished, "exactly one final event, last"
        return finals[0]


_ids = iter(range(10**9))


def request(input_ids: list[int], max_new_tokens: int, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(f"req-{next(_ids)}", list(input_ids), max_new_tokens, **kwargs)


def run(engine: OpenVinoEngine, req: GenerationRequest) -> Collector:
    collector = Collector()
    engine.submit(req, collector)
    return collector.wait()


def prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [1] + [rng.randrange(3, 4000) for _ in range(length - 1)]


def reference(model: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    """Solo `generate()`, greedy, with the trailing eos removed (the engine never outputs end ids)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=0,
        )
    tokens = out[0, len(ids) :].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def next_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def wait_idle(engine: OpenVinoEngine) -> Any:
    """Cancellation reaches the batch at the next step: poll until the engine shows nothing held."""
    deadline = time.monotonic() + 10
    while True:
        stats = engine.stats()
        if stats.active_requests == 0 and stats.cache_blocks_used == 0 and stats.unfinished_requests == 0:
            return stats
        assert time.monotonic() < deadline, f"engine not idle: {stats}"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------- greedy


def test_concurrent_greedy_matches_solo_generate(cpu_engine: OpenVinoEngine, reference_model: Any) -> None:
    prompts = [prompt(n, seed=n) for n in (3, 17, 40, 90, 130)]
    collectors = [Collector() for _ in prompts]
    for ids, collector in zip(prompts, collectors, strict=True):
        cpu_engine.submit(request(ids, 24), collector)
    for ids, collector in zip(prompts, collectors, strict=True):
        expected = reference(reference_model, ids, 24)
        assert collector.wait().tokens == expected
        assert collector.final.finish_reason == ("length" if len(expected) == 24 else "stop")


def test_requests_beyond_cache_capacity_all_complete(cpu_engine: OpenVinoEngine, reference_model: Any) -> None:
    """10 x (50 + 400) tokens do not fit the 4096-token cache at once: the scheduler preempts and recomputes,
    still exact."""
    prompts = [prompt(50, seed=200 + i) for i in range(10)]
    collectors = [Collector() for _ in prompts]
    for ids, collector in zip(prompts, collectors, strict=True):
        cpu_engine.submit(request(ids, 400, end_id=-1), collector)
    for collector in collectors:
        assert len(collector.wait().tokens) == 400
    with torch.no_grad():
        for ids, collector in list(zip(prompts, collectors, strict=True))[:3]:
            out = reference_model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=400, eos_token_id=None, pad_token_id=0
            )
            assert collector.tokens == out[0, len(ids) :].tolist()
    wait_idle(cpu_engine)


def test_short_request_gets_tokens_while_long_ones_run(cpu_engine: OpenVinoEngine) -> None:
    longs = [Collector() for _ in range(3)]
    for i, collector in enumerate(longs):
        cpu_engine.submit(request(prompt(20, seed=i), 300, end_id=-1), collector)
    deadline = time.monotonic() + TIMEOUT_S
    while not all(c.events for c in longs):  # all long requests are decoding
        assert time.monotonic() < deadline
        time.sleep(0.005)
    short = run(cpu_engine, request(prompt(5, seed=9), 4, end_id=-1))
    for collector in longs:
        collector.wait()
        assert len(collector.tokens) == 300
        assert short.times[0] < collector.times[-1]  # first token of the short one before the long ones end
        assert short.times[-1] < collector.times[-1]
    assert len(short.tokens) == 4


def test_non_streaming_request_gets_one_final_event(cpu_engine: OpenVinoEngine, reference_model: Any) -> None:
    ids = prompt(12, seed=3)
    collector = run(cpu_engine, request(ids, 16, streaming=False))
    assert len(collector.events) == 1
    assert collector.tokens == reference(reference_model, ids, 16)


def test_slow_consumer_gets_tokens_coalesced(cpu_engine: OpenVinoEngine) -> None:
    ids = prompt(8, seed=4)
    expected = run(cpu_engine, request(ids, 40, end_id=-1)).tokens
    collector = Collector(on_event=lambda event: time.sleep(0.05))
    cpu_engine.submit(request(ids, 40, end_id=-1), collector)
    collector.wait()
    assert len(collector.events) < 40
    assert max(len(e.new_token_ids) for e in collector.events) > 1
    assert collector.tokens == expected


def test_stream_hold_rule(tiny_engine: Path) -> None:
    """`stream_hold_ms`: new tokens wait for the next step's only while the oldest of them would, once it ends,
    have waited at most the hold; a request's first tokens never wait (the rule alone, on the test's clock)."""
    from mentallama_server.engine.ov_engine import _Tracked

    engine = OpenVinoEngine(tiny_engine, max_num_seqs=16, stream_hold_ms=1600)  # not started: nothing runs
    assert engine._stream_hold_s(16) == engine._stream_hold_s(40) == pytest.approx(1.6)  # a full batch: all of it
    assert engine._stream_hold_s(1) == pytest.approx(0.1)  # one stream of 16: a sixteenth
    assert OpenVinoEngine(tiny_engine)._stream_hold_s(32) == 0  # no hold: every step's tokens go out
    tracked = _Tracked(request([1, 5], 40), lambda event: None, frozenset())
    engine._step_s = 0.030
    assert engine._release_now(tracked, 1.000, 0.1)  # nothing published yet: the first token goes at once
    tracked.ready = 1
    assert not engine._release_now(tracked, 1.010, 0.1)  # held: after the next step it will have waited 30 ms
    assert not engine._release_now(tracked, 1.070, 0.1)  # 60 + 30 <= 100
    assert engine._release_now(tracked, 1.090, 0.1)  # 80 + 30 > 100: out now, having waited 80 ms
    assert not engine._release_now(tracked, 1.100, 0.1)  # the next tokens start a hold of their own
    engine._step_s = 0.150  # a step longer than the hold is never waited for
    assert engine._release_now(tracked, 1.110, 0.1)
    assert engine._release_now(tracked, 2.0, 0.0)


def test_held_stream_carries_the_same_tokens_in_fewer_events(
    cpu_engine: OpenVinoEngine, tiny_engine: Path, engine_kwargs: dict[str, Any]
) -> None:
    ids = prompt(8, seed=23)
    each_step = run(cpu_engine, request(ids, 200, end_id=-1))
    hold_ms = 30 * engine_kwargs["max_num_seqs"]  # 30 ms for the one stream
    with OpenVinoEngine(tiny_engine, **engine_kwargs, stream_hold_ms=hold_ms) as engine:
        held = run(engine, request(ids, 200, end_id=-1))
    assert held.tokens == each_step.tokens
    assert len(held.events[0].new_token_ids) == 1  # the first token was not held
    assert len(held.events) < len(each_step.events) / 2


# --------------------------------------------------------------------------------------- cancellation


def test_cancel_many_running_requests_frees_slots_and_cache(cpu_engine: OpenVinoEngine) -> None:
    collectors = {}
    for i in range(16):
        req = request(prompt(10 + i, seed=100 + i), 200, end_id=-1)
        collectors[req.request_id] = Collector()
        cpu_engine.submit(req, collectors[req.request_id])
    deadline = time.monotonic() + TIMEOUT_S
    while not all(c.events for c in collectors.values()):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    busy = cpu_engine.stats()
    assert busy.active_requests > 0 and busy.cache_blocks_used > 0

    assert all(cpu_engine.cancel(request_id) for request_id in collectors)

    for collector in collectors.values():
        assert collector.wait().final.finish_reason == "cancelled"
        assert len(collector.tokens) < 200
    stats = wait_idle(cpu_engine)
    assert stats.waiting_requests == 0
    assert not any(cpu_engine.cancel(request_id) for request_id in collectors)  # finished: False
    assert len(run(cpu_engine, request(prompt(6, seed=7), 5, end_id=-1)).tokens) == 5  # slots reusable


def test_cancel_unknown_or_finished_request_returns_false(cpu_engine: OpenVinoEngine) -> None:
    assert cpu_engine.cancel("no-such-request") is False
    req = request(prompt(5, seed=1), 3)
    collector = run(cpu_engine, req)
    assert cpu_engine.cancel(req.request_id) is False
    assert len([e for e in collector.events if e.finished]) == 1


def test_cancel_right_after_submit(cpu_engine: OpenVinoEngine) -> None:
    req = request(prompt(5, seed=2), 100, end_id=-1)
    collector = Collector()
    cpu_engine.submit(req, collector)
    assert cpu_engine.cancel(req.request_id) is True
    assert cpu_engine.cancel(req.request_id) is False  # already cancelled
    assert collector.wait().final.finish_reason == "cancelled"
    wait_idle(cpu_engine)


# ------------------------------------------------------------------------------ stop words and end_id


def test_stop_word_ends_generation_and_stays_in_output(cpu_engine: OpenVinoEngine) -> None:
    ids = prompt(10, seed=11)
    free = run(cpu_engine, request(ids, 30, end_id=-1)).tokens
    stop = free[5:7]
    first = next(i for i in range(len(free) - 1) if free[i : i + 2] == stop)
    stopped = run(cpu_engine, request(ids, 30, end_id=-1, stop_words=[[7, 7, 7, 7], stop]))
    assert stopped.tokens == free[: first + 2]
    assert stopped.final.finish_reason == "stop"
    wait_idle(cpu_engine)  # the pipeline's request was stopped behind the scenes


def test_stop_word_does_not_end_generation_before_min_new_tokens(cpu_engine: OpenVinoEngine) -> None:
    ids = prompt(10, seed=12)
    free = run(cpu_engine, request(ids, 20, end_id=-1)).tokens
    stop = [free[1]]
    later = [i for i in range(2, 20) if free[i] == stop[0]]  # i + 1 tokens >= 3
    result = run(cpu_engine, request(ids, 20, end_id=-1, stop_words=[stop], min_new_tokens=3))
    assert result.tokens == (free[: later[0] + 1] if later else free)


def test_end_id_ends_generation_and_is_not_emitted(cpu_engine: OpenVinoEngine) -> None:
    ids = prompt(10, seed=13)
    free = run(cpu_engine, request(ids, 20, end_id=-1)).tokens
    end = free[4]
    first = free.index(end)
    result = run(cpu_engine, request(ids, 20, end_id=end))
    assert result.tokens == free[:first]
    assert result.final.finish_reason == "stop"


def test_min_new_tokens_bans_end_id_until_reached(cpu_engine: OpenVinoEngine) -> None:
    ids = prompt(10, seed=14)
    free = run(cpu_engine, request(ids, 20, end_id=-1)).tokens
    end = free[0]
    result = run(cpu_engine, request(ids, 20, end_id=end, min_new_tokens=5))
    assert len(result.tokens) >= 5 and end not in result.tokens[:5]


# --------------------------------------------------------------------------- sampling and log probs


def test_seeded_sampling_is_reproducible_and_stays_in_top_k(
    cpu_engine: OpenVinoEngine, reference_model: Any
) -> None:
    ids = prompt(10, seed=15)
    kwargs = dict(end_id=-1, temperature=1.0, top_k=3, seed=1234, return_log_probs=True)
    first = run(cpu_engine, request(ids, 12, **kwargs))
    again = run(cpu_engine, request(ids, 12, **kwargs))
    assert first.tokens == again.tokens
    other_seeds = [run(cpu_engine, request(ids, 12, **{**kwargs, "seed": s})).tokens for s in range(5)]
    assert any(tokens != first.tokens for tokens in other_seeds)
    sequence = list(ids)
    for token, log_prob in zip(first.tokens, first.log_probs, strict=True):
        logits = next_logits(reference_model, sequence)
        assert token in torch.topk(logits, 3).indices.tolist()
        # OpenVINO GenAI reports the token's log-probability under the full distribution (not renormalised).
        assert log_prob == pytest.approx(float(torch.log_softmax(logits, -1)[token]), abs=1e-4)
        sequence.append(token)


def test_greedy_log_probs_match_the_model(cpu_engine: OpenVinoEngine, reference_model: Any) -> None:
    ids = prompt(9, seed=16)
    result = run(cpu_engine, request(ids, 8, end_id=-1, return_log_probs=True))
    assert len(result.log_probs) == 8
    sequence = list(ids)
    for token, log_prob in zip(result.tokens, result.log_probs, strict=True):
        logits = next_logits(reference_model, sequence)
        assert token == int(torch.argmax(logits))
        assert log_prob == pytest.approx(float(torch.log_softmax(logits, -1)[token]), abs=1e-4)
        sequence.append(token)


@pytest.mark.parametrize(
    "penalty", [dict(repetition_penalty=1e6), dict(presence_penalty=1e4), dict(frequency_penalty=1e4)]
)
def test_penalties_keep_every_seen_token_out(cpu_engine: OpenVinoEngine, penalty: dict[str, float]) -> None:
    ids = prompt(10, seed=17)
    free = run(cpu_engine, request(ids, 30, end_id=-1)).tokens
    assert len(set(free)) < len(free)  # the unpenalised output repeats itself
    tokens = run(cpu_engine, request(ids, 30, end_id=-1, **penalty)).tokens
    assert len(set(tokens)) == len(tokens) and not set(tokens) & set(ids)


def test_bad_words_are_refused_not_ignored(cpu_engine: OpenVinoEngine) -> None:
    with pytest.raises(UnsupportedRequestError, match="bad_words"):
        cpu_engine.submit(request(prompt(10, seed=18), 20, bad_words=[[5]]), Collector())
    assert cpu_engine.stats().unfinished_requests == 0


# --------------------------------------------------------------------------------- errors and validation


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("input_ids", dict(input_ids=[])),
        ("input_ids", dict(input_ids=[1, 4000])),
        ("max_new_tokens", dict(max_new_tokens=0)),
        ("max_new_tokens", dict(max_new_tokens=5000)),
        ("top_p", dict(top_p=1.5)),
        ("top_k", dict(top_k=-1)),
        ("temperature", dict(temperature=-0.5)),
        ("repetition_penalty", dict(repetition_penalty=0.0)),
        ("min_new_tokens", dict(min_new_tokens=-1)),
        ("stop_words", dict(stop_words=[[]])),
        ("bad_words", dict(bad_words=[[5, 99999]])),
        ("end_id", dict(end_id=4000)),
        ("seed", dict(seed=-1)),
    ],
)
def test_invalid_request_raises_value_error_naming_the_field(
    cpu_engine: OpenVinoEngine, field: str, change: dict[str, Any]
) -> None:
    req = request([1, 5, 6], 10)
    for key, value in change.items():
        setattr(req, key, value)
    with pytest.raises(ValueError, match=field):
        cpu_engine.submit(req, Collector())
    assert cpu_engine.stats().unfinished_requests == 0


def test_duplicate_request_id_in_flight_is_rejected(cpu_engine: OpenVinoEngine) -> None:
    req = request(prompt(5, seed=19), 100, end_id=-1)
    collector = Collector()
    cpu_engine.submit(req, collector)
    with pytest.raises(ValueError, match="request_id"):
        cpu_engine.submit(GenerationRequest(req.request_id, [1, 2, 3], 5), Collector())
    cpu_engine.cancel(req.request_id)
    collector.wait()


def test_callback_failure_fails_the_request_with_one_final_event(cpu_engine: OpenVinoEngine) -> None:
    def explode(event: TokenEvent) -> None:
        if not event.finished:
            raise RuntimeError("client went away")

    collector = Collector(on_event=explode)
    cpu_engine.submit(request(prompt(5, seed=20), 50, end_id=-1), collector)
    final = collector.wait().final
    assert final.finish_reason == "error" and "client went away" in (final.error or "")
    wait_idle(cpu_engine)


# ------------------------------------------------------------------------------------------ lifecycle


def test_engine_starts_fast_and_shutdown_finishes_every_request(
    tiny_engine: Path, engine_kwargs: dict[str, Any]
) -> None:
    started = time.monotonic()
    engine = OpenVinoEngine(tiny_engine, **engine_kwargs)
    engine.start()
    assert time.monotonic() - started < 30
    collectors = [Collector() for _ in range(6)]
    for i, collector in enumerate(collectors):
        engine.submit(request(prompt(8, seed=i), 500, end_id=-1), collector)
    engine.shutdown(timeout=10)
    for collector in collectors:
        final = collector.wait().final
        assert final.finish_reason == "error" and final.error
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(request([1, 2], 2), Collector())
    assert engine.cancel("anything") is False
    engine.shutdown()  # idempotent


_SIGNAL_AFTER_ENGINE = """
import ctypes, gc, os, signal, sys, threading
from mentallama_server.engine.ov_engine import OpenVinoEngine
from mentallama_server.engine.types import GenerationRequest

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def alternate_stack():
    stack = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return stack.sp, stack.size

before = alternate_stack()
engine = OpenVinoEngine(sys.argv[1], max_num_seqs=4, num_kv_blocks=32, inference_precision="f32")
engine.start()
done = threading.Event()
engine.submit(GenerationRequest("r", [1, 5, 9, 13], 4, end_id=-1), lambda e: e.finished and done.set())
assert done.wait(60)
print("during", alternate_stack() == before)
engine.shutdown()
holder = [engine]
del engine
freer = threading.Thread(target=holder.clear)  # the last reference goes on another thread
freer.start()
freer.join()
gc.collect()
print("after", alternate_stack() == before)
handled = []
signal.signal(signal.SIGTERM, lambda *_: handled.append(1))
for _ in range(3):
    os.kill(os.getpid(), signal.SIGTERM)
print("signals", len(handled))
"""


def test_the_callers_signal_handling_survives_an_engine(tiny_engine: Path) -> None:
    """Making an OpenVINO GenAI pipeline replaces the calling thread's alternate signal stack, and freeing it puts
    the old one back on the freeing thread: the engine keeps both on its generation thread, so a caller that
    starts an engine, lets it go on another thread and then takes a signal (Python's handlers run on that stack)
    is unharmed. It killed the test suite once (SIGSEGV at a SIGTERM test)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_ENGINE, str(tiny_engine)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["during", "True", "after", "True", "signals", "3"]


def test_a_pipeline_that_cannot_be_made_fails_start_with_its_error(tiny_engine: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_engine / "config.json").read_text())  # no model files
    engine = OpenVinoEngine(tmp_path, max_num_seqs=2, num_kv_blocks=16)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError) as raised:
        engine.start()
    assert "Could not find a model in the directory" in str(raised.value)  # the pipeline's own error
    assert [t.name for t in set(threading.enumerate()) - before] == []  # no thread left behind
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(request([1, 2], 2), Collector())


def test_a_failure_outside_a_step_fails_every_request_and_stops_the_engine(
    tiny_engine: Path, engine_kwargs: dict[str, Any]
) -> None:
    engine = OpenVinoEngine(tiny_engine, **engine_kwargs)

    def broken_read() -> None:  # stands in for an unexpected error in the generation loop, outside `step()`
        raise RuntimeError("reading outputs broke")

    engine._read_outputs = broken_read  # type: ignore[method-assign]
    engine.start()
    try:
        final = run(engine, request(prompt(8, seed=3), 5, end_id=-1)).final
        assert final.finish_reason == "error" and "RuntimeError: reading outputs broke" in (final.error or "")
        with pytest.raises(RuntimeError, match="not running"):
            engine.submit(request([1, 2], 2), Collector())
    finally:
        engine.shutdown()


def test_a_shutdown_that_times_out_still_ends_every_request(tiny_engine: Path, engine_kwargs: dict[str, Any]) -> None:
    """`shutdown(timeout)` returns while a step still runs; the requests it leaves still get their final event."""
    engine = OpenVinoEngine(tiny_engine, **engine_kwargs)
    engine.start()
    fast_step = engine._step

    def slow_step() -> None:  # stands in for a step longer than the shutdown's timeout
        time.sleep(0.5)
        fast_step()

    engine._step = slow_step
    collector = Collector()
    engine.submit(request(prompt(8, seed=5), 50, end_id=-1), collector)
    time.sleep(0.1)  # the first slow step is under way
    started = time.monotonic()
    engine.shutdown(timeout=0.05)
    assert time.monotonic() - started < 0.4  # it did not wait for the step
    final = collector.wait().final
    assert final.finish_reason == "error" and final.error


def test_stats_report_the_cache_and_counters(cpu_engine: OpenVinoEngine, engine_kwargs: dict[str, Any]) -> None:
    before = cpu_engine.stats()
    run(cpu_engine, request(prompt(5, seed=21), 7, end_id=-1))
    after = wait_idle(cpu_engine)
    assert after.cache_blocks_total == engine_kwargs["num_kv_blocks"]
    assert after.tokens_generated == before.tokens_generated + 7
    assert after.tokens_produced == before.tokens_produced + 7  # counted as produced, the liveness signal
    assert after.requests_finished.get("length", 0) == before.requests_finished.get("length", 0) + 1


def test_prefix_cache_reuse_keeps_greedy_exact(
    tiny_engine: Path, engine_kwargs: dict[str, Any], reference_model: Any
) -> None:
    ids = prompt(70, seed=22)  # 2 full blocks of 32 tokens that a second request can reuse
    with OpenVinoEngine(tiny_engine, **{**engine_kwargs, "enable_prefix_caching": True}) as engine:
        first = run(engine, request(ids, 12)).tokens
        second = run(engine, request(ids, 12)).tokens
    assert first == second == reference(reference_model, ids, 12)
