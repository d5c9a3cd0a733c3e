"""EngineProcess's own life: the engine's child process dies, fails to start, or loses its stub. (What it shares
with OpenVinoEngine, requests and their semantics, runs in test_ov_engine.py for both.)"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from mentallama_server.engine.engine_process import EngineProcess
from tests.server.test_ov_engine import Collector, prompt, request


def test_a_killed_engine_process_fails_every_request_in_flight_and_says_why(
    tiny_engine: Path, engine_kwargs: dict[str, Any]
) -> None:
    exits: list[str] = []
    engine = EngineProcess(tiny_engine, on_exit=exits.append, **engine_kwargs)
    engine.start()
    try:
        collectors = [Collector() for _ in range(4)]
        for i, collector in enumerate(collectors):
            engine.submit(request(prompt(8, seed=i), 2000, end_id=-1), collector)
        deadline = time.monotonic() + 60
        while not all(c.events for c in collectors):  # every request is running
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert engine.pid is not None
        psutil.Process(engine.pid).send_signal(signal.SIGKILL)
        for collector in collectors:
            final = collector.wait().final
            assert final.finish_reason == "error"
            assert "engine process was killed by signal 9" in (final.error or "")
        assert exits == ["the engine process was killed by signal 9"]
        with pytest.raises(RuntimeError, match="killed by signal 9"):
            engine.submit(request([1, 2], 2), Collector())
        assert engine.cancel("anything") is False
    finally:
        engine.shutdown()
    assert exits == ["the engine process was killed by signal 9"]  # a shutdown after it is not another exit


def test_an_engine_that_cannot_load_refuses_to_start_with_the_reason(
    tiny_engine: Path, engine_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    broken = tmp_path / "engine"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_engine / "config.json").read_text(), encoding="utf-8")
    engine = EngineProcess(broken, **engine_kwargs)  # the folder's config is read here; the model is not there
    with pytest.raises(RuntimeError, match="the engine process did not start: .*Error"):
        engine.start()
    assert engine.pid is not None and not psutil.pid_exists(engine.pid)  # not left behind


def test_the_engine_process_ends_when_its_stub_is_gone(tiny_engine: Path, engine_kwargs: dict[str, Any]) -> None:
    """A stub that dies (here: a process that starts the engine, submits and exits at once) leaves no engine."""
    script = (
        "import os, sys\n"
        "from mentallama_server.engine.engine_process import EngineProcess\n"
        "from mentallama_server.engine.types import GenerationRequest\n"
        f"engine = EngineProcess({str(tiny_engine)!r}, **{engine_kwargs!r})\n"
        "engine.start()\n"
        "engine.submit(GenerationRequest('r', [1, 5, 6], 2000, end_id=-1), print)\n"
        "print(engine.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    pid = int(done.stdout.split()[-1])
    with contextlib.suppress(psutil.NoSuchProcess):  # already gone
        psutil.Process(pid).wait(15)  # psutil.TimeoutExpired if it is still there
    assert not psutil.pid_exists(pid)


def test_the_child_is_told_the_engine_settings(tiny_engine: Path, engine_kwargs: dict[str, Any]) -> None:
    """The child runs the engine the stub describes (the KV-cache size shows in its stats)."""
    settings = {**engine_kwargs, "num_kv_blocks": 96}
    with EngineProcess(tiny_engine, **settings) as engine:
        collector = Collector()
        engine.submit(request(prompt(8, seed=3), 4, end_id=-1), collector)
        collector.wait()
        assert engine.stats().cache_blocks_total == 96
        assert engine.stats().tokens_generated == 4
    assert json.loads((tiny_engine / "config.json").read_text())["vocab_size"] == engine.spec.vocab_size
