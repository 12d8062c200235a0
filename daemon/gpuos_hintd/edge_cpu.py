"""Per-span CPU, context switches and faults from the client's edge readings.

Why: the /proc sampler reads every 100 ms, and a 4 ms phase between two reads
gets a *time share* of the interval's CPU - a 4 ms spin next to a 6 ms sleep
comes out at 40 % of its CPU and the sleep at 60 %.  The client can read its
own thread's counters (``CLOCK_THREAD_CPUTIME_ID``, ``CLOCK_PROCESS_CPUTIME_ID``, ``getrusage``)
at the phase edges; the difference of two readings is the span's own figure,
with nothing smeared across a boundary.

The client may reuse an earlier reading of the same thread (it rate-limits
reads), so a reading is a *lower* bound on the counter at the edge, and the
thread can have run at most ``t - t_read`` ns since.  That gives every span an
interval, not just a number:

* thread CPU in ``[e - b - gap_begin, e - b + gap_end]`` (one thread runs at
  most 1 ns per ns), cut by ``[0, duration]``; the estimate is the readings'
  own difference (the 10 Hz samples are a different clock and are not mixed
  in).  The client reads CLOCK_THREAD_CPUTIME_ID: getrusage's per-thread
  utime+stime is not the thread's exact clock (the kernel scales tick samples
  to the runtime; a 1 ms spin read 1.02-1.04 ms of it here), so a difference
  outside what the wall time allows is clamped to it and flagged
  ``cpu_reading_clamped``;
* process CPU likewise, with ``n`` threads able to run in each gap;
* context switches and faults as the difference of the readings (the counts
  in a reused reading's gap are not seen: ``ru_gap_ns`` says how long that was).

A span with no readings keeps the sampled interpolation; its thread CPU still
gets a rigorous interval from the samples around its edges (the counter is
monotone and grows at most 1 ns per ns), so it says how far off it can be.

Signals written (all ns): ``thread_cpu_ns`` with ``thread_cpu_ns_err`` (a
symmetric bound that covers the interval, plus the reading's resolution),
``proc_cpu_ns`` with ``proc_cpu_ns_err``, and ``cpu_exact`` (True
only when both edges were read at the edge, no reading reused).
"""

from __future__ import annotations

import os
from typing import Any

from .model import Value

#: ru = [t_read_ns, thread_cpu_ns, proc_cpu_ns, nvcsw, nivcsw, minflt, majflt] (docs/protocol.md)
T_READ, THREAD_CPU, PROC_CPU, NVCSW, NIVCSW, MINFLT, MAJFLT = range(7)
Ru = tuple[int, int, int, int, int, int, int]
#: How far a difference of two edge readings of the thread clock can be from the span's own CPU:
#: the client reads CLOCK_THREAD_CPUTIME_ID (exact, ns) just after taking the edge's timestamp,
#: so a reading includes up to a few us of the hint's own code.  (An earlier client sent
#: getrusage's utime+stime, which is scaled tick samples: 20-40 us off per 1 ms spin, tens of
#: us per 20 ms span, measured here; the clamp below still guards against such readings.)
RUSAGE_RES_NS = 5_000
RUSAGE_RES_FRAC = 0.0


def rusage_res(d: float) -> int:
    return RUSAGE_RES_NS + round(abs(d) * RUSAGE_RES_FRAC)


#: (signal, ru item) of the counts that are exact only when both edges were read at the edge.
_COUNTS = (("ctx_vol", NVCSW), ("ctx_invol", NIVCSW), ("thread_minflt", MINFLT), ("thread_majflt", MAJFLT))
_NCPU = os.cpu_count() or 1

Bounds = tuple[float, float]


def edge_bounds(c0: Value, t0: int | None, c1: Value, t1: int | None, t: int, rate: float = 1.0) -> Bounds | None:
    """Where a monotone counter that grows at most ``rate`` per ns can be at time t.

    ``c0`` at ``t0`` (may be missing) and ``c1`` at ``t1`` are two readings of it;
    t may lie before, between or after them.
    """
    if c1 is None or t1 is None:
        return None
    if c0 is None or t0 is None or t0 >= t1:
        if t >= t1:
            return (c1, c1 + rate * (t - t1))
        return (max(c1 - rate * (t1 - t), 0.0), c1)
    if t <= t0:
        return (max(c0 - rate * (t0 - t), 0.0), c0)
    if t >= t1:
        return (c1, c1 + rate * (t - t1))
    return (max(c0, c1 - rate * (t1 - t)), min(c1, c0 + rate * (t - t0)))


