"""The client's process-wide state: event buffer, open-span registry, sender thread.

The hot path (``push``) appends a tuple to a deque and, at most, sets an
Event when the sender is asleep.  Everything that costs - msgpack, ZeroMQ,
reading replies - happens on the sender thread, in batches.  Nothing here may
raise into the user's program or block it: every failure is counted in
``drops`` / ``errors`` and remembered in ``last_error``.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import os
import sys
import threading
import time
from typing import Any

from . import protocol as P
from .config import ClientConfig, ipc_path

__all__ = ["Runtime", "get_runtime"]

_monotonic_ns = time.monotonic_ns


def _self_start_ticks() -> int:
    """Field 22 of /proc/self/stat: with the pid, our identity to the daemon."""
    try:
        with open("/proc/self/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


class Runtime:
    """One per process (a forked child builds its own)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.disabled = config.disabled
        self.pid = os.getpid()
        self.pid_start = _self_start_ticks()
        self.buf: collections.deque[tuple[Any, ...]] = collections.deque()
        self.max_buffered = config.max_buffered
        #: span_id -> its begin event, for heartbeats (open-phase stacks).
        self.open: dict[int, tuple[Any, ...]] = {}
        self.ids = itertools.count(1)
        self.process_class: str | None = None
        self._class_pending: tuple[int, str | None] | None = None
        # counters (read by stats(); written under _lock off the hot path)
        self.sent_events = 0
        self.sent_batches = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.full_drops = 0  # "buffer_full" drops, counted lock-free on the hot path
        self._full_seen = 0
        self.errors = 0
        self.last_error: str | None = None
        self.connected_once = False
        self.daemon_caps: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        #: True while the sender sleeps; the hot path wakes it only then.
        self.sleeping = True
        self._thread: threading.Thread | None = None
        self._sock: Any = None
        self._ctx: Any = None
        self._pending: bytes | None = None  # one packed batch zmq refused (HWM)
        self._seq = 0
        self._hello_due = True
        self._next_heartbeat = 0.0
        self._device_pending: collections.deque[Any] = collections.deque()
        self._device_open: dict[
            int, Any
        ] = {}  # span_id -> CUDA start event  # device-timed spans awaiting their CUDA events

    # ---------------------------------------------------------------- hot path
    def push(self, ev: tuple[Any, ...]) -> None:
        buf = self.buf
        if len(buf) >= self.max_buffered:
            self.full_drops += 1  # lock-free on purpose: a race can only undercount by one
            return
        buf.append(ev)
        if self.sleeping:
            self.wake()

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.drops[reason] += n
            self.last_error = f"dropped: {reason}"

    def wake(self) -> None:
        if self._thread is None:
            self._start()
        self.sleeping = False
        self._wake.set()

    def set_process_class(self, cls: str | None) -> None:
        """Process-wide class; the sender emits the CLASS event (so an undone one never leaves)."""
        self.process_class = cls
        self._class_pending = (_monotonic_ns(), cls)
        if self.sleeping:
            self.wake()

    # ------------------------------------------------------------------ sender
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self.disabled:
                return
            t = threading.Thread(target=self._run, name="gpuos-hint-sender", daemon=True)
            self._thread = t
            t.start()

    def _connect(self) -> bool:
        if self._sock is not None:
            return True
        try:
            import zmq
        except ImportError as exc:  # fail-open: no pyzmq, no hints
            self._fail(f"pyzmq not importable: {exc}")
            self.disabled = True
            return False
        try:
            self._ctx = zmq.Context(io_threads=1)
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
            sock.setsockopt(zmq.RCVHWM, 64)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.connect(self.config.endpoint)
        except Exception as exc:
            self._fail(f"cannot connect to {self.config.endpoint}: {exc}")
            self.disabled = True
            return False
        self._sock = sock
        return True

    def _fail(self, msg: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = msg

    def _run(self) -> None:
        cfg = self.config
        idle_since = time.monotonic()
        while not self._stop:
            try:
                busy = self._round()
            except Exception as exc:  # never let the sender die silently
                self._fail(f"sender: {type(exc).__name__}: {exc}")
                busy = False
                time.sleep(cfg.flush_interval_s)
            now = time.monotonic()
            if busy or self.buf:
                idle_since = now
                time.sleep(cfg.flush_interval_s)
                continue
            if now - idle_since < cfg.idle_after_s or self._device_pending:
                time.sleep(cfg.flush_interval_s)
                continue
            # Deep sleep until woken by the hot path or the next heartbeat.
            self.sleeping = True
            if self.buf or self._class_pending:  # re-check: a push may have missed the flag
                self.sleeping = False
                continue
            self._wake.wait(max(0.0, self._next_heartbeat - now) if self.open else cfg.heartbeat_s)
            self._wake.clear()
            self.sleeping = False
            idle_since = time.monotonic()

    def _round(self) -> bool:
        """One sender round: replies, pending batch, hello, events, heartbeat.

        True if it moved user events (a heartbeat alone does not keep the sender awake).
        """
        if not self._connect():
            self.buf.clear()
            return False
        self._read_replies()
        sent = False
        if self._pending is not None:
            if not self._send(self._pending):
                return False
            self._pending = None
        events: list[Any] = []
        if self._hello_due:
            events.append(self._hello_event())
            self._hello_due = False
        if self._class_pending is not None:
            t, cls = self._class_pending
            self._class_pending = None
            events.append((P.CLASS, t, threading.get_native_id(), cls))
        if self._device_pending:
            from .device import collect_device_times

            events.extend(collect_device_times(self))
        now = time.monotonic()
        heartbeat = now >= self._next_heartbeat
        buf = self.buf
        while True:
            n = min(len(buf), self.config.batch_size - len(events))
            sent = sent or n > 0
            popleft = buf.popleft
            events.extend(popleft() for _ in range(n))
            if heartbeat and len(events) < self.config.batch_size:
                events.append(self._heartbeat_event())
                heartbeat = False
                self._next_heartbeat = now + self.config.heartbeat_s
            if not events:
                return sent
            if not self._send(self._pack(events)):
                return sent
            events = []
            if not buf and not heartbeat:
                return sent

    def _pack(self, events: list[Any]) -> bytes:
        self._seq += 1
        dropped = self.total_dropped()
        if self.full_drops != self._full_seen:
            self._full_seen = self.full_drops
            self.last_error = "dropped: buffer_full (the daemon is absent or too slow)"
        data = P.encode_batch(self.pid, self.pid_start, self._seq, dropped, events)
        self.sent_events += len(events)
        return data

    def _send(self, data: bytes) -> bool:
        import zmq

        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self._pending = data  # HWM reached: keep it; new events back up, then drop
            return False
        except zmq.ZMQError as exc:
            self._fail(f"send: {exc}")
            return False
        self.sent_batches += 1
        return True

    def _read_replies(self) -> None:
        import msgpack
        import zmq

        sock = self._sock
        for _ in range(16):
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.connected_once = True
            try:
                msg = msgpack.unpackb(raw, raw=False)
            except Exception:
                continue
            op = msg.get("op") if isinstance(msg, dict) else None
            if op == P.REPLY_WELCOME:
                self.daemon_caps = msg
            elif op == P.REPLY_RESYNC:  # the daemon restarted and lost us: say who we are again
                self._hello_due = True
                self._next_heartbeat = 0.0
                if self.process_class is not None:
                    self._class_pending = (_monotonic_ns(), self.process_class)

    def _hello_event(self) -> tuple[Any, ...]:
        info = {
            "wall_ns": time.time_ns(),
            "mono_ns": _monotonic_ns(),
            "argv": [a[:256] for a in sys.argv[:16]],
            "client": _client_version(),
            "proto": P.VERSION,
            "python": sys.version.split()[0],
        }
        return (P.HELLO, info["mono_ns"], threading.get_native_id(), info)

    def _heartbeat_event(self) -> tuple[Any, ...]:
        opened = self.open.copy()  # atomic under the GIL
        spans = [
            (ev[3], ev[4], ev[2], ev[1], ev[5], ev[6], ev[7]) for ev in list(opened.values())[: P.LIMITS.max_open_spans]
        ]
        stats = {"dropped": self.total_dropped(), "buffered": len(self.buf)}
        stats["sent"] = self.sent_events
        stats["cls"] = self.process_class
        return (P.HEARTBEAT, _monotonic_ns(), threading.get_native_id(), spans, stats)

    # ----------------------------------------------------------------- teardown
    def shutdown(self, flush_s: float | None = None) -> None:
        """Stop the sender, flush what is buffered within a bounded time, say bye."""
        thread = self._thread
        if thread is None or self.disabled:
            return
        self._stop = True
        self._wake.set()
        thread.join(timeout=1.0)
        if thread.is_alive():
            return  # the sender is stuck; leave the socket to it
        try:
            import zmq

            self.buf.append((P.BYE, _monotonic_ns(), threading.get_native_id()))
            self._next_heartbeat = 0.0
            self._round()
            path = ipc_path(self.config.endpoint)
            reachable = path is None or path.exists()
            linger = flush_s if flush_s is not None else self.config.exit_flush_s
            if self._sock is not None:
                self._sock.setsockopt(zmq.LINGER, int(linger * 1000) if reachable else 0)
                self._sock.close()
                self._sock = None
            if self._ctx is not None:
                self._ctx.term()
        except Exception as exc:
            self._fail(f"shutdown: {exc}")

    def total_dropped(self) -> int:
        with self._lock:
            return sum(self.drops.values()) + self.full_drops

    def stats(self) -> dict[str, Any]:
        with self._lock:
            drops = dict(self.drops)
        if self.full_drops:
            drops["buffer_full"] = self.full_drops
        return {
            "enabled": not self.disabled,
            "endpoint": self.config.endpoint,
            "sent": self.sent_events,
            "batches": self.sent_batches,
            "dropped": sum(drops.values()),
            "dropped_by_reason": drops,
            "buffered": len(self.buf),
            "open_phases": len(self.open),
            "pending_batch": self._pending is not None,
            "errors": self.errors,
            "last_error": self.last_error,
            "daemon": (self.daemon_caps or {}).get("daemon"),
        }


def _client_version() -> str:
    from . import __version__

    return __version__


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
#: Per-thread cache of the native tid (see api._tid); cleared in a forked child.
tls = threading.local()


def get_runtime() -> Runtime:
    global _runtime
    rt = _runtime
    if rt is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime(ClientConfig.from_env())
            rt = _runtime
    return rt


def reset_runtime(config: ClientConfig | None = None) -> Runtime:
    """Replace the runtime (after fork, or from tests with another config).

    The old runtime's socket is abandoned, not closed: after fork() it belongs
    to the parent, and closing a ZeroMQ context in the child is unsafe.
    """
    global _runtime
    _runtime = Runtime(config or ClientConfig.from_env())
    return _runtime


def _after_fork_in_child() -> None:
    global _runtime
    tls.__dict__.clear()
    if _runtime is not None:
        _runtime = Runtime(_runtime.config)


def _at_exit() -> None:
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
