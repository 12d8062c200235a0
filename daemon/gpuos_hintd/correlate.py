"""Correlation: attribute sampled signals to the phases open at the time.

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

Bulk: at each tick, the spans of a process that are due are finalised together
in a few numpy passes - the edge values of every span of one thread from one
pair of samples at once, the counter deltas, gauge means and the edge-reading
CPU (edge_cpu.apply_many) as columns - and their signals dicts are built from
those columns in one go.  Only what needs a span's own series or device
interval (GPU energy from power samples) is done span by span.  The
arithmetic is the per-span reference's (tests/correlate_reference.py, the
module as it was) and tests/test_correlate_bulk.py checks the two agree.

A span is finalised at the first tick at or after its end.  Processes that
vanish get their open spans closed as ``abandoned`` at the last time they
were seen alive.  A short ring of recent samples stays per process so that a
device interval arriving late (CUDA events resolve after the host phase ends)
can still get GPU figures of its own.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - numpy is a dependency of the daemon; say so plainly if missing
    raise ModuleNotFoundError(
        "gpuos-hintd needs numpy>=1.24 for its span pipeline: pip install 'numpy>=1.24'", name="numpy"
    ) from exc

from . import edge_cpu
from .model import Metric, ProcKey, ProcSample, SpanRow, Value
from .power_series import PowerSeries

HISTORY_TICKS = 600  # 60 s at 10 Hz, for late device intervals
SERIES_POINTS = 3000  # per process and series: 60 s of 20 ms power samples
#: How long an ended span waits for the series to reach its end (the driver's samples lag).
SERIES_WAIT_NS = 300_000_000

_NAN = float("nan")
_EMPTY: dict[str, Value] = {}
_NO_SPANS: dict[int, Any] = {}
#: What one process's sample made due: (key, spans, prev, cur, edge cache), for _finalize_many.
_DueGroup = tuple[Any, list[Any], Any, Any, dict[Any, Any]]
_NO_RU = (0, 0, 0, 0, 0, 0, 0)
_I64 = (-(1 << 63), (1 << 63) - 1)


@dataclasses.dataclass(slots=True)
class Snapshot:
    t_ns: int
    values: dict[str, Value]
    threads: dict[int, dict[str, Value]]


@dataclasses.dataclass(slots=True)
class OpenSpan:
    """A span the correlator is still gathering signals for."""

    row: SpanRow
    #: The counters at the start (float64 over Correlator.counters, NaN = absent); None until a sample covers it.
    start_vals: Any = None
    start_estimated: bool = False
    #: Gauges over the samples inside: sum, count and max (float64 over Correlator.gauges; None = no sample yet).
    gsum: Any = None
    gn: Any = None
    gmax: Any = None
    samples: int = 0
    #: The client's edge readings (docs/protocol.md), None for old clients / reads off.
    ru_begin: edge_cpu.Ru | None = None
    ru_end: edge_cpu.Ru | None = None
    #: Where the thread CPU counter can be at the start, from the samples around it.
    start_bounds: edge_cpu.Bounds | None = None

    @property
    def ended(self) -> bool:
        return self.row.status != "open"


def _i64_array(values: Sequence[int]) -> np.ndarray:
    """int64 array of ns timestamps; values past int64 (only a hostile client's) are clamped."""
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return np.array([min(max(v, _I64[0]), _I64[1]) for v in values], dtype=np.int64)


class _Edges:
    """Some metrics of one thread between two samples, as arrays: value(t) = a + d * frac(t).

    The same arithmetic as the per-span interpolation (a thread value shadows the
    process one; a value missing on one side is taken from the other; absent = NaN),
    computed once per (pair of samples, thread) for every span that needs it.
    """

    __slots__ = ("a", "d", "t0", "width")

    def __init__(self, prev: Snapshot | None, cur: Snapshot, tid: int, names: Sequence[str]) -> None:
        cv, ct = cur.values, cur.threads.get(tid, _EMPTY)
        lerp = prev is not None and cur.t_ns > prev.t_ns
        pv, pt = (prev.values, prev.threads.get(tid, _EMPTY)) if lerp and prev is not None else (_EMPTY, _EMPTY)
        a: list[Any] = []
        d: list[Any] = []
        for k in names:
            if k in ct:
                v = ct[k]
            elif k in cv:
                v = cv[k]
            else:
                a.append(_NAN)
                d.append(0.0)
                continue
            b = (pt[k] if k in pt else pv.get(k)) if lerp else None
            if b is None or v is None:
                f = v if b is None else b
                a.append(_NAN if f is None else f)
                d.append(0.0)
            else:
                a.append(b)
                d.append(v - b)  # in Python numbers, as the reference does: exact for big ints
        self.a = np.array(a, dtype=np.float64)
        self.d = np.array(d, dtype=np.float64)
        self.t0 = prev.t_ns if lerp and prev is not None else None
        self.width = cur.t_ns - prev.t_ns if lerp and prev is not None else 1

    def at(self, t: np.ndarray) -> np.ndarray:
        """The values at each time of ``t`` (int64): shape (len(t), len(names))."""
        if self.t0 is None:
            return np.broadcast_to(self.a, (len(t), len(self.a)))
        frac = np.clip((t - self.t0) / self.width, 0.0, 1.0)
        return self.a + self.d * frac[:, None]


def _round_arr(v: np.ndarray) -> np.ndarray:
    """_round() over an array: 3 decimals below 1e12, whole numbers above (NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(v) < 1e12, np.round(v, 3), np.round(v))


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
        self.series: dict[ProcKey, dict[str, PowerSeries]] = {}
        #: Leave finalisation to end_tick() (one columnar pass per tick for every process); off,
        #: on_sample finalises and emits at once (tests and tools that feed one process).
        self.defer = False
        self._due: list[_DueGroup] = []

    def set_metrics(self, metrics: Mapping[str, Metric]) -> None:
        self.metrics = dict(metrics)
        self._split_metrics()

    def _split_metrics(self) -> None:
        # Span edges only ever need the counters (gauges aggregate over samples).
        self.counters = tuple(n for n, m in self.metrics.items() if m.kind == "counter")
        self.gauges = tuple(n for n, m in self.metrics.items() if m.kind == "gauge")
        # The signal columns in declaration order: a counter's delta, a gauge's mean and max.
        keys: list[str] = []
        c_pos: list[int] = []
        mean_pos: list[int] = []
        max_pos: list[int] = []
        for n, m in self.metrics.items():
            if m.kind == "counter":
                c_pos.append(len(keys))
                keys.append(n)
            elif m.kind == "gauge":
                mean_pos.append(len(keys))
                max_pos.append(len(keys) + 1)
                keys += [f"{n}_mean", f"{n}_max"]
        self._keys = keys
        self._c_pos, self._mean_pos, self._max_pos = (
            np.array(c_pos, int),
            np.array(mean_pos, int),
            np.array(max_pos, int),
        )
        self._threads_gauge = self.gauges.index("threads") if "threads" in self.gauges else None
        self._est_gauge = self.gauges.index("gpu_energy_estimated") if "gpu_energy_estimated" in self.gauges else None
        self._nan_counters = np.full(len(self.counters), np.nan)

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
        spans = self.spans.get(key)
        if spans:
            # One light pass sorts the spans into what this sample does to them; the work is batched.
            starting: list[OpenSpan] = []
            gauged: dict[int, list[OpenSpan]] = {}
            due: list[OpenSpan] = []
            for span in spans.values():
                row = span.row
                if row.start_ns > t_ns:
                    continue
                if span.start_vals is None:
                    starting.append(span)
                ended = row.status != "open"
                if not ended or t_ns <= row.end_ns:
                    g = gauged.get(row.tid)
                    if g is None:
                        gauged[row.tid] = [span]
                    else:
                        g.append(span)
                if ended and row.end_ns <= t_ns:
                    if series and t_ns - row.end_ns < SERIES_WAIT_NS and not _covered(series, row):
                        continue  # the driver's samples up to the end are not in yet
                    due.append(span)
            edges: dict[tuple[int, bool], _Edges] = {}
            if starting:
                self._start(prev, cur, starting, edges)
            if gauged and self.gauges:
                proc = np.array([cur.values.get(n) for n in self.gauges], dtype=np.float64)
                for tid, group in gauged.items():
                    self._add_gauges(group, proc, cur.threads.get(tid, _EMPTY))
            else:
                for group in gauged.values():
                    for span in group:
                        span.samples += 1
            if due:
                if self.defer:
                    self._due.append((key, due, prev, cur, edges))
                else:
                    done = self._finalize_many([(key, due, prev, cur, edges)])
        self.prev[key] = cur
        if done:
            self.emit(done)

    def end_tick(self) -> None:
        """Finalise what this tick's samples made due, for every process at once, and emit it.

        With ``defer`` on (the daemon's setting), ``on_sample`` only sorts a process's spans and
        leaves the finalisation to this one call per tick: the columnar passes cost per call (a
        walk over every signal column), so one call for all processes, not one per process,
        keeps a tick of many processes with a few spans each cheap.
        """
        groups, self._due = self._due, []
        if groups:
            done = self._finalize_many(groups)
            if done:
                self.emit(done)

    def _edges(
        self, cache: dict[tuple[int, bool], _Edges], prev: Snapshot | None, cur: Snapshot, tid: int, counters: bool
    ) -> _Edges:
        got = cache.get((tid, counters))
        if got is None:
            got = cache[(tid, counters)] = _Edges(prev, cur, tid, self.counters if counters else self.gauges)
        return got

    def _start(
        self, prev: Snapshot | None, cur: Snapshot, spans: list[OpenSpan], cache: dict[tuple[int, bool], _Edges]
    ) -> None:
        """The counters at each span's start (and where its thread CPU can be), per thread in one pass."""
        for tid, group in _by_tid(spans).items():
            t = _i64_array([s.row.start_ns for s in group])
            vals = self._edges(cache, prev, cur, tid, True).at(t)
            # No sample before the start: the first one stands in, and it is said.
            est = [True] * len(group) if prev is None else (t < prev.t_ns).tolist()
            b = _thread_cpu_bounds_many(prev, cur, t, tid)
            lo, hi = (b[0].tolist(), b[1].tolist()) if b is not None else (None, None)
            for i, s in enumerate(group):
                s.start_vals = vals[i]
                s.start_estimated = est[i]
                s.start_bounds = (lo[i], hi[i]) if lo is not None and hi is not None else None

    def _add_gauges(self, group: list[OpenSpan], proc: np.ndarray, thread: dict[str, Value]) -> None:
        """One sample's gauges into every span of one thread that it falls inside."""
        if thread:
            th = np.array([thread.get(n) for n in self.gauges], dtype=np.float64)
            p_ok, t_ok = ~np.isnan(proc), ~np.isnan(th)
            add = np.where(p_ok, proc, 0.0) + np.where(t_ok, th, 0.0)
            cnt = p_ok.astype(np.float64) + t_ok
            mx = np.fmax(proc, th)
        else:
            ok = ~np.isnan(proc)
            add, cnt, mx = np.where(ok, proc, 0.0), ok.astype(np.float64), proc
        for s in group:
            s.samples += 1
            if s.gsum is None:  # shared with the other spans: only ever replaced, never changed in place
                s.gsum, s.gn, s.gmax = add, cnt, mx
            else:
                s.gsum, s.gn, s.gmax = s.gsum + add, s.gn + cnt, np.fmax(s.gmax, mx)

    def _finalize_many(self, groups: list[_DueGroup]) -> list[SpanRow]:
        """Signals of spans that end before their process's ``cur``, for one or more processes:
        counters, gauges, edge CPU, derived figures, as columns over all of them at once."""
        spans = [s for g in groups for s in g[1]]
        rows = [s.row for s in spans]
        n = len(rows)
        start = _i64_array([r.start_ns for r in rows])
        end = _i64_array([r.end_ns for r in rows])
        durations = [r.duration_ns for r in rows]
        dur = np.array(durations, dtype=np.float64)
        nc, ng = len(self.counters), len(self.gauges)
        end_vals = np.full((n, nc), np.nan)
        # A process without a sample to stand on (cur None: closed before any) gets no midpoint
        # estimate: its rows stay NaN, which is what "no mid_vals" meant for one process.
        mid_vals = np.full((n, ng), np.nan) if any(g[3] is not None for g in groups) else None
        end_lo = np.full(n, np.nan)
        end_hi = np.full(n, np.nan)
        #: Per span: its process's `threads` value at `cur` (the fallback thread count of edge CPU).
        threads_now = np.full(n, np.nan)
        off = 0
        for _key, g_spans, prev, cur, cache in groups:
            m = len(g_spans)
            if cur is not None:
                fallback = cur.values.get("threads")
                if fallback is not None:
                    threads_now[off : off + m] = float(fallback)
                for tid, idx_list in _idx_by_tid(rows[off : off + m]).items():
                    idx = np.array(idx_list, dtype=np.intp) + off
                    te = end[idx]
                    end_vals[idx] = self._edges(cache, prev, cur, tid, True).at(te)
                    if mid_vals is not None and ng:
                        ts = start[idx]
                        mid_vals[idx] = self._edges(cache, prev, cur, tid, False).at(ts + (te - ts) // 2)
                    b = _thread_cpu_bounds_many(prev, cur, te, tid)
                    if b is not None:
                        end_lo[idx], end_hi[idx] = b
            off += m
        nan_c = self._nan_counters
        start_vals = np.array([s.start_vals if s.start_vals is not None else nan_c for s in spans]).reshape(n, nc)
        with np.errstate(invalid="ignore"):
            d = end_vals - start_vals
            d = _round_arr(np.where(d < 0, 0.0, d))
        base = np.full((n, len(self._keys)), np.nan)
        base[:, self._c_pos] = d
        est_any = np.zeros(n, dtype=bool)
        gmax = None
        if ng:
            zeros = np.zeros(ng)
            gsum = np.array([s.gsum if s.gsum is not None else zeros for s in spans]).reshape(n, ng)
            gn = np.array([s.gn if s.gn is not None else zeros for s in spans]).reshape(n, ng)
            gmax = np.array([s.gmax if s.gmax is not None else zeros + np.nan for s in spans]).reshape(n, ng)
            has = gn > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(has, gsum / np.where(has, gn, 1.0), np.nan)
            mx = np.where(has, gmax, np.nan)
            if mid_vals is not None:
                # No sample inside: the value interpolated at the midpoint stands in, flagged estimated.
                est = ~has & ~np.isnan(mid_vals)
                mean = np.where(est, mid_vals, mean)
                mx = np.where(est, mid_vals, mx)
                est_any = est.any(axis=1)
            base[:, self._mean_pos] = _round_arr(mean)
            base[:, self._max_pos] = _round_arr(mx)
        keys = self._keys
        # Views of the columns: edge_cpu rewrites them in place and adds its own.
        cols: dict[str, np.ndarray] = {name: base[:, j] for j, name in enumerate(keys)}
        kinds = self._edge_cpu(spans, cols, dur, threads_now, end_lo, end_hi, gmax)
        _derive_many(cols, base, keys, dur)
        if self._est_gauge is not None and gmax is not None:
            flag = base[:, self._max_pos[self._est_gauge]]
            is_est = ~np.isnan(flag) & (flag != 0)
            if is_est.any():
                cols["gpu_energy_is_estimate"] = np.where(is_est, 1.0, np.nan)
                kinds["gpu_energy_is_estimate"] = ("b", is_est)
        signals, columns = _dicts(keys, base, cols, kinds)
        own: list[int] = []  # spans whose dicts get more than the columns (the store packs those dicts)
        span_keys = [g[0] for g in groups for _ in g[1]]
        for i, (span, row, sig, key) in enumerate(zip(spans, rows, signals, span_keys, strict=True)):
            spans_of = self.spans.get(key, _NO_SPANS)
            series = self.series.get(key)
            if row.dev_start_ns is not None and row.dev_end_ns is not None:
                # Device time and the GPU figures over the device interval (busy %, energy).
                if "gpu_energy_j" in sig:
                    sig["gpu_energy_counter_j"] = sig["gpu_energy_j"]
                sig.update(
                    self.device_signals(key, row.dev_start_ns, row.dev_end_ns, row.dev_busy_ns, row.dev_busy_err_ns)
                )
                own.append(i)
            elif series is not None:
                self._series_energy(key, row, sig)
                own.append(i)
            row.signals = sig
            row.samples = span.samples
            row.estimated = bool(span.start_estimated or est_any[i] or span.samples == 0)
            spans_of.pop(row.span_id, None)
        self.finalized += n
        batch = SpanBatch(rows)
        batch.columns = (*columns, own)
        return batch

    def _edge_cpu(
        self,
        spans: list[OpenSpan],
        cols: dict[str, np.ndarray],
        dur: np.ndarray,
        threads_now: np.ndarray,
        end_lo: np.ndarray,
        end_hi: np.ndarray,
        gmax: np.ndarray | None,
    ) -> dict[str, tuple[str, Any]]:
        """CPU figures from the edge readings, or bounds on the interpolated ones (edge_cpu.apply_many)."""
        n = len(spans)
        s_lo, s_hi = np.full(n, np.nan), np.full(n, np.nan)
        if True:  # end bounds exist only where the span's process had a sample (else NaN: not ok)
            sb = [s.start_bounds for s in spans]
            known = np.array([b is not None for b in sb], dtype=bool)
            if known.any():
                sb_lo = np.array([b[0] if b is not None else np.nan for b in sb], dtype=np.float64)
                sb_hi = np.array([b[1] if b is not None else np.nan for b in sb], dtype=np.float64)
                ok = known & ~np.isnan(end_lo)
                s_lo = np.where(ok, np.maximum(end_lo - sb_hi, 0.0), np.nan)
                s_hi = np.where(ok, end_hi - sb_lo, np.nan)
        nthreads = np.full(n, np.nan)
        if gmax is not None and self._threads_gauge is not None:
            nthreads = gmax[:, self._threads_gauge].copy()
        nthreads = np.where(np.isnan(nthreads), threads_now, nthreads)
        has_ru = [s.ru_begin is not None and s.ru_end is not None for s in spans]
        if any(has_ru):
            rb = [s.ru_begin if ok and s.ru_begin is not None else _NO_RU for s, ok in zip(spans, has_ru, strict=True)]
            re = [s.ru_end if ok and s.ru_end is not None else _NO_RU for s, ok in zip(spans, has_ru, strict=True)]
            # The gaps in Python ints: absolute ns are past float64's exact range on a long-running host.
            gb = [max(s.row.start_ns - b[0], 0) for s, b in zip(spans, rb, strict=True)]
            ge = [max(s.row.end_ns - e[0], 0) for s, e in zip(spans, re, strict=True)]
            rb_a, re_a = np.array(rb, dtype=np.float64), np.array(re, dtype=np.float64)
        else:
            gb = ge = [0] * n
            rb_a = re_a = np.zeros((n, 7))
        return edge_cpu.apply_many(cols, dur, gb, ge, rb_a, re_a, has_ru, s_lo, s_hi, nthreads)

    def _series_energy(self, key: ProcKey, row: SpanRow, signals: dict[str, Any]) -> None:
        """GPU energy of a span without a device interval, from the power series over its host interval."""
        got = series_energy(self.series.get(key, {}), row.start_ns, row.end_ns)
        if got is None:
            return
        if "gpu_energy_j" in signals:
            signals["gpu_energy_counter_j"] = signals["gpu_energy_j"]
        signals.update(got)
        signals["gpu_energy_window"] = "host"

    # ------------------------------------------------------------- lifetime
    def close_process(self, key: ProcKey, status: str, at_ns: int | None = None) -> list[SpanRow]:
        """Close every span of a gone (or forgotten) process with what was seen last.

        Open spans end at ``at_ns`` (default: the last sample) with ``status``;
        spans that had already ended keep their own status and end.
        """
        self._due = [g for g in self._due if g[0] != key]  # its due spans are finalised here, once
        prev = self.prev.pop(key, None)
        self.history.pop(key, None)
        series = self.series.pop(key, None)
        spans = list(self.spans.pop(key, {}).values())
        self.n_open.pop(key, None)
        if series:
            self.series[key] = series  # for these last finalisations only
        for span in spans:
            row = span.row
            if not span.ended:
                row.end_ns = max(at_ns if at_ns is not None else (prev.t_ns if prev else row.start_ns), row.start_ns)
                row.status = status
        out: list[SpanRow] = []
        if spans:
            cache: dict[tuple[int, bool], _Edges] = {}
            if prev is not None:
                starting = [s for s in spans if s.start_vals is None]
                if starting:  # never sampled: the last sample stands in for the start, flagged
                    self._start(None, prev, starting, cache)
            out = self._finalize_many([(key, spans, None, prev, cache)])
        self.series.pop(key, None)
        if out:
            self.emit(out)
        return out

    def device_signals(
        self, key: ProcKey, begin_ns: int, end_ns: int, busy_ns: int | None = None, busy_err_ns: int | None = None
    ) -> dict[str, Any]:
        """GPU figures over a device interval: its length, gauges from the recent-sample ring
        (best effort: NVML utilisation is itself a ~1/6 s average), energy from the power series,
        and the client's CUPTI busy time inside it where it measured one (validated at the edge)."""
        out: dict[str, Any] = {"dev_ms": _round((end_ns - begin_ns) / 1e6)}
        if busy_ns is not None:
            out["dev_busy_ms"] = _round(busy_ns / 1e6)
            out["dev_busy_pct"] = _round(100.0 * busy_ns / (end_ns - begin_ns)) if end_ns > begin_ns else 0.0
            if busy_err_ns is not None:
                out["dev_busy_err_ms"] = _round(busy_err_ns / 1e6)
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


def _by_tid(spans: list[OpenSpan]) -> dict[int, list[OpenSpan]]:
    out: dict[int, list[OpenSpan]] = {}
    for s in spans:
        g = out.get(s.row.tid)
        if g is None:
            out[s.row.tid] = [s]
        else:
            g.append(s)
    return out


def _idx_by_tid(rows: list[SpanRow]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        g = out.get(r.tid)
        if g is None:
            out[r.tid] = [i]
        else:
            g.append(i)
    return out


def _derive_many(cols: dict[str, np.ndarray], base: np.ndarray, keys: list[str], dur: np.ndarray) -> None:
    """_derive() as columns: CPU utilisation, thread CPU utilisation, energy and mean power (duration > 0)."""

    def col(name: str) -> np.ndarray | None:
        got = cols.get(name)
        if got is None and name in keys:
            got = base[:, keys.index(name)]
        return got

    pos = dur > 0
    safe = np.where(pos, dur, 1.0)
    user, sys_ = col("cpu_user_ns"), col("cpu_sys_ns")
    with np.errstate(invalid="ignore"):
        if user is not None or sys_ is not None:
            seen = np.zeros(len(dur), dtype=bool)
            total = np.zeros(len(dur))
            for c in (user, sys_):
                if c is not None:
                    ok = ~np.isnan(c)
                    seen |= ok
                    total = total + np.where(ok, c, 0.0)
            cols["cpu_pct"] = np.where(seen & pos, _round_arr(100.0 * total / safe), np.nan)
        tc = col("thread_cpu_ns")
        if tc is not None:
            cols["thread_cpu_pct"] = np.where(pos, _round_arr(100.0 * tc / safe), np.nan)
        # Vendor-neutral energy: NVML's gpu_energy_mj or amdgpu's amdgpu_energy_mj (one GPU vendor per
        # process in practice); consumers read gpu_energy_j.
        mj, amd = col("gpu_energy_mj"), col("amdgpu_energy_mj")
        if mj is None:
            mj = amd
        elif amd is not None:
            mj = np.where(np.isnan(mj), amd, mj)
        if mj is not None:
            cols["gpu_energy_j"] = np.where(pos, _round_arr(mj / 1000.0), np.nan)
            cols["gpu_avg_power_w"] = np.where(pos, _round_arr(mj / (safe / 1e9) / 1000.0), np.nan)


def _dicts(
    keys: list[str], base: np.ndarray, extra: dict[str, np.ndarray], kinds: dict[str, tuple[str, Any]]
) -> tuple[list[dict[str, Any]], tuple[Any, ...]]:
    """Per-span signals dicts from the columns (NaN = absent; ints and bools where ``kinds`` says).

    Also the columns themselves, (names, values, int mask, bool flags), for the store: it packs
    them without reading the dicts back.
    """
    names = list(keys)
    mats = [base]
    for name, c in extra.items():
        if name not in keys:
            names.append(name)
            mats.append(c[:, None])
    m = np.hstack(mats) if len(mats) > 1 else base
    nan = np.isnan(m)
    absent = nan.all(axis=0)
    partial = nan.any(axis=0) & ~absent
    columns: list[list[Any]] = []
    kept: list[str] = []
    kept_j: list[int] = []
    sparse: list[tuple[str, Any]] = []
    ints = np.zeros(m.shape, dtype=bool)
    bools: list[bool] = []
    for j, name in enumerate(names):
        if absent[j]:
            continue
        col = m[:, j]
        kind = kinds.get(name)
        bools.append(kind is not None and kind[0] == "b")
        if kind is None:
            vals = col.tolist()
        else:
            kcode, mask = kind
            conv = mask & ~nan[:, j]
            if kcode == "i":
                ints[:, j] = conv
            if kcode == "b":
                typed = (col != 0).tolist()
            else:
                with np.errstate(invalid="ignore"):
                    typed = np.where(conv, col, 0.0).astype(np.int64).tolist()
            if conv.all():
                vals = typed
            else:  # some rows keep their float (a span without readings next to ones with)
                vals = col.tolist()
                for i in np.flatnonzero(conv).tolist():
                    vals[i] = typed[i]
        columns.append(vals)
        kept.append(name)
        kept_j.append(j)
        if partial[j]:
            sparse.append((name, np.flatnonzero(nan[:, j]).tolist()))
    rows = zip(*columns, strict=True) if columns else ((),) * len(base)
    out = [dict(zip(kept, r, strict=True)) for r in rows]
    for name, missing in sparse:
        for i in missing:
            del out[i][name]
    if len(kept_j) < len(names):
        m, ints = m[:, kept_j], ints[:, kept_j]
    return out, (kept, m, ints, bools)


class SpanBatch(list):  # type: ignore[type-arg]
    """The spans of one finalisation (a list of SpanRow) with their signals as columns.

    ``columns`` = (names, float64 values with NaN = absent, int mask, bool flags, rows whose
    dicts hold more than the columns); the store packs from them (duck-typed: it imports no
    core module), anything else just sees a list of rows.
    """

    __slots__ = ("columns",)


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


def _thread_cpu_bounds_many(prev: Snapshot | None, cur: Snapshot, t: np.ndarray, tid: int) -> Any:
    """Where thread ``tid``'s CPU counter can be at each time of ``t``, given the two samples around."""
    c1 = cur.threads.get(tid, _EMPTY).get("thread_cpu_ns")
    if prev is None:
        return edge_cpu.edge_bounds_many(None, None, c1, cur.t_ns, t)
    c0 = prev.threads.get(tid, _EMPTY).get("thread_cpu_ns")
    return edge_cpu.edge_bounds_many(c0, prev.t_ns, c1, cur.t_ns, t)


def _round(v: float | int) -> float | int:
    if isinstance(v, float):
        return round(v, 3) if abs(v) < 1e12 else round(v)
    return v