def _cut(a: Bounds | None, b: Bounds | None) -> Bounds | None:
    if a is None:
        return b
    if b is None:
        return a
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    if lo > hi:  # inconsistent sources (resolution, clock steps): trust the readings
        return a
    return (lo, hi)


def _point(lo: float, hi: float, guess: float | None, fallback: float) -> float:
    v = fallback if guess is None else guess
    return min(max(v, lo), hi)


def apply(
    signals: dict[str, Any],
    duration_ns: int,
    start_ns: int,
    end_ns: int,
    ru_begin: Ru | None,
    ru_end: Ru | None,
    sampled: Bounds | None,
    nthreads: int | None,
) -> None:
    """Rewrite a span's CPU figures from its edge readings (or bound the interpolated ones).

    ``signals`` holds the interpolated figures already; ``sampled`` is the
    interval the 10 Hz samples allow for the span's thread CPU (None if unknown).
    """
    dur = float(max(duration_ns, 0))
    window: Bounds = (0.0, dur)
    guess = signals.get("thread_cpu_ns")
    if ru_begin is None or ru_end is None:
        if guess is None:
            return  # no thread CPU at all (no /proc sampler): nothing to qualify
        signals["cpu_exact"] = False
        iv = _cut(window, sampled)
        if iv is not None:
            p = _point(iv[0], iv[1], guess, guess)
            signals["thread_cpu_ns"] = round(p)
            signals["thread_cpu_ns_err"] = round(max(p - iv[0], iv[1] - p))
        return
    gb = max(start_ns - ru_begin[T_READ], 0)
    ge = max(end_ns - ru_end[T_READ], 0)
    exact = gb == 0 and ge == 0
    signals["cpu_exact"] = exact
    d = ru_end[THREAD_CPU] - ru_begin[THREAD_CPU]
    lo, hi = d - gb, d + ge
    if hi < 0 or lo > dur:
        # A difference the wall time forbids (a client sending getrusage's utime+stime, which is
        # scaled tick samples and can lag and later overshoot) is clamped, and the bound says how far.
        signals["cpu_reading_clamped"] = True
        p = min(max(float(d), 0.0), dur)
        signals["thread_cpu_ns"] = round(p)
        signals["thread_cpu_ns_err"] = round(abs(d - p)) + rusage_res(p)
    else:
        # The readings' own difference is the estimate (the samples are another clock: not mixed in).
        lo, hi = max(lo, 0.0), min(hi, dur)
        p = min(max(float(d), lo), hi)
        signals["thread_cpu_ns"] = round(p)
        signals["thread_cpu_ns_err"] = round(max(p - lo, hi - p)) + rusage_res(p)
    # Process CPU: every thread of it may have run in the gaps (at most one per CPU).
    n = min(max(nthreads or 1, 1), _NCPU)
    dp = ru_end[PROC_CPU] - ru_begin[PROC_CPU]
    piv = _cut((0.0, n * dur), (dp - n * gb, dp + n * ge))
    assert piv is not None
    interp = None
    if "cpu_user_ns" in signals or "cpu_sys_ns" in signals:
        interp = float((signals.get("cpu_user_ns") or 0) + (signals.get("cpu_sys_ns") or 0))
    pp = _point(piv[0], piv[1], None, float(dp))
    signals["proc_cpu_ns"] = round(pp)
    signals["proc_cpu_ns_err"] = round(max(pp - piv[0], piv[1] - pp))
    _rescale_user_sys(signals, pp, interp)
    # Counts between the two readings: the span, less the gaps (a reading reused from the previous
    # edge, ~10 us here); what happened in a gap is not seen, so ru_gap_ns says how much that is.
    for name, item in _COUNTS:
        signals[name] = max(ru_end[item] - ru_begin[item], 0)
    signals["ru_gap_ns"] = gb + ge


