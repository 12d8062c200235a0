"""The client's process-wide state and its sender thread.

The hot path (``_cphase`` or its twin ``_phase_py``) appends event tuples to
``core.buf`` and calls back into Python only when the list reaches
``core.wake_at``.  The sender never polls:

* **deep sleep** (nothing in flight): ``wake_at = 0``, so the first event
  wakes it at once and is sent at once - a sparse hint is delivered promptly;
* **batching window** (events flowing): ``wake_at = batch_wake``; the sender
  sleeps ``flush_interval_s`` (50 ms) and then sends everything that came in,
  or is woken early when the list reaches ``batch_wake`` events;
* after a window in which nothing came, it goes back to deep sleep; a hint that
  came alone (the last send was more than a window ago) needs no window at all.

So a program that hints continuously is interrupted about 20 times a second
whatever its phase rate, instead of every 2 ms: the sender thread takes the
GIL only for those rounds (DESIGN section 9: a 2 ms period cost HF generate
11-19 % on an H200).

Accounting is honest: an event is *handed* when ZeroMQ took it
(ZMQ_IMMEDIATE: only onto a live connection), *delivered* when the daemon
acknowledged it, *rejected* when the daemon refused it, and *dropped* (by
reason) when it never left the process.  Nothing here raises into the program.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import os
import sys
import threading
import time
from typing import Any

from . import protocol as P
from .config import ClientConfig, ipc_path, socket_dir_problem

__all__ = ["CURRENT", "ROOT", "Runtime", "get_runtime", "impl"]


def _load_impl() -> Any:
    """The C hot path if built (and not refused with GPUOS_HINT_PURE=1), else the Python twin."""
    if os.environ.get("GPUOS_HINT_PURE", "") in ("", "0"):
        try:
            from . import _cphase

            return _cphase
        except ImportError:
            pass
    from . import _phase_py

    return _phase_py


impl = _load_impl()

# The innermost open phase in this context: (span_id, depth, scoped class,
# the enclosing frame, tid).  A linked stack in a ContextVar: each thread and
# each asyncio task sees its own, and exit restores the parent without a Token.
ROOT: tuple[Any, ...] = (0, 0, None, None, 0)
CURRENT: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("gpuos_phase", default=ROOT)

_monotonic_ns = time.monotonic_ns


def _self_start_ticks() -> int:
    """Field 22 of /proc/self/stat: with the pid, our identity to the daemon."""
    try:
        with open("/proc/self/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _check_name(name: Any, what: str = "name") -> str:
    """A phase, mark or class name, or ValueError (misuse is the developer's to see, at the call)."""
    try:
        return P.check_name(name, what=what)
    except P.ProtocolError as exc:
        raise ValueError(str(exc)) from None


_ok_attr_keys: set[str] = set()
_MAX_ATTRS = P.LIMITS.max_attrs
_MAX_VALUE_LEN = P.LIMITS.max_attr_value_len


def _check_attrs(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """Validate phase/mark attrs: keys once (cached), values by exact type (cheap), else in full.

    ``attrs`` is the call's own ``**kwargs`` dict, so it is returned as it is, not copied.
    """
    if not attrs:
        return None
    if len(attrs) <= _MAX_ATTRS:
        for key, value in attrs.items():
            if key not in _ok_attr_keys:
                break
            t = type(value)
            if t is str or t is bytes:
                if len(value) > _MAX_VALUE_LEN:
                    break
            elif not (t is int or t is float or t is bool or value is None):
                break
        else:
            return attrs
    try:
        checked = P.check_attrs(attrs)
    except P.ProtocolError as exc:
        raise ValueError(str(exc)) from None
    if len(_ok_attr_keys) < 4096:
        _ok_attr_keys.update(attrs)
    return checked


def _join_trace(attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    """A top-level phase while OpenTelemetry is loaded: carry the current span's traceparent.

    The hot path calls this only when ``opentelemetry.trace`` is in sys.modules, so a program
    without OpenTelemetry pays one dict lookup per top-level phase.  A phase that already has
    the most attrs allowed keeps them (one more would get the begin event refused).
    """
    from ._otel import current_traceparent

    tp = current_traceparent()
    if tp is None or (attrs and (len(attrs) >= P.LIMITS.max_attrs or "traceparent" in attrs)):
        return attrs
    return {**attrs, "traceparent": tp} if attrs else {"traceparent": tp}


class Runtime:
    """One per process (a forked child builds its own)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.disabled = config.disabled
        self.pid = os.getpid()
        self.pid_start = _self_start_ticks()
        self.max_buffered = config.max_buffered
        self.core = impl.Core(
            CURRENT,
            ROOT,
            self._slow_push,
            self.drop,
            self._device_edge,
            _check_name,
            _check_attrs,
            max_depth=P.LIMITS.max_depth,
            ru_min_ns=config.rusage_min_ns,
            rusage=config.rusage,
            disabled=config.disabled,
            on_top=_join_trace,
        )
        impl.set_core(self.core)
        self.process_class: str | None = None
        self._class_pending: tuple[int, str | None] | None = None
        # counters (written by the sender, or under _lock)
        self.handed_events = 0
        self.handed_batches = 0
        self.delivered = 0
        self.rejected = 0
        self.rejected_by_reason: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()
        self.full_drops = 0
        self.errors = 0
        self.last_error: str | None = None
        self.daemon_caps: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._sock: Any = None
        self._ctx: Any = None
        self._pending: tuple[bytes, int] | None = None  # one packed batch ZeroMQ refused, and its size
        self._carry: list[tuple[Any, ...]] = []  # taken events not yet packed (ZeroMQ refused the rest)
        self._seq = 0
        self._hello_due = True
        self._next_heartbeat = 0.0
        self._rounds = 0
        self._in_round = False  # the sender is between taking events and handing them over
        self._in_flight = 0  # events it holds in that window
        self._round_first_t = 0  # CLOCK_MONOTONIC ns of the first and last user event of the last round
        self._round_last_t = 0
        self._device_pending: collections.deque[Any] = collections.deque()
        self._device_open: dict[int, Any] = {}  # span_id -> device start event
        self.device_marks = 0  # __device__ marks made (device intervals resolved)
        self.device_anchor_misses = 0  # rounds whose clock anchor did not complete in time
        # Resolved pairs waiting for CUPTI's records (busy time on): (span, dev_begin, dev_end, since).
        self._device_waiting: collections.deque[Any] = collections.deque()
        self.device_busy_unresolved = 0  # marks sent without busy time: the records did not come in time

    # ----------------------------------------------------------- state views
    @property
    def buf(self) -> list[tuple[Any, ...]]:
        """Events the hot path has buffered (the sender swaps this list out)."""
        return self.core.buf  # type: ignore[no-any-return]

    @property
    def open(self) -> dict[int, tuple[Any, ...]]:
        """span_id -> begin event of this process's open phases (for heartbeats)."""
        return self.core.open  # type: ignore[no-any-return]

    def hold(self) -> None:
        """Keep events in the buffer and never start the sender (tests inspect ``buf``)."""
        self.core.wake_at = 1 << 40

    # ---------------------------------------------------- hot-path callbacks
    def push(self, ev: tuple[Any, ...]) -> None:
        """Buffer an event from Python code (mark, class, bye): same rules as the hot path."""
        if self.disabled:
            return
        core = self.core
        if len(core.buf) < core.wake_at:
            core.buf.append(ev)
        else:
            self._slow_push(ev)

    def _slow_push(self, ev: tuple[Any, ...]) -> None:
        """The buffer reached its wake mark: wake the sender, or drop when full."""
        if self.disabled:
            return
        core = self.core
        if len(core.buf) >= self.max_buffered:
            self.full_drops += 1  # lock-free on purpose: a race can only undercount by one
            self.last_error = "dropped: buffer_full (the daemon is absent or too slow)"
            return
        core.buf.append(ev)
        core.wake_at = self.max_buffered  # fast path again until the sender re-arms
        self.wake()

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.drops[reason] += n
            self.last_error = f"dropped: {reason}"

    def wake(self) -> None:
        if self._thread is None:
            self._start()
        self._wake.set()

    def _device_edge(self, begin: bool, span_id: int) -> None:
        from . import device

        if begin:
            device.begin(self, span_id)
        else:
            device.end(self, span_id)

    def set_process_class(self, cls: str | None) -> None:
        """Process-wide class; the sender emits the CLASS event (so an undone one never leaves)."""
        self.process_class = cls
        self._class_pending = (_monotonic_ns(), cls)
        if self.core.wake_at == 0:
            self.wake()

    # ------------------------------------------------------------------ sender
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self.disabled or self.pid != os.getpid():
                return
            t = threading.Thread(target=self._run, name="gpuos-hint-sender", daemon=True)
            self._thread = t
            t.start()

    def _connect(self) -> bool | None:
        """True: connected.  None: not yet (no socket dir: retry later).  False: never (gave up)."""
        if self._sock is not None:
            return True
        path = ipc_path(self.config.endpoint)
        if path is not None:
            problem = socket_dir_problem(path.parent, os.geteuid())
            if problem is not None:
                if not os.path.lexists(path.parent):
                    self.last_error = f"no daemon yet: {problem}"
                    return None  # the daemon may start later: events wait (bounded), then drop
                # Someone else's directory (or a symlink, or writable by others): an impostor
                # could be listening there.  Refuse, say why, and count what was buffered.
                self._give_up(f"refusing {self.config.endpoint}: {problem}", reason="unsafe_socket_dir")
                return False
        try:
            import zmq
        except ImportError as exc:  # fail-open: no pyzmq, no hints
            self._give_up(f"pyzmq not importable: {exc}")
            return False
        try:
            self._ctx = zmq.Context(io_threads=1)
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
            sock.setsockopt(zmq.RCVHWM, 1000)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only onto a live connection: "handed" means something
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.connect(self.config.endpoint)
        except Exception as exc:
            self._give_up(f"cannot connect to {self.config.endpoint}: {exc}")
            return False
        self._sock = sock
        return True

    def _give_up(self, msg: str, reason: str = "no_transport") -> None:
        """No transport at all: stop hinting, and count what was buffered as dropped."""
        self._fail(msg)
        self.disabled = True
        self.core.disabled = 1
        lost = len(self.core.take()) + len(self._carry)
        self._carry = []
        if lost:
            self.drop(reason, lost)
        self.last_error = msg

    def _fail(self, msg: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = msg

    def _run(self) -> None:
        cfg = self.config
        core = self.core
        backoff = 0.0
        last_ev_t = 0
        window_ns = int(cfg.flush_interval_s * 1e9)
        wake = self._wake
        while not self._stop:
            try:
                moved, blocked = self._round()
            except Exception as exc:  # never let the sender die silently
                self._fail(f"sender: {type(exc).__name__}: {exc}")
                moved, blocked = False, True
            if self._stop or self.disabled:
                break
            wake.clear()
            if blocked:  # ZeroMQ refused (no daemon, or HWM): retry with backoff; new events pile up
                backoff = min(max(backoff * 2, 0.005), 0.25)
                core.wake_at = self.max_buffered
                wake.wait(backoff)
                continue
            backoff = 0.0
            if moved:
                # Sparse hints (the gap before the first event of this round was longer than a
                # window) go straight back to deep sleep: one wake-up per hint, no empty window
                # after it.  A stream gets batching windows: at most ~1/flush_interval_s wake-ups.
                gap = self._round_first_t - last_ev_t
                last_ev_t = self._round_last_t
                sparse = gap > window_ns and not core.buf and not self._device_pending and not self._device_waiting
                if not sparse:
                    core.wake_at = cfg.batch_wake  # a batching window: woken early only by a full batch
                    wake.wait(cfg.flush_interval_s)
                    continue
            elif self._device_pending or self._device_waiting:
                core.wake_at = cfg.batch_wake
                wake.wait(cfg.flush_interval_s)  # device events to poll: short naps, not a deep sleep
                continue
            # Deep sleep: the next event wakes us at once (wake_at = 0).
            core.wake_at = 0
            if core.buf or self._class_pending is not None:
                continue
            wake.wait(max(0.0, self._next_heartbeat - time.monotonic()) if core.open else None)

    def _round(self) -> tuple[bool, bool]:
        """One sender round (see _round_inner); while it runs, taken events count as buffered."""
        self._in_round = True  # before anything is taken: flush() and stats() must not see a gap
        try:
            return self._round_inner()
        finally:
            self._in_flight = 0
            self._in_round = False

    def _round_inner(self) -> tuple[bool, bool]:
        """One sender round: replies, the refused batch, hello, events, heartbeat.

        Returns (moved user events, ZeroMQ refused something).
        """
        self._rounds += 1
        connected = self._connect()
        if not connected:
            return False, connected is None  # None: retry with backoff
        self._read_replies()
        if self._pending is not None:
            data, n = self._pending
            if not self._send(data, n):
                return False, True
            self._pending = None
        events: list[Any] = []
        if self._hello_due:
            events.append(self._hello_event())
            self._hello_due = False
        if self._class_pending is not None:
            t, cls = self._class_pending
            self._class_pending = None
            events.append((P.CLASS, t, impl.tid(), cls))
        # Device marks are collected *before* the events are taken and sent *after* them: a pair
        # seen complete here had its phase's begin and end pushed before this point, so they are
        # in this take (or went earlier), and the daemon always meets a mark after its span's
        # begin.  (Sent first, a mark for a span that began and ended within this window reached
        # the daemon before the span did and was lost: 60 % of the H200's synchronous spans.)
        marks: list[Any] = []
        if self._device_pending or self._device_waiting:
            from .device import collect_device_times

            marks = collect_device_times(self)
        carry, self._carry = self._carry, []
        now = time.monotonic()
        self._round_first_t = self._round_last_t = 0
        heartbeat = now >= self._next_heartbeat
        if heartbeat:
            # The registry copy and the events are taken together, and the heartbeat goes
            # right after those events: it then lists exactly the phases open at that point.
            taken, opened, t_snap = self.core.take_with_open()
        else:
            taken = self.core.take()
        moved = bool(taken or carry)
        if moved:  # the hint times of this round (every event's item 1), for the sparse test
            first = carry[0] if carry else taken[0]
            self._round_first_t, self._round_last_t = first[1], (taken[-1] if taken else carry[-1])[1]
        if carry:
            events.extend(carry)
        events.extend(taken)
        events.extend(marks)
        if heartbeat:
            events.append(self._heartbeat_event(opened, t_snap))
            self._next_heartbeat = now + self.config.heartbeat_s
        size = self.config.batch_size
        self._in_flight = len(events)
        for i in range(0, len(events), size):
            chunk = events[i : i + size]
            sent_ok = self._send(self._pack(chunk), len(chunk))
            self._in_flight -= len(chunk)  # now handed, or held in _pending
            if not sent_ok:
                rest = events[i + size :]
                if len(rest) > self.max_buffered:
                    self.drop("buffer_full", len(rest) - self.max_buffered)
                    rest = rest[: self.max_buffered]
                self._carry = rest
                return moved, True
        return moved, False

    def _pack(self, events: list[Any]) -> bytes:
        self._seq += 1
        dropped = self.total_dropped()
        return P.encode_batch(self.pid, self.pid_start, self._seq, dropped, events)

    def _send(self, data: bytes, n: int) -> bool:
        import zmq

        try:
            self._sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        except zmq.Again:
            self._pending = (data, n)  # no live connection, or HWM: keep it; new events back up, then drop
            return False
        except zmq.ZMQError as exc:
            self._fail(f"send: {exc}")
            self.drop("send_error", n)
            return True
        self.handed_batches += 1
        self.handed_events += n
        return True

    def _read_replies(self) -> None:
        import zmq

        sock = self._sock
        for _ in range(256):
            if not sock.get(zmq.EVENTS) & zmq.POLLIN:  # cheaper than a recv that raises Again
                return
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = P.decode_reply(raw)
            if msg is None:
                continue
            op = msg.get("op")
            if op == P.REPLY_ACK:
                ok, bad = msg.get("ok", 0), msg.get("bad", 0)
                if type(ok) is int and type(bad) is int:
                    self.delivered += ok
                    if bad:
                        self.rejected += bad
                        reason = msg.get("why")
                        self.rejected_by_reason[reason if isinstance(reason, str) else "unknown"] += bad
                        self.last_error = f"rejected by the daemon: {reason}"
            elif op == P.REPLY_WELCOME:
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
            "fast_path": impl.__name__.rsplit(".", 1)[-1],
        }
        return (P.HELLO, info["mono_ns"], impl.tid(), info)

    def _heartbeat_event(self, opened: dict[int, tuple[Any, ...]], t_snap: int) -> tuple[Any, ...]:
        """The open phases as of t_snap (the daemon counts a span it holds open, begun by then and
        not listed, as having lost its end)."""
        spans = [
            (ev[3], ev[4], ev[2], ev[1], ev[5], ev[6], ev[7]) for ev in list(opened.values())[: P.LIMITS.max_open_spans]
        ]
        stats = {"dropped": self.total_dropped(), "buffered": len(self.core.buf), "sent": self.handed_events}
        stats["cls"] = self.process_class
        return (P.HEARTBEAT, t_snap, impl.tid(), spans, stats)

    # ------------------------------------------------------- flush, teardown
    def undelivered(self) -> int:
        """Handed to ZeroMQ but neither acknowledged nor rejected by the daemon (yet)."""
        return max(0, self.handed_events - self.delivered - self.rejected)

    def idle(self) -> bool:
        return (
            not self._in_round
            and not self.core.buf
            and not self._carry
            and self._pending is None
            and self._class_pending is None
        )

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything buffered was delivered: acknowledged by the daemon."""
        if self.disabled:
            return True
        deadline = time.monotonic() + timeout
        while True:
            if self.idle() and self.undelivered() == 0 and self._thread is not None:
                return True
            if self._thread is None and self.idle():
                return True  # nothing was ever hinted
            if time.monotonic() >= deadline:
                return False
            self.wake()  # also makes the sender read the acknowledgements
            time.sleep(0.001)

    def shutdown(self, flush_s: float | None = None) -> None:
        """Stop the sender, deliver what is buffered within a bounded time, say bye."""
        thread = self._thread
        if thread is None or self.disabled:
            return
        linger = flush_s if flush_s is not None else self.config.exit_flush_s
        path = ipc_path(self.config.endpoint)
        reachable = path is None or path.exists()
        if reachable and linger > 0:
            self.push((P.BYE, _monotonic_ns(), impl.tid()))
            self.flush(linger)
        self._stop = True
        self._wake.set()
        thread.join(timeout=1.0)
        if thread.is_alive():
            return  # the sender is stuck; leave the socket to it
        try:
            if self._sock is not None:
                self._sock.close(linger=0)
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
            "fast_path": impl.__name__.rsplit(".", 1)[-1],
            "handed": self.handed_events,
            "delivered": self.delivered,
            "undelivered": self.undelivered(),
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "dropped": sum(drops.values()),
            "dropped_by_reason": drops,
            "buffered": len(self.core.buf)
            + len(self._carry)
            + (self._pending[1] if self._pending else 0)
            + self._in_flight,  # taken by the sender, not yet handed over
            "batches": self.handed_batches,
            "sender_rounds": self._rounds,
            "open_phases": len(self.core.open),
            "errors": self.errors,
            "last_error": self.last_error,
            "daemon": (self.daemon_caps or {}).get("daemon"),
            "device": {
                "marks": self.device_marks,
                "pending": len(self._device_pending),
                "open": len(self._device_open),
                "anchor_misses": self.device_anchor_misses,
                "anchor_err_ns": _device_anchor_err_ns(),
                "busy_waiting": len(self._device_waiting),
                "busy_unresolved": self.device_busy_unresolved,
                "busy": _device_busy_stats(),
            },
        }


def _device_anchor_err_ns() -> int | None:
    """The device clock anchor's error bound (device.py), None before device timing was used."""
    dev = sys.modules.get(__package__ + ".device")
    return None if dev is None else dev.anchor_err_ns()


def _device_busy_stats() -> dict[str, Any] | None:
    """The CUPTI tracer's counters if busy time was asked for (device.py is imported by then)."""
    dev = sys.modules.get(__package__ + ".device")
    return None if dev is None else dev.tracer_stats()


def _client_version() -> str:
    from . import __version__

    return __version__


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    rt = _runtime
    if rt is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime(ClientConfig.from_env())
            rt = _runtime
    return rt


def _after_fork_in_child() -> None:
    # A fresh runtime (and core) before any code of the child runs: whatever the
    # parent's sender was doing at the fork - starting, importing, sending - the
    # child never touches its buffers, locks or sockets.
    global _runtime, _runtime_lock
    _runtime_lock = threading.Lock()
    if _runtime is not None:
        _runtime = Runtime(_runtime.config)


def _deliver_at_thread_shutdown() -> None:
    """threading's own exit hook: also runs in multiprocessing children, which skip atexit."""
    rt = _runtime
    if rt is not None and rt.pid == os.getpid() and rt._thread is not None and not rt.disabled:
        path = ipc_path(rt.config.endpoint)
        if path is None or path.exists():
            rt.flush(rt.config.exit_flush_s)


def _at_exit() -> None:
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
_register_thread_exit = getattr(threading, "_register_atexit", None)
if _register_thread_exit is not None:
    try:
        _register_thread_exit(_deliver_at_thread_shutdown)
    except RuntimeError:  # imported during interpreter shutdown
        pass
