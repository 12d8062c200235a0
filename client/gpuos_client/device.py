"""Device-side timing of phases with CUDA events, off the hot path.

``phase(..., device=True)`` records a CUDA event on the current stream at
enter and at exit.  The host interval is known at once; the device interval
only once the GPU reaches the events, so the sender thread polls the events
(never synchronises) and, when both have completed, sends a MARK
``__device__`` carrying the span's device begin/end on the host's
CLOCK_MONOTONIC.  The conversion uses an *anchor*: an event recorded on a
private non-blocking stream, whose completion time on the host clock is known
to within a few microseconds.

Backends: ``torch.cuda.Event`` when the program has imported torch (PyTorch
programs have no CuPy), else CuPy.  When neither is usable the first
device-timed phase says why once (``last_error``) and device timing switches
itself off (``core.device_ok = 0``), so later ``device=True`` phases cost what
a plain phase costs.

Why: host and device time diverge by orders of magnitude on a GPU (DESIGN
section 10: 3 s of host-side enqueueing kept an H100 busy for 24.8 s).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from . import _runtime
from . import protocol as P

DEVICE_MARK = P.DEVICE_MARK  # the wire owns the name (protocol.py)
_ANCHOR_REFRESH_S = 1.0  # cheap (microseconds), so the clocks never drift apart
_MAX_PENDING = 4096


class _Backend:
    """The few CUDA-event operations device timing needs, for one library."""

    name = "none"

    def record(self) -> Any:  # an event recorded on the current stream
        raise NotImplementedError

    def done(self, ev: Any) -> bool:
        raise NotImplementedError

    def elapsed_ms(self, a: Any, b: Any) -> float:
        raise NotImplementedError

    def anchor_event(self) -> Any:  # an event on a private non-blocking stream
        raise NotImplementedError


class _TorchBackend(_Backend):
    name = "torch"

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.stream = torch.cuda.Stream()  # created non-blocking w.r.t. other streams' work

    def record(self) -> Any:
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def done(self, ev: Any) -> bool:
        return bool(ev.query())

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return float(a.elapsed_time(b))

    def anchor_event(self) -> Any:
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(self.stream)
        return ev


class _CupyBackend(_Backend):
    name = "cupy"

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.stream = cp.cuda.Stream(non_blocking=True)

    def record(self) -> Any:
        ev = self.cp.cuda.Event()
        ev.record()
        return ev

    def done(self, ev: Any) -> bool:
        return bool(ev.done)

    def elapsed_ms(self, a: Any, b: Any) -> float:
        return float(self.cp.cuda.get_elapsed_time(a, b))

    def anchor_event(self) -> Any:
        ev = self.cp.cuda.Event()
        ev.record(self.stream)
        return ev


_backend_lock = threading.Lock()
_backend: _Backend | None = None
_backend_why: str | None = None
_backend_probed = False
_anchor: tuple[Any, int] | None = None  # (event, host monotonic ns when it completed)
_anchor_made = 0.0


def _probe() -> tuple[_Backend | None, str | None]:
    torch = sys.modules.get("torch")
    reasons = []
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return _TorchBackend(torch), None
            reasons.append("torch.cuda.is_available() is False")
        except Exception as exc:
            reasons.append(f"torch.cuda: {type(exc).__name__}: {exc}")
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return _CupyBackend(cupy), None
    except Exception as exc:
        reasons.append(f"cupy: {type(exc).__name__}: {str(exc)[:120]}")
    return None, "device timing off (no usable CUDA): " + "; ".join(reasons)


def backend() -> _Backend | None:
    """The backend, probed once per process (a forked child probes again)."""
    global _backend, _backend_why, _backend_probed
    if not _backend_probed:
        with _backend_lock:
            if not _backend_probed:
                _backend, _backend_why = _probe()
                _backend_probed = True
    return _backend


def _reset_after_fork() -> None:
    global _backend_lock, _backend, _backend_probed, _anchor
    _backend_lock = threading.Lock()
    _backend, _backend_probed, _anchor = None, False, None


os.register_at_fork(after_in_child=_reset_after_fork)


def begin(rt: _runtime.Runtime, span_id: int) -> None:
    """At phase enter: record the start event (kept until the phase exits)."""
    b = backend()
    if b is None:
        rt.core.device_ok = 0  # from now on device=True costs what a plain phase costs
        rt.drop("no_cuda")
        rt.last_error = _backend_why
        return
    try:
        rt._device_open[span_id] = b.record()
    except Exception as exc:
        rt.drop("device_timing_error")
        rt.last_error = f"device timing: {type(exc).__name__}: {exc}"


def end(rt: _runtime.Runtime, span_id: int) -> None:
    """At phase exit: record the end event; the sender resolves the pair later."""
    start_ev = rt._device_open.pop(span_id, None)
    b = _backend
    if start_ev is None or b is None:
        return
    try:
        end_ev = b.record()
    except Exception as exc:
        rt.drop("device_timing_error")
        rt.last_error = f"device timing: {type(exc).__name__}: {exc}"
        return
    if len(rt._device_pending) >= _MAX_PENDING:
        rt.drop("device_pending_full")
        return
    rt._device_pending.append((span_id, start_ev, end_ev))


def _fresh_anchor(b: _Backend) -> tuple[Any, int] | None:
    """Spin (bounded) until an event on the private stream completes: its host time."""
    ev = b.anchor_event()
    deadline = time.monotonic_ns() + 50_000_000
    while time.monotonic_ns() < deadline:
        if b.done(ev):
            return ev, time.monotonic_ns()
        # Let the program's threads run between polls: a spin that kept the GIL would stall the
        # very thread that launches the kernels (the poll itself is a ~1 us driver call).
        time.sleep(0)
    return None


def _get_anchor(b: _Backend) -> tuple[Any, int] | None:
    global _anchor, _anchor_made
    if _anchor is None or time.monotonic() - _anchor_made > _ANCHOR_REFRESH_S:
        new = _fresh_anchor(b)
        if new is not None:
            _anchor, _anchor_made = new, time.monotonic()
    return _anchor


def collect_device_times(rt: _runtime.Runtime) -> list[tuple[Any, ...]]:
    """Called by the sender: turn completed event pairs into __device__ marks."""
    b = _backend
    pending = rt._device_pending
    if b is None or not pending:
        pending.clear()
        return []
    out: list[tuple[Any, ...]] = []
    keep: list[Any] = []
    anchor = None
    taken = [pending.popleft() for _ in range(len(pending))]  # deque ops are atomic
    for i, item in enumerate(taken):
        span_id, start_ev, end_ev = item
        try:
            if not b.done(end_ev):
                # Events on one stream complete in order, so the later ones are not done either:
                # stop here instead of one driver call per pending pair (each takes the context
                # lock that the program's kernel launches need).  A pair on another stream that
                # finished waits one more round, no longer.
                keep.extend(taken[i:])
                break
            if anchor is None:
                anchor = _get_anchor(b)
            if anchor is None:
                rt.device_anchor_misses += 1
                keep.extend(taken[i:])
                break
            a_ev, a_ns = anchor
            dev_begin = a_ns + int(b.elapsed_ms(a_ev, start_ev) * 1e6)
            dev_end = a_ns + int(b.elapsed_ms(a_ev, end_ev) * 1e6)
        except Exception as exc:
            rt.drop("device_timing_error")
            rt.last_error = f"device timing: {type(exc).__name__}: {exc}"
            continue
        out.append(
            (
                P.MARK,
                dev_end,
                _runtime.impl.tid(),
                DEVICE_MARK,
                {"span": span_id, "dev_begin_ns": max(dev_begin, 0), "dev_end_ns": max(dev_end, 0), "via": b.name},
            )
        )
    pending.extendleft(reversed(keep))  # ahead of pairs the program added meanwhile: order kept
    rt.device_marks += len(out)
    return out