def _rescale_user_sys(signals: dict[str, Any], total: float, interp: float | None) -> None:
    """Make cpu_user_ns + cpu_sys_ns sum to the edge-read process CPU (the split stays sampled)."""
    if interp is None:
        return
    user = float(signals.get("cpu_user_ns") or 0)
    if interp > 0:
        f = total / interp
        signals["cpu_user_ns"] = round(user * f)
        signals["cpu_sys_ns"] = round(total - user * f)
    else:
        signals["cpu_user_ns"], signals["cpu_sys_ns"] = round(total), 0
    signals["cpu_split_sampled"] = True


# ------------------------------------------------------------------ many spans at once
def edge_bounds_many(c0: Value, t0: int | None, c1: Value, t1: int | None, t: Any, rate: float = 1.0) -> Any:
    """edge_bounds() for an int64 array of times ``t`` (same two readings): (lo, hi) float arrays, or None.

    Time differences are taken in int64 before they become floats, as the scalar
    version takes them in Python ints: CLOCK_MONOTONIC ns pass 2^53 after 104 days up.
    """
    import numpy as np

    if c1 is None or t1 is None:
        return None
    t = np.asarray(t, dtype=np.int64)
    c1f = float(c1)
    to1 = (t - t1).astype(np.float64)  # t - t1 (negative before t1)
    late = t >= t1
    if c0 is None or t0 is None or t0 >= t1:
        lo = np.where(late, c1f, np.maximum(c1f + rate * to1, 0.0))
        hi = np.where(late, c1f + rate * to1, c1f)
        return lo, hi
    c0f = float(c0)
    to0 = (t - t0).astype(np.float64)
    early = t <= t0
    lo = np.where(early, np.maximum(c0f + rate * to0, 0.0), np.where(late, c1f, np.maximum(c0f, c1f + rate * to1)))
    hi = np.where(early, c0f, np.where(late, c1f + rate * to1, np.minimum(c1f, c0f + rate * to0)))
    return lo, hi


