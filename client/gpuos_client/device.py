"""Device-side timing of phases with CUDA events, off the hot path.

``phase(..., device=True)`` records a CUDA event on the current stream at
enter and at exit.  The host interval is known at once; the device interval
only once the GPU reaches the events, so the sender thread polls the events
(never synchronises) and, when both have completed, sends a MARK
``__device__`` carrying the span's device begin/end on the host's
CLOCK_MONOTONIC.  The conversion uses an *anchor*: an event recorded on a
private non-blocking stream, whose completion time on the host clock is
bracketed between two polls (``_fresh_anchor``; its half-width is
``anchor_err_ns``).

Backends: ``torch.cuda.Event`` when the program has imported torch (PyTorch
programs have no CuPy), else CuPy.  When neither is usable the first
device-timed phase says why once (``last_error``) and device timing switches
itself off (``core.device_ok = 0``), so later ``device=True`` phases cost what
a plain phase costs.

Busy time (opt-in, cupti.py): with ``GPUOS_HINT_DEVICE_BUSY=1`` or ``device_busy(True)``, the
first device-timed phase starts a CUPTI kernel-activity tracer, and each resolved pair waits
(at most ``BUSY_WAIT_NS``) until CUPTI has delivered every record up to its device end; its mark
then carries ``busy_ns`` (GPU busy time inside the device interval, the union over streams) and
``busy_err_ns`` (the bound of the tracer's clock map plus the clock anchor's, below).  A pair
that waits longer goes without them (``busy_unresolved``).

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
ANCHOR_TARGET_NS = 5_000  # an anchor bracketed within +-5 us is taken at once (_fresh_anchor)
_ANCHOR_TRIES = 4
_ANCHOR_TIGHT_POLLS = 200  # polls before the anchor spin starts yielding the GIL between them
BUSY_WAIT_NS = 2_000_000_000  # a resolved pair waits at most this long for CUPTI's records
BUSY_FORCE_AFTER_NS = 50_000_000  # then a forced flush, when nothing later was recorded this long after its end
ENV_BUSY = "GPUOS_HINT_DEVICE_BUSY"


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
_anchor_err_ns = 0  # the current anchor's half-bracket (_fresh_anchor)
_anchor_err_prev_ns = 0  # ... and the one before it's
_busy_wanted: bool | None = None  # None: the environment decides (ENV_BUSY)
_busy_env: bool | None = None  # ENV_BUSY, once read
_tracer: Any = None  # a cupti.CuptiTracer once started (or tried: .on says which)
_tracer_lock = threading.Lock()


def set_busy(on: bool) -> None:
    """Ask for (or stop asking for) busy time; takes effect at the next device-timed phase."""
    global _busy_wanted
    _busy_wanted = bool(on)
    if _tracer is not None:
        if not on:
            _tracer.stop()
        else:
            _tracer.resume()  # a tracer stopped by device_busy(False) traces again


def busy_wanted() -> bool:
    """device_busy()'s choice, else $GPUOS_HINT_DEVICE_BUSY (read once: this runs per device phase)."""
    global _busy_env
    if _busy_wanted is not None:
        return _busy_wanted
    if _busy_env is None:
        _busy_env = os.environ.get(ENV_BUSY, "").lower() not in ("", "0", "false", "no", "off")
    return _busy_env


def _start_tracer(rt: _runtime.Runtime) -> None:
    """Once per process: the CUPTI tracer, or the reason it is off (last_error, stats)."""
    global _tracer
    from .cupti import CuptiTracer

    _tracer = CuptiTracer()
    if not _tracer.start():
        rt.last_error = _tracer.why


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
    global _backend_lock, _backend, _backend_probed, _anchor, _tracer, _tracer_lock
    global _anchor_err_ns, _anchor_err_prev_ns
    _backend_lock = threading.Lock()
    _tracer_lock = threading.Lock()
    _backend, _backend_probed, _anchor, _tracer = None, False, None, None
    _anchor_err_ns = _anchor_err_prev_ns = 0  # the child's anchors are its own


