"""The front model's side channel to stop CPU engine requests without a BLS call (stop_channel)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from mentallama_server.models import stop_channel
from mentallama_server.models.stop_channel import StopListener, StopSender, socket_path


def _listener(tmp_path: Path):
    got: list[str] = []
    errors: list[str] = []
    arrived = threading.Semaphore(0)

    def on_stop(engine_id: str) -> None:
        got.append(engine_id)
        arrived.release()

    def on_error(message: str) -> None:
        errors.append(message)
        arrived.release()

    return StopListener(socket_path(tmp_path), on_stop, on_error), got, errors, arrived


def test_ids_sent_arrive_in_order_and_the_socket_is_private(tmp_path: Path) -> None:
    listener, got, _, arrived = _listener(tmp_path)
    sender = StopSender(socket_path(tmp_path))
    try:
        assert stat.S_IMODE(socket_path(tmp_path).stat().st_mode) == 0o600
        assert sender.send("req-1#abc") and sender.send("req-2#def")
        assert arrived.acquire(timeout=5) and arrived.acquire(timeout=5)
        assert got == ["req-1#abc", "req-2#def"]
    finally:
        sender.close()
        listener.close()
    assert not socket_path(tmp_path).exists()


def test_a_failing_stop_or_a_bad_datagram_does_not_end_the_listener(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stop_channel, "ERROR_LOG_INTERVAL_S", 0.0)  # every error logged here
    errors: list[str] = []
    arrived = threading.Semaphore(0)

    def on_stop(engine_id: str) -> None:
        arrived.release()
        if engine_id == "boom":
            raise RuntimeError("engine refused")

    def on_error(message: str) -> None:
        errors.append(message)
        arrived.release()

    listener = StopListener(socket_path(tmp_path), on_stop, on_error)
    sender = StopSender(socket_path(tmp_path))
    try:
        sender.send("boom")
        sender._socket.sendto(b"\xff\xfe", str(socket_path(tmp_path)))  # not UTF-8
        sender.send("after")
        for _ in range(4):  # boom: stop + error; bad bytes: error; after: stop
            assert arrived.acquire(timeout=5)
        assert any("engine refused" in e for e in errors) and any("UnicodeDecodeError" in e for e in errors)
    finally:
        sender.close()
        listener.close()


def test_a_flood_of_bad_datagrams_logs_one_line_per_interval(tmp_path: Path) -> None:
    errors: list[str] = []
    stopped = threading.Event()
    listener = StopListener(socket_path(tmp_path), lambda engine_id: stopped.set(), errors.append)
    sender = StopSender(socket_path(tmp_path))
    try:
        for _ in range(2000):
            sender._socket.sendto(b"\xff\xfe", str(socket_path(tmp_path)))
        sender.send("after")
        assert stopped.wait(5)  # still listening, and the good datagram behind the flood arrives
        assert len(errors) == 1 and "UnicodeDecodeError" in errors[0]
    finally:
        sender.close()
        listener.close()


def test_without_a_listener_the_sender_says_so(tmp_path: Path) -> None:
    sender = StopSender(socket_path(tmp_path))
    assert sender.send("nobody-listens") is False
    assert sender.send("x" * 5000) is False


def test_a_path_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ValueError, match="longer than"):
        StopListener(socket_path(deep), lambda _: None, lambda _: None)


@pytest.mark.server
def test_the_cpu_engine_step_listens_in_its_model_folder(cpu_server) -> None:
    path = socket_path(cpu_server.run_dir / "model_repository" / "tensorrt_llm")
    assert path.is_socket() and stat.S_IMODE(path.stat().st_mode) == 0o600
