"""The GIL-free engine step (mentallama_server.engine.ov_step) on the tiny checkpoint's real OpenVINO pipeline:
other Python threads run while it steps (they do not under the binding's own `step()`), a C++ exception becomes a
Python error, and without a C++ compiler the engine keeps the binding's step and still serves.

A pipeline must be freed on the thread that made it (see `OpenVinoEngine._generate_thread`): the tests that make
one themselves do so in `on_a_thread_of_its_own`, never on pytest's thread."""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from mentallama_server.engine import ov_step
from mentallama_server.engine.ov_engine import OpenVinoEngine
from mentallama_server.engine.ov_step import StepError, gil_free_step
from mentallama_server.engine.types import GenerationRequest

STEPS = 40
T = TypeVar("T")


def on_a_thread_of_its_own(body: Callable[[], T]) -> T:
    """`body()` on a new thread, so that the pipelines it makes are freed there too, when it returns or raises
    (the frames of a raised error's tracebacks, its causes' included, are cleared there first: their locals hold
    the pipelines)."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(body())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            chained: BaseException | None = exc
            while chained is not None:
                traceback.clear_frames(chained.__traceback__)
                chained = chained.__cause__ or chained.__context__
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the test body did not finish"
    if errors:
        raise errors[0]
    return results[0]


def _pipe(engine: Path, max_num_seqs: int, num_kv_blocks: int, max_num_batched_tokens: int,
          dynamic_split_fuse: bool = True) -> Any:  # fmt: skip
    """A pipeline on the tiny engine with these scheduler settings, f32 inference."""
    import openvino_genai as og

    scheduler = og.SchedulerConfig()
    scheduler.max_num_seqs, scheduler.num_kv_blocks = max_num_seqs, num_kv_blocks
    scheduler.max_num_batched_tokens, scheduler.dynamic_split_fuse = max_num_batched_tokens, dynamic_split_fuse
    return og.ContinuousBatchingPipeline(str(engine), scheduler, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _busy_pipe(tiny_engine: Path) -> tuple[Any, list[Any]]:
    """A pipeline with eight long requests running, so that every step has work (about a millisecond each), and
    the requests' handles (a dropped handle drops its request)."""
    import openvino as ov
    import openvino_genai as og

    pipe = _pipe(tiny_engine, max_num_seqs=8, num_kv_blocks=256, max_num_batched_tokens=1024)
    config = og.GenerationConfig()
    config.max_new_tokens, config.ignore_eos = 300, True
    prompt = ov.Tensor(np.asarray([list(range(5, 485))], dtype=np.int64))
    return pipe, [pipe.add_request(i, prompt, config) for i in range(8)]


def _other_thread_ran_during(step: Callable[[], None]) -> int:
    """How often another Python thread got the GIL while `STEPS` steps ran. The switch interval is made so long
    that the GIL changes hands only when a thread gives it up: the other thread gives it up after every count
    (`time.sleep(0)`), the stepping thread only where a step releases it."""
    counted = [0]
    stop = threading.Event()
    seen: list[int] = []

    def count() -> None:
        while not stop.is_set():
            counted[0] += 1
            time.sleep(0)

    def run_steps() -> None:
        before = counted[0]
        for _ in range(STEPS):
            step()
        seen.append(counted[0] - before)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        counter = threading.Thread(target=count)
        stepper = threading.Thread(target=run_steps)
        counter.start()
        stepper.start()
        stepper.join(60)
        stop.set()
        counter.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert seen, "the steps did not finish"
    return seen[0]


def test_other_threads_run_while_the_engine_steps(tiny_engine: Path) -> None:
    def counts() -> tuple[int, int]:
        pipe, _handles = _busy_pipe(tiny_engine)
        return _other_thread_ran_during(pipe.step), _other_thread_ran_during(gil_free_step(pipe))

    binding, ours = on_a_thread_of_its_own(counts)
    assert binding == 0  # the binding holds the GIL for the whole step
    assert ours >= STEPS  # ours lets the other thread in during every step


def test_the_gil_free_step_generates_what_the_binding_does(tiny_engine: Path) -> None:
    outputs = {}
    for release in (True, False):
        with OpenVinoEngine(tiny_engine, max_num_seqs=4, num_kv_blocks=64, release_gil=release) as engine:
            assert engine.steps_release_gil is release
            done = threading.Event()
            tokens: list[int] = []

            def collect(event: Any, tokens: list[int] = tokens, done: threading.Event = done) -> None:
                tokens.extend(event.new_token_ids)
                if event.finished:
                    done.set()

            engine.submit(GenerationRequest("r", list(range(5, 40)), max_new_tokens=24, end_id=-1), collect)
            assert done.wait(60)
            outputs[release] = tokens
    assert len(outputs[True]) == 24 and outputs[True] == outputs[False]


