"""Device-side timing of phases with CUDA events (CuPy), off the hot path.

``phase(..., device=True)`` records a CUDA event on the current stream at
enter and at exit.  The host interval is known at once; the device interval
is only known once the GPU reaches the events, so the sender thread polls
``Event.query()`` (never synchronises) and, when both have completed, sends a
MARK ``__device__`` event carrying the span's device begin/end on the host's
CLOCK_MONOTONIC.  The conversion uses an *anchor*: an event whose completion
time on the host clock is known to within the sender's polling period.

Why: host and device time diverge by orders of magnitude on a GPU (DESIGN
section 10: 3 s of host-side enqueueing kept an H100 busy for 24.8 s).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import protocol as P

DEVICE_MARK = "__device__"
_ANCHOR_REFRESH_S = 1.0  # cheap (microseconds), so clocks never drift apart
_MAX_PENDING = 4096

_anchor_lock = threading.Lock()
_anchor: tuple[Any, int] | None = None  # (cupy Event, host monotonic ns when it completed)
_anchor_made = 0.0
_anchor_stream: Any = None


def _cupy() -> Any | None:
    try:
        import cupy

        return cupy
    except Exception:
        return None


def record_event() -> Any | None:
    """Record a CUDA event on the current stream; None when CuPy/CUDA is unusable."""
    cp = _cupy()
    if cp is None:
        return None
    try:
        ev = cp.cuda.Event()
        ev.record()
        return ev
    except Exception:
        return None


def _fresh_anchor(cp: Any) -> tuple[Any, int] | None:
    """Record an event on a private non-blocking stream and spin until it completes.

    A non-blocking stream does not wait for work queued on the default stream,
    so the event completes within microseconds even on a busy GPU; the host
    time taken right after ``query()`` turns true is its completion time on
    CLOCK_MONOTONIC, to within the polling step.
    """
    global _anchor_stream
    if _anchor_stream is None:
        _anchor_stream = cp.cuda.Stream(non_blocking=True)
    ev = cp.cuda.Event()
    ev.record(_anchor_stream)
    deadline = time.monotonic_ns() + 50_000_000
    while time.monotonic_ns() < deadline:
        if ev.done:
            return ev, time.monotonic_ns()
    return None


def _get_anchor(cp: Any) -> tuple[Any, int] | None:
    global _anchor, _anchor_made
    with _anchor_lock:
        if _anchor is None or time.monotonic() - _anchor_made > _ANCHOR_REFRESH_S:
            new = _fresh_anchor(cp)
            if new is not None:
                _anchor, _anchor_made = new, time.monotonic()
        return _anchor


def begin(rt: Any, span_id: int) -> None:
    """At phase enter: record the start event (kept until the phase exits)."""
    ev = record_event()
    if ev is None:
        rt.drop("no_cuda")
        return
    rt._device_open[span_id] = ev


def end(rt: Any, span_id: int) -> None:
    """At phase exit: record the end event; the sender resolves the pair later."""
    start_ev = rt._device_open.pop(span_id, None)
    if start_ev is None:
        return
    end_ev = record_event()
    if end_ev is not None:
        add_pending(rt, span_id, start_ev, end_ev)


def add_pending(rt: Any, span_id: int, start_ev: Any, end_ev: Any) -> None:
    if len(rt._device_pending) >= _MAX_PENDING:
        rt.drop("device_pending_full")
        return
    rt._device_pending.append((span_id, start_ev, end_ev))
    if rt.sleeping:
        rt.wake()


def collect_device_times(rt: Any) -> list[tuple[Any, ...]]:
    """Called by the sender: turn completed event pairs into __device__ marks."""
    cp = _cupy()
    pending = rt._device_pending
    if cp is None or not pending:
        pending.clear()
        return []
    out: list[tuple[Any, ...]] = []
    keep = []
    anchor = None
    taken = [pending.popleft() for _ in range(len(pending))]  # deque ops are atomic
    for item in taken:
        span_id, start_ev, end_ev = item
        try:
            if not end_ev.done:
                keep.append(item)
                continue
            if anchor is None:
                anchor = _get_anchor(cp)
            if anchor is None:
                keep.append(item)
                continue
            a_ev, a_ns = anchor
            begin = a_ns + int(cp.cuda.get_elapsed_time(a_ev, start_ev) * 1e6)
            end = a_ns + int(cp.cuda.get_elapsed_time(a_ev, end_ev) * 1e6)
        except Exception as exc:
            rt.drop("device_timing_error")
            rt.last_error = f"device timing: {type(exc).__name__}: {exc}"
            continue
        out.append(
            (
                P.MARK,
                end,
                threading.get_native_id(),
                DEVICE_MARK,
                {"span": span_id, "dev_begin_ns": max(begin, 0), "dev_end_ns": max(end, 0)},
            )
        )
    pending.extend(keep)
    return out
