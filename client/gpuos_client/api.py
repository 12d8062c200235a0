"""The public hint API: phase(), workload_class(), mark(), stats().

Cost model (DESIGN section 9): a phase enter+exit must stay around a
microsecond, so the hot path does no packing, no syscalls beyond the vDSO
clock, and no allocation beyond one tuple per edge.  Misuse (an empty name, a
name over the limit) raises ValueError at construction - a programming error
the developer should see - but nothing at run time ever raises.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import protocol as P
from ._runtime import _check_attrs, get_runtime, impl
from ._runtime import _check_name as _checked
from .classes import CLASSES as CLASSES  # re-exported: the vocabulary lives in classes.py

F = TypeVar("F", bound=Callable[..., Any])

_monotonic_ns = time.monotonic_ns


def _decorate(ph: Any, fn: F) -> F:
    """``@phase("name")``: each call of fn (sync or async) runs inside a fresh phase of that name."""
    name, attrs, device = ph.name, ph.attrs or {}, ph.device
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


if impl.__name__.endswith("_cphase"):
    # The C type itself is the public class: constructing it is a vectorcall (no args tuple, no
    # kwargs dict), and __call__ (the decorator) comes back to _decorate.
    phase = impl.Phase
    impl.set_decorator(_decorate)
else:

    class phase(impl.Phase):  # type: ignore[no-redef,misc]
        """A named phase of the program: a context manager, and a decorator.

        ``with phase("prefill", batch=8): ...`` sends phase_begin/phase_end hints
        with the thread id and CLOCK_MONOTONIC timestamps.  Phases nest per thread
        and per asyncio task (contextvars), so concurrent tasks never see each
        other's phases.  ``device=True`` also records CUDA events at the edges
        (torch.cuda.Event when torch is loaded, else CuPy), so the daemon learns
        when the GPU actually ran the phase.

        This is the pure-Python class (``_phase_py``), used when the C extension is
        not built or GPUOS_HINT_PURE=1; it behaves the same.
        """

        __slots__ = ()

        def __call__(self, fn: F) -> F:
            return _decorate(self, fn)

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
        cur = impl.frame()
        # A scope frame: same span id and depth, new class, parent = the state it replaces.
        impl.set_frame((cur[0], cur[1], self.cls, cur, cur[4]))
        return self

    def __exit__(self, *exc: Any) -> None:
        cur = impl.frame()
        if cur[3] is not None and cur[2] == self.cls:
            impl.set_frame(cur[3])

    def __repr__(self) -> str:
        return f"workload_class({self.cls!r})"


def mark(name: str, /, **attrs: Any) -> None:
    """An instant event (a checkpoint written, a request admitted...)."""
    rt = get_runtime()
    if rt.disabled:
        return
    rt.push((P.MARK, _monotonic_ns(), impl.tid(), _checked(name), _check_attrs(attrs)))  # the phases' checks


def current_phase() -> int:
    """The span id of the innermost open phase in this context (0 if none)."""
    return impl.frame()[0]  # type: ignore[no-any-return]


def stats() -> dict[str, Any]:
    """This process's hint accounting.

    ``handed``: events ZeroMQ took onto a live connection; ``delivered``: events
    the daemon acknowledged; ``undelivered``: handed but not (yet) acknowledged;
    ``rejected``: refused by the daemon (``rejected_by_reason``); ``dropped``:
    never left this process (``dropped_by_reason``); ``buffered``: waiting here.
    """
    return get_runtime().stats()


def last_error() -> str | None:
    """Why the last hint was dropped or the last send failed, or None."""
    return get_runtime().last_error


def flush(timeout: float = 5.0) -> bool:
    """Wait (bounded) until every buffered hint was delivered (acknowledged by the daemon).

    A live daemon acknowledges within milliseconds; the bound matters only when it is slow or gone.

    For tests and short scripts; the hot path never needs it.  False when the
    daemon did not acknowledge everything in time (or there is none).
    """
    return get_runtime().flush(timeout)


def device_busy(on: bool = True) -> None:
    """Measure GPU busy time inside device-timed phases (``phase(..., device=True)``) with CUPTI.

    Off by default (CUPTI costs something per kernel launch); ``GPUOS_HINT_DEVICE_BUSY=1`` turns
    it on too.  The tracer starts at the next device-timed phase; when it cannot (no libcupti,
    torch.profiler running), ``last_error()`` and ``stats()["device"]["busy"]["why"]`` say why
    and phases carry device intervals as before.  docs/accuracy.md says what it measures.
    """
    from . import device

    device.set_busy(on)


def _prepare() -> None:
    """Make the runtime (no thread, no socket) and import what the sender needs.

    Runs when this module is first imported: by ``from gpuos_client import phase``, the first
    ``gpuos_client.phase``, or an integration importing the API; never by a tool that imports only
    ``gpuos_client.protocol`` or ``.config`` (the package's ``__getattr__``).  The sender thread
    starts at the first hint, not here.  pyzmq and msgpack are imported now, in the importing
    thread, so that no thread is ever importing them when the program forks: a child forked at any
    moment finds them whole and builds its own sender.
    """
    rt = get_runtime()
    if rt.disabled:
        return
    try:
        import msgpack  # noqa: F401
        import zmq  # noqa: F401
    except ImportError as exc:  # fail open: the first hint finds out and counts it
        rt.last_error = f"pyzmq/msgpack not importable: {exc}"


_prepare()