def _pipe_whose_step_throws(engine: Path) -> tuple[Any, Any]:
    """The pipeline and the request's handle (a dropped handle drops its request). A prompt longer than a step's
    token budget, with chunked prefill off: OpenVINO GenAI's scheduler throws inside `step()` (its own check,
    "Sequence length (64) is longer than max number of tokens in batch (16)")."""
    import openvino as ov
    import openvino_genai as og

    pipe = _pipe(engine, max_num_seqs=4, num_kv_blocks=64, max_num_batched_tokens=16, dynamic_split_fuse=False)
    config = og.GenerationConfig()
    config.max_new_tokens = 4
    return pipe, pipe.add_request(0, ov.Tensor(np.asarray([list(range(5, 69))], dtype=np.int64)), config)


def _step_errors(step: Callable[[], None]) -> tuple[str, str]:
    """The type and message of what `step()` raised (only strings leave, so no traceback keeps a pipeline)."""
    try:
        step()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "", ""


def test_a_cpp_exception_in_the_step_is_a_python_error(tiny_engine: Path) -> None:
    """Through ctypes alone a C++ exception would abort the process; the shim hands its message back."""

    def both() -> tuple[tuple[str, str], tuple[str, str]]:
        pipe, handle = _pipe_whose_step_throws(tiny_engine)
        other, other_handle = _pipe_whose_step_throws(tiny_engine)
        errors = _step_errors(gil_free_step(pipe)), _step_errors(other.step)
        # Last made, first freed: freeing a pipeline puts back the alternate signal stack it found, which for
        # the first one freed after the second would be the second's, then freed.
        del other_handle, other, handle, pipe
        return errors

    (kind, ours), (_, binding) = on_a_thread_of_its_own(both)
    assert kind == StepError.__name__
    # The binding's step raises the same error, as its own type.
    assert "longer than max number of tokens in batch" in ours and ours.strip() in binding


def test_the_engine_fails_the_requests_of_a_failed_step_and_goes_on(tiny_engine: Path) -> None:
    engine = OpenVinoEngine(tiny_engine, max_num_seqs=4, num_kv_blocks=64, max_num_batched_tokens=16,
                            dynamic_split_fuse=False)  # fmt: skip
    with engine:
        assert engine.steps_release_gil
        finals: dict[str, Any] = {}
        done = {"long": threading.Event(), "short": threading.Event()}

        def on_event(name: str) -> Callable[[Any], None]:
            def record(event: Any) -> None:
                if event.finished:
                    finals[name] = event
                    done[name].set()

            return record

        engine.submit(GenerationRequest("long", list(range(5, 69)), max_new_tokens=4), on_event("long"))
        assert done["long"].wait(60)
        assert finals["long"].finish_reason == "error"
        assert "StepError" in finals["long"].error and "max number of tokens in batch" in finals["long"].error
        engine.submit(GenerationRequest("short", list(range(5, 15)), max_new_tokens=4, end_id=-1), on_event("short"))
        assert done["short"].wait(60)
        assert finals["short"].finish_reason == "length"


def test_without_a_compiler_the_engine_keeps_the_bindings_step(
    tiny_engine: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no c++, no g++
    ov_step._build_shim.cache_clear()  # built by an earlier engine of this process: build it again, without
    with caplog.at_level(logging.WARNING, logger="mentallama_server.engine.ov_engine"):
        engine = OpenVinoEngine(tiny_engine, max_num_seqs=4, num_kv_blocks=64)
        with engine:
            assert engine.steps_release_gil is False
            assert engine.gil_held_reason == "no C++ compiler (c++ or g++) on PATH"
            with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
                ov_step._build_shim(Path("libopenvino_genai.so"))
            done = threading.Event()
            engine.submit(GenerationRequest("r", [5, 6, 7], max_new_tokens=3), lambda e: e.finished and done.set())
            assert done.wait(60)
    assert "engine steps hold the GIL" in caplog.text and "no C++ compiler" in caplog.text


@pytest.mark.server
def test_the_served_engine_steps_without_the_gil(cpu_server: Any) -> None:
    """The real server's engine step built the GIL-free step in its stub (else it logs that its steps hold it)."""
    config = (cpu_server.run_dir / "model_repository" / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'key: "release_gil" value: { string_value: "true" }' in config
    log = cpu_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "successfully loaded 'tensorrt_llm'" in log  # its initialize() finished: it would have logged by then
    assert "engine steps hold the GIL" not in log
