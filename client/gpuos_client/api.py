"""The public hint API: phase(), workload_class(), mark(), stats().

Cost model (DESIGN section 9): a phase enter+exit must stay around a
microsecond, so the hot path does no packing, no syscalls beyond the vDSO
clock, and no allocation beyond one tuple per edge.  Misuse (an empty name, a
name over the limit) raises ValueError at construction - a programming error
the developer should see - but nothing at run time ever raises.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from . import _runtime as _rtmod
from . import protocol as P
from ._runtime import get_runtime
from .classes import CLASSES as CLASSES  # re-exported: the vocabulary lives in classes.py

F = TypeVar("F", bound=Callable[..., Any])

# The innermost open phase in this context: (span_id, depth, scoped class,
# the enclosing state, tid).  A linked stack in a ContextVar: each thread and
# each asyncio task sees its own, and exit restores the parent without a Token.
_ROOT: Final = (0, 0, None, None, 0)
_current: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("gpuos_phase", default=_ROOT)
_MAX_DEPTH: Final = P.LIMITS.max_depth
_BEGIN: Final = P.PHASE_BEGIN
_END: Final = P.PHASE_END

_monotonic_ns = time.monotonic_ns
_get_native_id = threading.get_native_id
# gettid() is a syscall (~0.2 us); a thread-local cache makes it ~0.04 us.
# The fork hook clears it, since the child's thread has a new tid.
_tls = _rtmod.tls


def _tid() -> int:
    try:
        return _tls.tid  # type: ignore[no-any-return]
    except AttributeError:
        tid = _tls.tid = _get_native_id()
        return tid


def _checked(name: str, what: str = "name") -> str:
    try:
        return P.check_name(name, what=what)
    except P.ProtocolError as exc:
        raise ValueError(str(exc)) from None


def _checked_attrs(attrs: dict[str, Any]) -> dict[str, Any] | None:
    if not attrs:
        return None
    try:
        return P.check_attrs(attrs)
    except P.ProtocolError as exc:
        raise ValueError(str(exc)) from None


class phase:
    """A named phase of the program: a context manager, and a decorator.

    ``with phase("prefill", batch=8): ...`` sends phase_begin/phase_end hints
    with the thread id and CLOCK_MONOTONIC timestamps.  Phases nest per thread
    and per asyncio task (contextvars), so concurrent tasks never see each
    other's phases.  ``device=True`` also records CUDA events at the edges, so
    the daemon learns when the GPU actually ran the phase.

    The object can be re-entered and used from several threads at once: state
    for each entry lives on a small per-object stack, not in fixed slots.
    """

    __slots__ = ("attrs", "device", "name")

    def __init__(self, name: str, /, *, device: bool = False, **attrs: Any) -> None:
        self.name = _checked(name)
        self.attrs = _checked_attrs(attrs)
        self.device = device

    def __enter__(self) -> phase:
        rt = _rtmod._runtime or get_runtime()
        if rt.disabled:
            return self
        cur = _current.get()
        if cur[1] >= _MAX_DEPTH:
            rt.drop("too_deep")
            return self
        try:
            tid = _tls.tid
        except AttributeError:
            tid = _tid()
        sid = next(rt.ids)
        ev = (_BEGIN, _monotonic_ns(), tid, sid, cur[0], self.name, cur[2], self.attrs)
        rt.open[sid] = ev
        # rt.push(ev), inlined: this is the hot path.
        buf = rt.buf
        if len(buf) < rt.max_buffered:
            buf.append(ev)
            if rt.sleeping:
                rt.wake()
        else:
            rt.full_drops += 1
        _current.set((sid, cur[1] + 1, cur[2], cur, tid))
        if self.device:
            from .device import begin

            begin(rt, sid)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        cur = _current.get()
        sid = cur[0]
        if not sid:
            return  # disabled, too deep, or exited in another context than entered
        _current.set(cur[3])
        rt = _rtmod._runtime or get_runtime()
        if rt.open.pop(sid, None) is None:
            return  # opened before a fork, in the parent: the parent reports it
        # A with-block ends on the thread it began on: reuse the tid from enter.
        ev = (_END, _monotonic_ns(), cur[4], sid, "error" if exc_type else "ok", None)
        buf = rt.buf
        if len(buf) < rt.max_buffered:
            buf.append(ev)
            if rt.sleeping:
                rt.wake()
        else:
            rt.full_drops += 1
        if self.device:
            from .device import end

            end(rt, sid)

    def __call__(self, fn: F) -> F:
        """Decorate a function (sync or async): each call runs inside a fresh phase."""
        name, attrs, device = self.name, self.attrs or {}, self.device
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with phase(name, device=device, **attrs):
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with phase(name, device=device, **attrs):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"phase({self.name!r}, attrs={self.attrs!r}, device={self.device})"


class workload_class:
    """Declare what kind of work this is.

    As a statement, ``workload_class("inference.decode")`` sets the
    *process-wide* class.  As a context manager, ``with
    workload_class("batch.io"):`` scopes the class to the block, in this
    thread/asyncio task only, and leaves the process-wide class as it was:
    phases begun inside carry the scoped class.  ``workload_class(None)``
    clears the process-wide class.
    """

    __slots__ = ("_prev_pending", "_previous", "cls")

    def __init__(self, cls: str | None) -> None:
        self.cls = None if cls is None else _checked(cls, "workload class")
        rt = get_runtime()
        self._previous = rt.process_class
        self._prev_pending = rt._class_pending
        if not rt.disabled:
            rt.set_process_class(self.cls)

    def __enter__(self) -> workload_class:
        rt = get_runtime()
        if not rt.disabled and rt.process_class == self.cls:
            # Used as a context manager: undo the process-wide setting made by
            # __init__ - unsent if the sender has not run since, else reverted.
            pending = rt._class_pending
            if pending is not None and pending[1] == self.cls:
                rt._class_pending = self._prev_pending  # an earlier unsent statement still goes out
                rt.process_class = self._previous
            else:
                rt.set_process_class(self._previous)
        cur = _current.get()
        # A scope frame: same span id and depth, new class, parent = the state it replaces.
        _current.set((cur[0], cur[1], self.cls, cur, cur[4]))
        return self

    def __exit__(self, *exc: Any) -> None:
        cur = _current.get()
        if cur[3] is not None and cur[2] == self.cls:
            _current.set(cur[3])

    def __repr__(self) -> str:
        return f"workload_class({self.cls!r})"


def mark(name: str, /, **attrs: Any) -> None:
    """An instant event (a checkpoint written, a request admitted...)."""
    rt = get_runtime()
    if rt.disabled:
        return
    rt.push((P.MARK, _monotonic_ns(), _tid(), _checked(name), _checked_attrs(attrs)))


def current_phase() -> int:
    """The span id of the innermost open phase in this context (0 if none)."""
    return _current.get()[0]


def stats() -> dict[str, Any]:
    """Counters of this process's client: sent, dropped (by reason), buffered, errors."""
    return get_runtime().stats()


def last_error() -> str | None:
    """Why the last hint was dropped or the last send failed, or None."""
    return get_runtime().last_error


def flush(timeout: float = 1.0) -> bool:
    """Wait (bounded) until buffered hints have been handed to ZeroMQ.

    For tests and short scripts; the hot path never needs it.  True if the
    buffer drained in time.
    """
    rt = get_runtime()
    if rt.disabled:
        return True
    if rt.buf or rt._class_pending:
        rt.wake()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rt.buf and rt._pending is None and rt._class_pending is None:
            return True
        time.sleep(0.001)
    return False
