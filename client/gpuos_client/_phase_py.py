"""The pure-Python twin of the ``_cphase`` extension: same objects, same events.

Used when the extension is not built (no compiler at install time) or when
``GPUOS_HINT_PURE=1``.  It is about three times slower per phase than the C
path (docs/benchmarks.md has both), which is why the C path exists; the
behaviour is the same and the test suite runs against both.

The per-process state is one :class:`Core`; :func:`set_core` installs it, and
:class:`Phase` objects find it there on every edge, so a forked child that
installs a fresh core never touches its parent's buffers.
"""

from __future__ import annotations

import contextvars
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Core", "Phase", "frame", "monotonic_ns", "set_core", "set_frame", "tid"]

KIND_BEGIN = 1
KIND_END = 2

monotonic_ns = time.monotonic_ns
_getrusage = resource.getrusage
_RUSAGE_THREAD: int = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
_process_time_ns = time.process_time_ns
_thread_time_ns = time.thread_time_ns
_get_native_id = threading.get_native_id
_modules = sys.modules

_core: Core | None = None
_fork_gen = 0
#: Per-thread caches: (fork generation, tid) and (generation, t_read, reading).
_tls = threading.local()


def _after_fork_child() -> None:
    global _fork_gen
    _fork_gen += 1


os.register_at_fork(after_in_child=_after_fork_child)


def tid() -> int:
    """This thread's kernel tid; gettid() is a syscall, so it is cached per thread (and per fork)."""
    try:
        gen, value = _tls.tid
        if gen == _fork_gen:
            return value  # type: ignore[no-any-return]
    except AttributeError:
        pass
    value = _get_native_id()
    _tls.tid = (_fork_gen, value)
    return value


def _edge_rusage(core: Core, t: int) -> tuple[int, ...] | None:
    if not core.rusage:
        return None
    last = getattr(_tls, "ru", None)
    if last is not None and last[0] == _fork_gen and t - last[1] < core.ru_min_ns:
        return None  # the daemon uses this thread's last reading (the bound is the gap)
    try:
        th = _thread_time_ns()  # the thread's own clock: exact (getrusage's utime+stime is scaled ticks)
        r = _getrusage(_RUSAGE_THREAD)
        p = _process_time_ns()
    except OSError:
        return None
    reading = (
        t,
        th,
        p,
        r.ru_nvcsw,
        r.ru_nivcsw,
        r.ru_minflt,
        r.ru_majflt,
    )
    _tls.ru = (_fork_gen, t, reading)
    return reading


class Core:
    """The per-process hot-path state: event list, open phases, wake mark."""

    def __init__(
        self,
        current: contextvars.ContextVar[tuple[Any, ...]],
        root: tuple[Any, ...],
        on_slow: Callable[[tuple[Any, ...]], None],
        on_drop: Callable[[str], None],
        on_device: Callable[[bool, int], None],
        check_name: Callable[[Any], str],
        check_attrs: Callable[[dict[str, Any]], dict[str, Any] | None],
        max_depth: int = 64,
        ru_min_ns: int = 20_000,
        rusage: bool = True,
        disabled: bool = False,
        on_top: Callable[[dict[str, Any] | None], dict[str, Any] | None] | None = None,
    ) -> None:
        self.buf: list[tuple[Any, ...]] = []
        self.open: dict[int, tuple[Any, ...]] = {}
        self.names: dict[str, str] = {}
        self.current = current
        self.root = root
        self.on_slow = on_slow
        self.on_drop = on_drop
        self.on_device = on_device
        self.check_name = check_name
        self.check_attrs = check_attrs
        self.on_top = on_top
        self.max_depth = max_depth
        self.ru_min_ns = ru_min_ns
        self.rusage = int(rusage)
        self.disabled = int(disabled)
        self.device_ok = 1
        self.next_id = 0
        self.wake_at = 0  # the first event wakes (and starts) the sender

    def take(self) -> list[tuple[Any, ...]]:
        """Swap the event list for an empty one (atomic under the GIL); return the old one."""
        buf, self.buf = self.buf, []
        return buf

    def take_with_open(self) -> tuple[list[tuple[Any, ...]], dict[int, tuple[Any, ...]], int]:
        """(take(), a copy of open, now) - atomic in the C twin; here a thread switch between these
        statements is possible but needs a switch request to land exactly there."""
        opened = self.open.copy()
        buf, self.buf = self.buf, []
        return buf, opened, monotonic_ns()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def rusage_now(self) -> tuple[int, ...] | None:
        _tls.ru = None  # force a fresh reading
        return _edge_rusage(self, monotonic_ns())


def set_core(core: Core | None) -> None:
    global _core
    _core = core


def frame() -> tuple[Any, ...]:
    """This context's innermost frame (span_id, depth, scoped class, parent frame, tid)."""
    assert _core is not None
    return _core.current.get()


def set_frame(value: tuple[Any, ...]) -> None:
    """Replace this context's innermost frame (workload_class scopes)."""
    assert _core is not None
    _core.current.set(value)


def _checked_name(core: Core, name: Any) -> str:
    hit = core.names.get(name) if type(name) is str else None
    if hit is not None:
        return hit
    ok = core.check_name(name)
    if len(core.names) < 65536:
        core.names[ok] = ok
    return ok


class Phase:
    """The pure-Python base of ``gpuos_client.phase`` (see api.phase for the contract)."""

    __slots__ = ("attrs", "device", "name")

    def __init__(self, name: str, /, *, device: bool = False, **attrs: Any) -> None:
        core = _core
        if core is None:
            raise RuntimeError("gpuos_client core not installed")
        self.name = _checked_name(core, name)
        self.attrs = core.check_attrs(attrs) if attrs and not core.disabled else None
        self.device = bool(device)

    def __enter__(self) -> Any:
        core = _core
        if core is None or core.disabled:
            return self
        try:
            cur = core.current.get()
            if cur[1] >= core.max_depth:
                core.on_drop("too_deep")
                return self
            t = monotonic_ns()
            core.next_id += 1
            sid = core.next_id
            th = tid()
            cls = cur[2]
            attrs = self.attrs
            if not cur[1] and core.on_top is not None and "opentelemetry.trace" in _modules:
                attrs = core.on_top(attrs)  # a top-level phase joins the program's OpenTelemetry trace
            ev = (KIND_BEGIN, t, th, sid, cur[0], self.name, cls, attrs, _edge_rusage(core, t))
            core.open[sid] = ev
            buf = core.buf
            if len(buf) < core.wake_at:
                buf.append(ev)
            else:
                core.on_slow(ev)
            core.current.set((sid, cur[1] + 1, cls, cur, th))
            if self.device and core.device_ok:
                core.on_device(True, sid)
        except Exception:
            pass  # never raise into the program
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        core = _core
        if core is None:
            return
        try:
            cur = core.current.get()
            sid = cur[0]
            if not sid:
                return  # disabled, too deep, or exited in another context than entered
            core.current.set(cur[3])
            if core.open.pop(sid, None) is None:
                return  # opened before a fork, in the parent: the parent reports it
            if self.device and core.device_ok:
                # The end event before the end hint: pushing the hint may hand the GIL to the
                # sender, and an event recorded after that wait would stretch the device interval.
                core.on_device(False, sid)
            t = monotonic_ns()
            ev = (KIND_END, t, cur[4], sid, "error" if exc_type else "ok", None, _edge_rusage(core, t))
            buf = core.buf
            if len(buf) < core.wake_at:
                buf.append(ev)
            else:
                core.on_slow(ev)
        except Exception:
            pass