os.register_at_fork(after_in_child=_reset_after_fork)


def begin(rt: _runtime.Runtime, span_id: int) -> None:
    """At phase enter: record the start event (kept until the phase exits)."""
    b = backend()
    if b is None:
        rt.core.device_ok = 0  # from now on device=True costs what a plain phase costs
        rt.drop("no_cuda")
        rt.last_error = _backend_why
        return
    if _tracer is None and busy_wanted():
        with _tracer_lock:  # two threads entering their first device phase build one tracer
            if _tracer is None:
                _start_tracer(rt)  # before the start event: the span's first kernel is traced
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


def _fresh_anchor(b: _Backend) -> tuple[Any, int, int] | None:
    """An event on the private stream and its completion time on the host clock, bracketed.

    Returns (event, host ns, half-width ns) or None when no event completed within 50 ms.
    The completion lies after the start of the last poll that saw the event pending (or after
    the record call) and before the end of the first poll that saw it done; the anchor is the
    bracket's midpoint, its error the half-width.  The first version took "the poll that saw it
    done" as the time, and polled with ``sleep(0)`` between polls: when the program's thread
    took the GIL in that yield, the anchor came out tens of microseconds late, every device
    interval with it, and a phase with queued work before it and idle after it (the optimizer
    step before a sync) lost that much busy time at its start: -6 % on the H200
    (benchmarks/results/h200/round4/accuracy_gpu_run7_busy.json).  Now the first
    ``_ANCHOR_TIGHT_POLLS`` polls run back to back (each a ~1 us driver call, so the GIL is held
    for at most ~0.2 ms), later ones yield as before so that a slow event cannot stall the
    program's launching thread, and a bracket wider than ``ANCHOR_TARGET_NS`` is tried again
    (``_ANCHOR_TRIES`` times at most, the tightest kept).
    """
    deadline = time.monotonic_ns() + 50_000_000
    best: tuple[Any, int, int] | None = None
    for _ in range(_ANCHOR_TRIES):
        lo = time.monotonic_ns()  # it cannot complete before it is recorded
        ev = b.anchor_event()
        polls = 0
        got = None
        while True:
            t0 = time.monotonic_ns()
            if t0 > deadline:
                break
            done = b.done(ev)
            t1 = time.monotonic_ns()
            if done:
                got = (ev, (lo + t1) // 2, (t1 - lo + 1) // 2)
                break
            lo = t0  # pending at some instant of this poll: it completed after t0
            polls += 1
            if polls > _ANCHOR_TIGHT_POLLS:
                # Let the program's threads run between polls: a spin that kept the GIL would
                # stall the very thread that launches the kernels.
                time.sleep(0)
        if got is None:
            break
        if best is None or got[2] < best[2]:
            best = got
        if best[2] <= ANCHOR_TARGET_NS:
            break
    return best


def _get_anchor(b: _Backend) -> tuple[Any, int] | None:
    global _anchor, _anchor_made, _anchor_err_ns, _anchor_err_prev_ns
    if _anchor is None or time.monotonic() - _anchor_made > _ANCHOR_REFRESH_S:
        new = _fresh_anchor(b)
        if new is not None:
            _anchor, _anchor_made = (new[0], new[1]), time.monotonic()
            _anchor_err_prev_ns, _anchor_err_ns = _anchor_err_ns, new[2]
    return _anchor


def anchor_err_ns() -> int:
    """The clock anchor's error bound now: the larger of the last two anchors' half-brackets.

    A pair that waits for CUPTI's records (at most ``BUSY_WAIT_NS``) may have been mapped with
    the anchor before the current one, so both count.
    """
    return max(_anchor_err_ns, _anchor_err_prev_ns)


def collect_device_times(rt: _runtime.Runtime) -> list[tuple[Any, ...]]:
    """Called by the sender: turn completed event pairs into __device__ marks."""
    b = _backend
    pending = rt._device_pending
    waiting = rt._device_waiting
    if b is None or not (pending or waiting):
        pending.clear()
        waiting.clear()
        return []
    resolved: list[tuple[int, int, int]] = []
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
        resolved.append((span_id, max(dev_begin, 0), max(dev_end, 0)))
    pending.extendleft(reversed(keep))  # ahead of pairs the program added meanwhile: order kept
    tracer = _tracer
    if tracer is not None and tracer.on:
        out = _with_busy(rt, tracer, b.name, resolved)
    else:
        out = [_mark(span_id, d0, d1, b.name) for span_id, d0, d1 in resolved]
        if waiting:  # the tracer went off while pairs waited: they go without busy time
            out.extend(_mark(span_id, d0, d1, b.name) for span_id, d0, d1, _ in waiting)
            rt.device_busy_unresolved += len(waiting)
            waiting.clear()
    rt.device_marks += len(out)
    return out


def _mark(span_id: int, dev_begin: int, dev_end: int, via: str, busy: tuple[int, int] | None = None) -> tuple[Any, ...]:
    attrs: dict[str, Any] = {"span": span_id, "dev_begin_ns": dev_begin, "dev_end_ns": dev_end, "via": via}
    if busy is not None:
        attrs["busy_ns"], attrs["busy_err_ns"] = busy
    return (P.MARK, dev_end, _runtime.impl.tid(), DEVICE_MARK, attrs)


def _with_busy(
    rt: _runtime.Runtime, tracer: Any, via: str, resolved: list[tuple[int, int, int]]
) -> list[tuple[Any, ...]]:
    """Pairs whose records CUPTI has delivered get busy time; the others wait (bounded)."""
    now = time.monotonic_ns()
    waiting = rt._device_waiting
    for i, (span_id, d0, d1) in enumerate(resolved):
        if len(waiting) >= _MAX_PENDING:
            rt.drop("device_pending_full", len(resolved) - i)  # every pair of this round not kept
            break
        waiting.append((span_id, d0, d1, now))
    tracer.drain()  # after the pairs were seen complete: this flush covers their device ends
    done_until = tracer.complete_until_ns
    # No later device-timed work queued on the GPU: no pair waiting for its end event, and no
    # device-timed phase still open (a parent around its children, a long phase in flight).
    quiet = not rt._device_pending and not rt._device_open
    if quiet and waiting and waiting[0][2] > done_until and now - waiting[0][2] > BUSY_FORCE_AFTER_NS:
        # Nothing launched after the oldest pair has been recorded and nothing hinted is queued
        # (the program synchronised and went quiet): a forced flush returns CUPTI's current
        # buffer too.  Never while work is queued: the flush would hand back its unfinished
        # records, lost for good.
        tracer.drain(force=True)
        done_until = tracer.complete_until_ns
    out: list[tuple[Any, ...]] = []
    still: list[Any] = []
    for item in waiting:
        span_id, d0, d1, since = item
        if d1 <= done_until:
            out.append(_mark(span_id, d0, d1, via, _plus_anchor(tracer.busy(d0, d1))))
        elif now - since > BUSY_WAIT_NS:
            out.append(_mark(span_id, d0, d1, via))
            rt.device_busy_unresolved += 1
        else:
            still.append(item)
    waiting.clear()
    waiting.extend(still)
    return out


def _plus_anchor(busy: tuple[int, int] | None) -> tuple[int, int] | None:
    """Busy time's bound plus the anchor's: the device interval is placed on the host clock by
    the anchor, CUPTI's records by the tracer's own map, so an anchor off by d moves the window
    against the records by d (busy time off by at most d)."""
    return None if busy is None else (busy[0], busy[1] + anchor_err_ns())


def tracer_stats() -> dict[str, Any] | None:
    """The busy-time tracer's counters, or None when busy time was never asked for."""
    t = _tracer
    return None if t is None else t.stats()
