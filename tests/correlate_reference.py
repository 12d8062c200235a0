"""The per-span correlator as it was at 7b3ad84: the reference the bulk path (correlate.py) is checked against.

Kept verbatim (imports made absolute) so that tests/test_correlate_bulk.py can feed both the same
random events and samples and compare every span.  Not used by the daemon.

Original docstring: Correlation: attribute sampled signals to the phases open at the time.

Streaming, O(open spans) per tick, bounded memory: a span never waits for
the whole history.  For each process the correlator keeps only the previous
sample and, for each of its spans:

* counters (cumulative: CPU ns, faults, syscalls, energy mJ) - the value at
  the span's start and at its end, *interpolated linearly* between the two
  samples around each edge; the span gets the difference.  Hint timestamps are
  exact, samples are 100 ms apart: interpolation is what lets a 5 ms phase get
  a 5 ms share of the CPU time instead of all or nothing.
* gauges (RSS, GPU utilisation, power) - mean and max over the samples that
  fall inside the span; a span with no sample inside gets the value
  interpolated at its midpoint and is flagged ``estimated``.

Where the client read its thread's counters at the phase edges (the ``ru``
items of phase_begin/phase_end), CPU, context switches and faults come from
those readings instead, exact or within a stated bound (edge_cpu.py); spans
without them keep the interpolation and carry ``cpu_exact: false`` and a bound.

Timestamped series finer than the tick (``ProcSample.series``: the GPU driver's
power samples, ~20 ms apart) are kept per process, bounded, and integrated over
each span's own interval - the device interval where the client recorded one,
the host interval otherwise - which gives per-span GPU energy at the series'
resolution, with a resolution estimate (``gpu_energy_err_j``).

A span is finalised at the first tick at or after its end.  Processes that
vanish get their open spans closed as ``abandoned`` at the last time they
were seen alive.  A short ring of recent samples stays per process so that a
device interval arriving late (CUDA events resolve after the host phase ends)
can still get GPU figures of its own.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gpuos_hintd import edge_cpu
from gpuos_hintd.model import Metric, ProcKey, ProcSample, SpanRow, Value
from gpuos_hintd.power_series import PowerSeries

HISTORY_TICKS = 600  # 60 s at 10 Hz, for late device intervals
SERIES_POINTS = 3000  # per process and series: 60 s of 20 ms power samples
#: How long an ended span waits for the series to reach its end (the driver's samples lag).
SERIES_WAIT_NS = 300_000_000


@dataclasses.dataclass(slots=True)
class Snapshot:
    t_ns: int
    values: dict[str, Value]
    threads: dict[int, dict[str, Value]]


@dataclasses.dataclass(slots=True)
class OpenSpan:
    """A span the correlator is still gathering signals for."""

    row: SpanRow
    start_vals: dict[str, Value] | None = None
    start_estimated: bool = False
    gauge_sum: dict[str, float] = dataclasses.field(default_factory=dict)
    gauge_max: dict[str, float] = dataclasses.field(default_factory=dict)
    gauge_n: dict[str, int] = dataclasses.field(default_factory=dict)
    samples: int = 0
    #: The client's edge readings (docs/protocol.md), None for old clients / reads off.
    ru_begin: edge_cpu.Ru | None = None
    ru_end: edge_cpu.Ru | None = None
    #: Where the thread CPU counter can be at the start, from the samples around it.
    start_bounds: edge_cpu.Bounds | None = None

    @property
    def ended(self) -> bool:
        return self.row.status != "open"


def _lerp(a: Value, b: Value, frac: float) -> Value:
    if a is None or b is None:
        return b if a is None else a
    return a + (b - a) * frac


def interpolate(
    prev: Snapshot | None, cur: Snapshot, t_ns: int, tid: int, names: Iterable[str] | None = None
) -> dict[str, Value]:
    """Every value (process scope + thread ``tid``) at time t_ns, linear between prev and cur.

    With ``names``, only those (the ones present) are computed: the same values,
    without building and interpolating every other metric of the sample.
    """
    if names is not None:
        return _interpolate_some(prev, cur, t_ns, tid, names)
    vals: dict[str, Value] = dict(cur.values)
    vals.update(cur.threads.get(tid, {}))
    if prev is None or cur.t_ns <= prev.t_ns:
        return vals
    frac = min(max((t_ns - prev.t_ns) / (cur.t_ns - prev.t_ns), 0.0), 1.0)
    before = dict(prev.values)
    before.update(prev.threads.get(tid, {}))
    return {k: _lerp(before.get(k), v, frac) for k, v in vals.items()}


_EMPTY: dict[str, Value] = {}
#: (values that need no interpolation, [(name, before, after - before)] for those that do)
_Edges = tuple[dict[str, Value], list[tuple[str, Any, Any]]]


def _edges(prev: Snapshot | None, cur: Snapshot, tid: int, names: Iterable[str]) -> _Edges:
    """What interpolate() needs for ``names`` between two snapshots, computed once per (tick, thread).

    A thread value shadows the process one; a value missing on one side is taken
    from the other (as _lerp does); ``before + (after - before) * frac`` is then the
    same arithmetic as _lerp's, for any number of spans.
    """
    cv, ct = cur.values, cur.threads.get(tid, _EMPTY)
    lerp = prev is not None and cur.t_ns > prev.t_ns
    pv, pt = (prev.values, prev.threads.get(tid, _EMPTY)) if lerp and prev is not None else (_EMPTY, _EMPTY)
    fixed: dict[str, Value] = {}
    live: list[tuple[str, Any, Any]] = []
    for k in names:
        if k in ct:
            v = ct[k]
        elif k in cv:
            v = cv[k]
        else:
            continue
        if not lerp:
            fixed[k] = v
            continue
        a = pt[k] if k in pt else pv.get(k)
        if a is None or v is None:
            fixed[k] = v if a is None else a
        else:
            live.append((k, a, v - a))
    return fixed, live


def _interpolate_some(
    prev: Snapshot | None, cur: Snapshot, t_ns: int, tid: int, names: Iterable[str], edges: _Edges | None = None
) -> dict[str, Value]:
    """interpolate() restricted to ``names`` (optionally from precomputed edges)."""
    fixed, live = _edges(prev, cur, tid, names) if edges is None else edges
    out = dict(fixed)
    if live and prev is not None:
        frac = min(max((t_ns - prev.t_ns) / (cur.t_ns - prev.t_ns), 0.0), 1.0)
        for k, a, d in live:
            out[k] = a + d * frac
    return out


class Correlator:
    """Per-process span bookkeeping; the daemon core feeds it events and samples."""

    def __init__(self, metrics: Mapping[str, Metric], emit: Callable[[list[SpanRow]], None]) -> None:
        self.metrics = dict(metrics)
        self._split_metrics()
        self.emit = emit
        self.prev: dict[ProcKey, Snapshot] = {}
        self.history: dict[ProcKey, collections.deque[Snapshot]] = {}
        self.spans: dict[ProcKey, dict[int, OpenSpan]] = {}
        #: Spans begun and not yet ended, per process (ended ones wait for a sample to be
        #: finalised; only the open ones are bounded per client).
        self.n_open: dict[ProcKey, int] = {}
        self.finalized = 0
        # Edge data of the snapshot pair being applied, per (tid, counters|gauges): many
        # spans end between the same two samples, and they share it.
        self._cache_pair: tuple[Snapshot | None, Snapshot | None] = (None, None)
        self._cache: dict[tuple[int, bool], _Edges] = {}
        self.series: dict[ProcKey, dict[str, PowerSeries]] = {}

    def set_metrics(self, metrics: Mapping[str, Metric]) -> None:
        self.metrics = dict(metrics)
        self._split_metrics()

    def _split_metrics(self) -> None:
        # Span edges only ever need the counters (gauges aggregate over samples), so
        # edge interpolation is restricted to them: ~4x fewer values per span.
        self._counters = tuple(n for n, m in self.metrics.items() if m.kind == "counter")
        self._gauges = frozenset(n for n, m in self.metrics.items() if m.kind == "gauge")
        #: _finalize's walk over the metrics, in declaration order, with the key names made once.
        self._plan = tuple((n, m.kind == "counter", f"{n}_mean", f"{n}_max") for n, m in self.metrics.items())

    def _interp(self, prev: Snapshot | None, cur: Snapshot, t_ns: int, tid: int, counters: bool) -> dict[str, Value]:
        """interpolate(prev, cur, t_ns, tid) of the counters (or the gauges), cached per snapshot pair."""
        cp = self._cache_pair
        if cp[0] is not prev or cp[1] is not cur:
            self._cache_pair = (prev, cur)
            self._cache = {}
        key = (tid, counters)
        edges = self._cache.get(key)
        if edges is None:
            edges = self._cache[key] = _edges(prev, cur, tid, self._counters if counters else self._gauges)
        return _interpolate_some(prev, cur, t_ns, tid, (), edges)

    # --------------------------------------------------------------- events
    def begin(self, key: ProcKey, row: SpanRow, ru: edge_cpu.Ru | None = None) -> None:
        spans = self.spans.setdefault(key, {})
        spans[row.span_id] = OpenSpan(row, ru_begin=ru)
        self.n_open[key] = self.n_open.get(key, 0) + 1

    def end(self, key: ProcKey, span_id: int, t_ns: int, status: str, ru: edge_cpu.Ru | None = None) -> SpanRow | None:
        span = self.spans.get(key, {}).get(span_id)
        if span is None or span.ended:
            return None
        span.row.end_ns = max(t_ns, span.row.start_ns)
        span.row.status = status
        span.ru_end = ru
        self.n_open[key] -= 1
        return span.row

    def open_spans(self, key: ProcKey) -> Iterable[OpenSpan]:
        return (s for s in self.spans.get(key, {}).values() if not s.ended)

    def get(self, key: ProcKey, span_id: int) -> OpenSpan | None:
        return self.spans.get(key, {}).get(span_id)

    # -------------------------------------------------------------- samples
    def on_sample(self, key: ProcKey, t_ns: int, sample: ProcSample) -> None:
        cur = Snapshot(t_ns, sample.values, sample.threads)
        prev = self.prev.get(key)
        hist = self.history.get(key)
        if hist is None:
            hist = self.history[key] = collections.deque(maxlen=HISTORY_TICKS)
        hist.append(cur)
        if sample.series:
            mine = self.series.setdefault(key, {})
            for name, pts in sample.series.items():
                ser = mine.get(name)
                if ser is None:
                    ser = mine[name] = PowerSeries(SERIES_POINTS)
                ser.add(pts)
        series = self.series.get(key)
        done: list[SpanRow] = []
        for span in list(self.spans.get(key, {}).values()):
            row = span.row
            if span.start_vals is None:
                if row.start_ns > t_ns:
                    continue
                span.start_vals = self._interp(prev, cur, row.start_ns, row.tid, True)
                # No sample before the start: the first one stands in, and it is said.
                span.start_estimated = prev is None or row.start_ns < prev.t_ns
                span.start_bounds = _thread_cpu_bounds(prev, cur, row.start_ns, row.tid)
            if row.start_ns <= t_ns and (not span.ended or t_ns <= row.end_ns):
                self._add_gauges(span, cur, row.tid)
            if span.ended and row.end_ns <= t_ns:
                if series and t_ns - row.end_ns < SERIES_WAIT_NS and not _covered(series, row):
                    continue  # the driver's samples up to the end are not in yet
                end_vals = self._interp(prev, cur, row.end_ns, row.tid, True)
                done.append(self._finalize(key, span, end_vals, prev, cur))
        self.prev[key] = cur
        self._cache_pair, self._cache = (None, None), {}
        if done:
            self.emit(done)

    def _add_gauges(self, span: OpenSpan, snap: Snapshot, tid: int) -> None:
        span.samples += 1
        gauges = self._gauges
        for source in (snap.values, snap.threads.get(tid, _EMPTY)):
            for name, value in source.items():
                if value is None or name not in gauges:
                    continue
                span.gauge_sum[name] = span.gauge_sum.get(name, 0.0) + value
                span.gauge_n[name] = span.gauge_n.get(name, 0) + 1
                if value > span.gauge_max.get(name, float("-inf")):
                    span.gauge_max[name] = value

    def _finalize(
        self,
        key: ProcKey,
        span: OpenSpan,
        end_vals: dict[str, Value],
        prev: Snapshot | None,
        cur: Snapshot | None,
    ) -> SpanRow:
        row = span.row
        start_vals = span.start_vals or {}
        signals: dict[str, Any] = {}
        estimated = span.start_estimated
        mid_vals: dict[str, Value] | None = None
        gauge_n = span.gauge_n
        for name, is_counter, mean_key, max_key in self._plan:
            if is_counter:
                a, b = start_vals.get(name), end_vals.get(name)
                if a is not None and b is not None:
                    d = b - a  # max(b - a, 0) and _round(), inlined: this runs per counter per span
                    if d < 0:
                        d = 0
                    elif isinstance(d, float):
                        d = round(d, 3) if abs(d) < 1e12 else round(d)
                    signals[name] = d
            else:
                n = gauge_n.get(name, 0)
                if n:
                    signals[mean_key] = _round(span.gauge_sum[name] / n)
                    signals[max_key] = _round(span.gauge_max[name])
                elif cur is not None:
                    if mid_vals is None:  # once per span, not once per gauge without samples
                        mid = (row.start_ns + row.end_ns) // 2
                        mid_vals = self._interp(prev, cur, mid, row.tid, False)
                    v = mid_vals.get(name)
                    if v is not None:
                        signals[mean_key] = signals[max_key] = _round(v)
                        estimated = True
        self._edge_cpu(span, signals, prev, cur)
        _derive(signals, row.duration_ns)
        if row.dev_start_ns is not None and row.dev_end_ns is not None:
            # Device time and the GPU figures over the device interval (busy %, energy).
            if "gpu_energy_j" in signals:
                signals["gpu_energy_counter_j"] = signals["gpu_energy_j"]
            signals.update(self.device_signals(key, row.dev_start_ns, row.dev_end_ns))
        elif key in self.series:
            self._series_energy(key, row, signals)
        if signals.get("gpu_energy_estimated_max"):
            signals["gpu_energy_is_estimate"] = True
        row.signals = signals
        row.samples = span.samples
        row.estimated = estimated or span.samples == 0
        self.spans.get(key, {}).pop(row.span_id, None)
        self.finalized += 1
        return row

    def _series_energy(self, key: ProcKey, row: SpanRow, signals: dict[str, Any]) -> None:
        """GPU energy of a span without a device interval, from the power series over its host interval."""
        got = series_energy(self.series.get(key, {}), row.start_ns, row.end_ns)
        if got is None:
            return
        if "gpu_energy_j" in signals:
            signals["gpu_energy_counter_j"] = signals["gpu_energy_j"]
        signals.update(got)
        signals["gpu_energy_window"] = "host"

    def _edge_cpu(self, span: OpenSpan, signals: dict[str, Any], prev: Snapshot | None, cur: Snapshot | None) -> None:
        """CPU figures from the edge readings, or bounds on the interpolated ones."""
        row = span.row
        sampled = None
        if cur is not None and span.start_bounds is not None:
            end_b = _thread_cpu_bounds(prev, cur, row.end_ns, row.tid)
            if end_b is not None:
                sb = span.start_bounds
                sampled = (max(end_b[0] - sb[1], 0.0), end_b[1] - sb[0])
        nthreads = span.gauge_max.get("threads")
        if nthreads is None and cur is not None:
            nthreads = cur.values.get("threads")
        edge_cpu.apply(
            signals,
            row.duration_ns,
            row.start_ns,
            row.end_ns,
            span.ru_begin,
            span.ru_end,
            sampled,
            int(nthreads) if nthreads is not None else None,
        )

    # ------------------------------------------------------------- lifetime
    def close_process(self, key: ProcKey, status: str, at_ns: int | None = None) -> list[SpanRow]:
        """Close every span of a gone (or forgotten) process with what was seen last.

        Open spans end at ``at_ns`` (default: the last sample) with ``status``;
        spans that had already ended keep their own status and end.
        """
        prev = self.prev.pop(key, None)
        self.history.pop(key, None)
        series = self.series.pop(key, None)
        spans = self.spans.pop(key, {})
        self.n_open.pop(key, None)
        out = []
        if series:
            self.series[key] = series  # for these last finalisations only
        for span in spans.values():
            row = span.row
            if not span.ended:
                row.end_ns = max(at_ns if at_ns is not None else (prev.t_ns if prev else row.start_ns), row.start_ns)
                row.status = status
            vals = self._interp(None, prev, row.end_ns, row.tid, True) if prev else {}
            if span.start_vals is None and prev is not None:
                span.start_vals = vals
                span.start_estimated = True
                span.start_bounds = _thread_cpu_bounds(None, prev, row.start_ns, row.tid)
            out.append(self._finalize(key, span, vals, None, prev))
        self.series.pop(key, None)
        self._cache_pair, self._cache = (None, None), {}
        if out:
            self.emit(out)
        return out

    def device_signals(self, key: ProcKey, begin_ns: int, end_ns: int) -> dict[str, Any]:
        """GPU figures over a device interval: its length, gauges from the recent-sample ring
        (best effort: NVML utilisation is itself a ~1/6 s average), energy from the power series."""
        out: dict[str, Any] = {"dev_ms": _round((end_ns - begin_ns) / 1e6)}
        got = series_energy(self.series.get(key, {}), begin_ns, end_ns)
        if got is not None:
            out.update(got)
            out["gpu_energy_window"] = "device"
        hist = self.history.get(key)
        if not hist:
            return out
        inside = [s for s in hist if begin_ns <= s.t_ns <= end_ns]
        for name, m in self.metrics.items():
            if m.kind != "gauge" or not name.startswith("gpu_"):
                continue
            vals = [s.values[name] for s in inside if s.values.get(name) is not None]
            if vals:
                out[f"dev_{name}_mean"] = _round(sum(vals) / len(vals))
                out[f"dev_{name}_max"] = _round(max(vals))
        out["dev_samples"] = len(inside)
        return out


def _covered(series: dict[str, PowerSeries], row: SpanRow) -> bool:
    end = row.dev_end_ns if row.dev_end_ns is not None else row.end_ns
    return all(s.covered(end) for s in series.values())


def series_energy(series: Mapping[str, PowerSeries], a: int, b: int) -> dict[str, Any] | None:
    """Energy over [a, b] from a process's power series (one per GPU), with its resolution."""
    if not series or b < a:
        return None
    mj = err = 0.0
    n = None
    ext = 0
    for s in series.values():
        got = s.integrate(a, b, scale=1.0)  # the sampler already applied the calibration
        if got is None:
            continue
        mj += got.mj
        err += got.err_mj
        n = got.samples if n is None else min(n, got.samples)
        ext = max(ext, got.extrapolated_ns)
    if n is None:
        return None
    out: dict[str, Any] = {
        "gpu_energy_j": _round(mj / 1000.0),
        "gpu_energy_err_j": _round(err / 1000.0),
        "gpu_energy_source": "power_samples",
        "gpu_power_samples": n,
    }
    if b > a:
        out["gpu_avg_power_w"] = _round(mj / ((b - a) / 1e9) / 1000.0)
    if ext:
        out["gpu_energy_extrapolated_ms"] = _round(ext / 1e6)
    if n == 0:
        out["gpu_energy_subres"] = True  # shorter than the sample period: see the phase estimator
    return out


