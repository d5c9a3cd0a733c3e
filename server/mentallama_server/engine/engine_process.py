"""The OpenVINO engine in a process of its own, for the CPU engine step's Triton stub.

Why: OpenVINO GenAI's `step()` holds the GIL for the whole step (its binding does not release it). When the stub
ran the engine itself, every other thread of the stub waited for the step in progress: at concurrency 8,
Triton's `execute()`, which only queues a request, took 52 ms per request, and requests waited 105 ms in Triton's
queue behind it before the engine saw them (Triton's statistics, docs/SERVING_PROFILE.md); responses waited the
same way. In a process of its own the steps hold only that process's GIL: the stub takes requests and sends
responses while a step runs.

`EngineProcess` has `OpenVinoEngine`'s interface (`start`, `submit`, `cancel`, `stats`, `shutdown`). It checks
requests here, from the same engine folder, so that a refusal names the field at once; the child runs
`OpenVinoEngine` and sends back each event and, when they change, its stats. Messages are pickled over a socket
pair (`multiprocessing.connection`) whose ends are both ours.

If the child dies, every request in flight ends with an error that says so, later submits are refused, and
`on_exit` is called (the engine step then ends its stub, so that the launcher restarts the server as when the stub
itself dies). The child ends when told to, or when its socket closes because the stub is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .ov_engine import EventCallback, OpenVinoEngine
from .types import EngineStats, GenerationRequest, TokenEvent

__all__ = ["EngineProcess"]

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.05
"""How often the child sends its stats when they changed (the stub's watcher reads them as often)."""
_SHUTDOWN_MESSAGE = "engine shut down before the request finished"


class EngineProcess:
    """`OpenVinoEngine(engine_dir, **settings)` run by `python` in a child process.

    Parameters:
        python: the interpreter for the child (the stub's `sys.executable` is the stub binary, not Python).
        python_path: import roots for the child (`PYTHONPATH`), as the stub got them.
        on_exit: called with the reason when the child ends without being told to (after the requests in flight
            got their errors).
    """

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        python: str = sys.executable,
        python_path: Sequence[str] = (),
        on_exit: Callable[[str], None] | None = None,
        **settings: Any,
    ) -> None:
        self.engine_dir = str(engine_dir)
        self.settings = settings
        self.spec = OpenVinoEngine(engine_dir, **settings)  # never started: its limits check requests here
        self.python = python
        self.python_path = list(python_path)
        self.on_exit = on_exit
        self._lock = threading.Lock()
        # Messages to the child go through a writer thread: a caller never blocks on a full socket (the intake
        # sends under the stub's pb_lock, which the reader needs to deliver the events that drain the other way).
        self._outbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        total = self.spec.scheduler["num_kv_blocks"]
        self._stats = EngineStats(0, 0, 0, 0, 0, total, 0)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._ended: str | None = None  # why the child is gone

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child and wait until its engine is loaded; RuntimeError with the reason if it is not."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        if self.python_path:
            env["PYTHONPATH"] = os.pathsep.join([*self.python_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._proc = subprocess.Popen(
            [self.python, "-m", __name__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
            start_new_session=True,  # the server's signals reach the stub, which stops the child in order
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(("start", self.engine_dir, self.settings))
        try:
            kind, detail = self._conn.recv()
        except (EOFError, OSError):
            kind, detail = "failed", f"it exited with code {self._proc.wait()}"
        if kind != "ready":
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"the engine process did not start: {detail}")
        self._threads = [
            threading.Thread(target=self._read_loop, name="engine-process-reader", daemon=True),
            threading.Thread(target=self._write_loop, name="engine-process-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        self._send(("stop", None))
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout)
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._fail_all(_SHUTDOWN_MESSAGE)

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- API (OpenVinoEngine's) --------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, on_event: EventCallback) -> None:
        """Queue `request`; ValueError (naming the field) when it is invalid or unsupported."""
        self.spec.check(request)
        with self._lock:
            if self._stopping or self._ended is not None or self._conn is None:
                raise RuntimeError(f"engine is not running{f': {self._ended}' if self._ended else ''}")
            if request.request_id in self._pending:
                raise ValueError(f"request_id {request.request_id!r} is already running")
            self._pending[request.request_id] = _Pending(on_event)
        self._send(("submit", request))

    def cancel(self, request_id: str) -> bool:
        """Stop a request; its final event says "cancelled". False if unknown or already cancelled."""
        with self._lock:
            pending = self._pending.get(request_id)
            if pending is None or pending.cancelled:
                return False
            pending.cancelled = True
        self._send(("cancel", request_id))
        return True

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- the stub's side ---------------------------------------------------------------------------------

    def _send(self, message: tuple[str, Any]) -> None:
        self._outbox.put(message)

    def _write_loop(self) -> None:
        assert self._conn is not None
        while (message := self._outbox.get()) is not None:
            with contextlib.suppress(OSError):  # a lost child is the reader's to report
                self._conn.send(message)

    def _read_loop(self) -> None:
        """Deliver the child's events. What arrived while the last callbacks ran is read at once, and each
        request's events among it become one (`_merge`): a consumer slower than the engine gets tokens coalesced,
        as `OpenVinoEngine`'s dispatcher gives them, rather than a backlog of one event per step."""
        assert self._conn is not None and self._proc is not None
        open_ = True
        while open_:
            messages = []
            try:
                messages.append(self._conn.recv())
                while self._conn.poll():
                    messages.append(self._conn.recv())
            except (EOFError, OSError):
                open_ = False
            events: dict[str, TokenEvent] = {}
            for kind, body in messages:
                if kind == "event":
                    event, self._stats = body
                    events[event.request_id] = _merge(events.get(event.request_id), event)
                elif kind == "stats":
                    self._stats = body
                elif kind == "stopped":
                    open_ = False
            for event in events.values():
                self._deliver(event)
        with self._lock:
            expected = self._stopping
        if expected:
            return
        code = self._proc.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        with self._lock:
            self._ended = ended = f"the engine process {how}"
        logger.error("%s", ended)
        # "is not healthy", as Triton words a dead stub: the SDK and the front door's HTTP side then answer
        # UNAVAILABLE / 503 (retry elsewhere or later), not as if the request were wrong.
        self._fail_all(f"{ended} and the request was lost: the engine is not healthy until the server restarts")
        if self.on_exit is not None:
            self.on_exit(ended)

    def _deliver(self, event: TokenEvent) -> None:
        rid = event.request_id
        with self._lock:
            pending = self._pending.pop(rid, None) if event.finished else self._pending.get(rid)
        if pending is None:
            return
        if event.finished and pending.callback_error is not None:  # its request was cancelled for that reason
            event = replace(event, finish_reason="error", error=pending.callback_error)
        try:
            pending.callback(event)
        except Exception as exc:  # one consumer's failure must not stop the others' events
            logger.error("event callback failed: %s", type(exc).__name__)
            if not event.finished:
                with self._lock:
                    pending.callback_error = f"event callback failed: {type(exc).__name__}: {exc}"
                    cancel = not pending.cancelled
                    pending.cancelled = True
                if cancel:
                    self._send(("cancel", rid))

    def _fail_all(self, message: str) -> None:
        with self._lock:
            victims, self._pending = self._pending, {}
        for rid, pending in victims.items():
            try:
                pending.callback(TokenEvent(rid, [], None, True, "error", message))
            except Exception as exc:
                logger.error("event callback failed: %s", type(exc).__name__)


@dataclass(eq=False)
class _Pending:
    """A request the child is running, as the stub sees it."""

    callback: EventCallback
    cancelled: bool = False
    callback_error: str | None = None  # why its consumer failed: its final event says so


def _merge(earlier: TokenEvent | None, later: TokenEvent) -> TokenEvent:
    """One event for a request's `earlier` and `later` ones (tokens joined; the outcome is the later one's)."""
    if earlier is None:
        return later
    log_probs = None
    if earlier.log_probs is not None or later.log_probs is not None:
        log_probs = [*(earlier.log_probs or ()), *(later.log_probs or ())]
    return replace(later, new_token_ids=[*earlier.new_token_ids, *later.new_token_ids], log_probs=log_probs)


# -- the child's side ------------------------------------------------------------------------------------


def serve(conn: Connection) -> None:
    """Run the engine the first message describes; take submits, cancels and the stop from `conn` and send back
    events and changed stats. Ends at the stop, or at once when the stub's end of the socket closes.

    While requests run, the generation thread itself takes what arrived, before each step (`before_step`): it holds
    the GIL already, where another thread would get it only once a step ends, one message per step (measured: 38 ms
    p50, 337 ms max from the stub's submit to here at concurrency 8), and would take it from the steps. This
    thread reads only while no request runs."""
    _, engine_dir, settings = conn.recv()
    reading = threading.Lock()  # one reader of `conn` at a time
    stop = threading.Event()
    idle = threading.Event()  # no request runs: this thread reads
    idle.set()
    running: set[str] = set()  # requests submitted and not finished, under `count_lock`
    count_lock = threading.Lock()
    send_lock = threading.Lock()
    engine: OpenVinoEngine | None = None

    def send(message: tuple[str, Any]) -> None:
        with send_lock:
            conn.send(message)

    def on_event(event: TokenEvent) -> None:
        assert engine is not None
        send(("event", (event, engine.stats())))  # the stats with it count it, as the engine's own do
        if event.finished:
            with count_lock:
                running.discard(event.request_id)
                if not running:
                    idle.set()

    def take(kind: str, body: Any) -> None:
        assert engine is not None
        if kind == "submit":
            with count_lock:
                running.add(body.request_id)
                idle.clear()
            try:
                engine.submit(body, on_event)
            except Exception as exc:  # checked in the stub already; a refusal here still ends the request
                on_event(TokenEvent(body.request_id, [], None, True, "error", f"engine refused the request: {exc}"))
        elif kind == "cancel":
            engine.cancel(body)
        elif kind == "stop":
            stop.set()

    def take_arrived() -> None:
        if not reading.acquire(blocking=False):
            return  # the other thread is taking them
        try:
            while conn.poll():
                take(*conn.recv())
        except (EOFError, OSError):
            os._exit(0)  # the stub is gone: nobody is left to answer
        except BaseException as exc:  # a message this side cannot take: end loudly, the stub fails the requests
            logger.critical("cannot take a message: %s: %s", type(exc).__name__, exc)
            os._exit(70)
        finally:
            reading.release()

    try:
        engine = OpenVinoEngine(engine_dir, before_step=take_arrived, **settings)
        engine.start()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", None))
    sent_stats: EngineStats | None = None
    next_stats = 0.0
    while not stop.is_set():
        if not idle.is_set():
            idle.wait(STATS_INTERVAL_S)
        elif conn.poll(STATS_INTERVAL_S):
            take_arrived()
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + STATS_INTERVAL_S
            stats = engine.stats()
            if stats != sent_stats:
                send(("stats", stats))
                sent_stats = stats
    engine.shutdown()  # its requests' final events go out before "stopped"
    send(("stopped", None))


def main(argv: Sequence[str] = sys.argv[1:]) -> None:
    logging.basicConfig(level=logging.WARNING, format="engine process: %(levelname)s %(message)s")
    serve(Connection(int(argv[0])))


if __name__ == "__main__":
    main()