def apply_many(
    cols: dict[str, Any],
    duration_ns: Any,
    gap_begin: Any,
    gap_end: Any,
    ru_begin: Any,
    ru_end: Any,
    has_ru: Any,
    sampled_lo: Any,
    sampled_hi: Any,
    nthreads: Any,
) -> dict[str, tuple[str, Any]]:
    """apply() for many spans at once, on columns: ``cols`` maps a signal to a float array (NaN = absent).

    ``gap_begin``/``gap_end`` are each edge's ``max(t_edge - t_read, 0)`` (taken in Python ints by the
    caller: absolute ns are past float64's exact range on a long-running host), ``ru_begin``/``ru_end``
    (n, 7) float arrays of the readings (any value where ``has_ru`` is False),
    ``sampled_lo``/``sampled_hi`` the sampled interval (NaN where unknown), ``nthreads`` NaN
    where unknown.  Columns are rewritten or added in place, with the same arithmetic as
    apply(); returns {signal: ('i'|'b', rows)} for what this wrote as ints or bools (NaN = absent).
    """
    import numpy as np

    kinds: dict[str, tuple[str, Any]] = {}
    n = len(duration_ns)
    nan = np.full(n, np.nan)

    def put(name: str, mask: Any, values: Any, kind: str) -> None:
        col = cols.get(name)
        if col is None:
            col = cols[name] = nan.copy()
        col[mask] = np.asarray(values, dtype=np.float64)[mask] if np.ndim(values) else values
        old = kinds.get(name)
        kinds[name] = (kind, mask if old is None else old[1] | mask)

    dur = np.maximum(np.asarray(duration_ns, dtype=np.float64), 0.0)
    guess = cols.get("thread_cpu_ns")
    has_ru = np.asarray(has_ru, dtype=bool)
    # -- no readings: bound the interpolated thread CPU by the samples around the edges
    plain = ~has_ru & (~np.isnan(guess) if guess is not None else np.zeros(n, dtype=bool))
    if plain.any():
        assert guess is not None
        s_ok = ~np.isnan(sampled_lo)
        lo, hi = np.maximum(0.0, sampled_lo), np.minimum(dur, sampled_hi)
        use = s_ok & (lo <= hi)
        iv_lo, iv_hi = np.where(use, lo, 0.0), np.where(use, hi, dur)
        p = np.minimum(np.maximum(guess, iv_lo), iv_hi)
        put("cpu_exact", plain, 0.0, "b")
        put("thread_cpu_ns", plain, np.rint(p), "i")
        put("thread_cpu_ns_err", plain, np.rint(np.maximum(p - iv_lo, iv_hi - p)), "i")
    if not has_ru.any():
        return kinds
    m = has_ru
    rb, re = np.asarray(ru_begin, dtype=np.float64), np.asarray(ru_end, dtype=np.float64)
    gb, ge = np.asarray(gap_begin, dtype=np.float64), np.asarray(gap_end, dtype=np.float64)
    put("cpu_exact", m, (gb == 0) & (ge == 0), "b")
    d = re[:, THREAD_CPU] - rb[:, THREAD_CPU]
    lo, hi = d - gb, d + ge
    clamped = m & ((hi < 0) | (lo > dur))
    ok = m & ~clamped
    res = RUSAGE_RES_NS + 0.0  # rusage_res(p) with RUSAGE_RES_FRAC = 0
    if RUSAGE_RES_FRAC:  # pragma: no cover - kept equal to apply() should the fraction be set
        raise NotImplementedError("apply_many assumes RUSAGE_RES_FRAC == 0")
    if clamped.any():
        p = np.minimum(np.maximum(d, 0.0), dur)
        put("cpu_reading_clamped", clamped, 1.0, "b")
        put("thread_cpu_ns", clamped, np.rint(p), "i")
        put("thread_cpu_ns_err", clamped, np.rint(np.abs(d - p)) + res, "i")
    if ok.any():
        lo2, hi2 = np.maximum(lo, 0.0), np.minimum(hi, dur)
        p = np.minimum(np.maximum(d, lo2), hi2)
        put("thread_cpu_ns", ok, np.rint(p), "i")
        put("thread_cpu_ns_err", ok, np.rint(np.maximum(p - lo2, hi2 - p)) + res, "i")
    nt = np.where(np.isnan(nthreads) | (nthreads == 0), 1.0, np.trunc(nthreads))
    k = np.minimum(np.maximum(nt, 1.0), float(_NCPU))
    dp = re[:, PROC_CPU] - rb[:, PROC_CPU]
    plo, phi = np.maximum(0.0, dp - k * gb), np.minimum(k * dur, dp + k * ge)
    bad = plo > phi
    plo, phi = np.where(bad, 0.0, plo), np.where(bad, k * dur, phi)
    pp = np.minimum(np.maximum(dp, plo), phi)
    put("proc_cpu_ns", m, np.rint(pp), "i")
    put("proc_cpu_ns_err", m, np.rint(np.maximum(pp - plo, phi - pp)), "i")
    user, sys_ = cols.get("cpu_user_ns"), cols.get("cpu_sys_ns")
    if user is not None or sys_ is not None:
        u = np.nan_to_num(user) if user is not None else np.zeros(n)
        s = np.nan_to_num(sys_) if sys_ is not None else np.zeros(n)
        seen = np.zeros(n, dtype=bool)
        for c in (user, sys_):
            if c is not None:
                seen |= ~np.isnan(c)
        present = m & seen
        if present.any():
            interp = u + s
            pos = interp > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(pos, pp / np.where(pos, interp, 1.0), 0.0)
            new_u = np.where(pos, np.rint(u * f), np.rint(pp))
            new_s = np.where(pos, np.rint(pp - u * f), 0.0)
            put("cpu_user_ns", present, new_u, "i")
            put("cpu_sys_ns", present, new_s, "i")
            put("cpu_split_sampled", present, 1.0, "b")
    for name, item in _COUNTS:
        put(name, m, np.maximum(re[:, item] - rb[:, item], 0.0), "i")
    put("ru_gap_ns", m, gb + ge, "i")
    return kinds