def _thread_cpu_bounds(prev: Snapshot | None, cur: Snapshot, t_ns: int, tid: int) -> edge_cpu.Bounds | None:
    """Where thread ``tid``'s CPU counter can be at t_ns, given the two samples around it."""
    c1 = cur.threads.get(tid, _EMPTY).get("thread_cpu_ns")
    if prev is None:
        return edge_cpu.edge_bounds(None, None, c1, cur.t_ns, t_ns)
    c0 = prev.threads.get(tid, _EMPTY).get("thread_cpu_ns")
    return edge_cpu.edge_bounds(c0, prev.t_ns, c1, cur.t_ns, t_ns)


def _round(v: float | int) -> float | int:
    if isinstance(v, float):
        return round(v, 3) if abs(v) < 1e12 else round(v)
    return v


def _derive(signals: dict[str, Any], duration_ns: int) -> None:
    """Figures computed from others: CPU utilisation, mean power from energy."""
    if duration_ns <= 0:
        return
    cpu = (signals.get("cpu_user_ns") or 0) + (signals.get("cpu_sys_ns") or 0)
    if "cpu_user_ns" in signals or "cpu_sys_ns" in signals:
        signals["cpu_pct"] = _round(100.0 * cpu / duration_ns)
    if "thread_cpu_ns" in signals:
        signals["thread_cpu_pct"] = _round(100.0 * signals["thread_cpu_ns"] / duration_ns)
    # Vendor-neutral energy: NVML's gpu_energy_mj or amdgpu's amdgpu_energy_mj (one GPU vendor per
    # process in practice); consumers read gpu_energy_j.
    mj = signals.get("gpu_energy_mj")
    if mj is None:
        mj = signals.get("amdgpu_energy_mj")
    if mj is not None:
        signals["gpu_energy_j"] = _round(mj / 1000.0)
        signals["gpu_avg_power_w"] = _round(mj / (duration_ns / 1e9) / 1000.0)
