"""The one per-phase aggregator: cumulative figures per (phase path, workload class).

History is in the store; these are the cheap, always-current figures that
`gpuos-hintctl status`/`top` (``top()``) and Prometheus (metrics.LabelView, a
bounded-label view on top of this) show without a query.  export/prom.py keeps
a second instance keyed by workload identity (pod, container, unit).

``add`` runs once per finalised span, so it does the least it can: integer
sums (durations, CPU time in ns, energy in uJ), one bisect for the histogram,
a shifted sum of squares for the standard deviation (numerically sound when
the shift, the key's first duration, is near the mean; Welford's update costs
a division per span), and a sum per tracked signal, taken per batch and key
column by column.  Means, deviations and
seconds are computed when read.  Integer sums also keep every Prometheus
series exactly monotonic: LabelView subtracts figures at promotion time, and
float subtraction could make a counter step back by an ulp (a counter reset
to Prometheus).

Memory is bounded: at most ``max_keys`` keys; the spans of any further key go
to ``untracked`` (still counted, so totals stay right).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .status import PhaseStatus

if TYPE_CHECKING:
    from .model import SpanRow

#: Signals whose per-phase running mean is kept (bounded, so memory stays flat).
TRACKED = (
    "cpu_pct",
    "thread_cpu_pct",
    "ctx_vol",
    "gpu_util_pct_mean",
    "gpu_power_mw_mean",
    "gpu_energy_j",
    "dev_busy_ms",  # CUPTI busy time in the device interval (only spans that carry it count)
)
#: Not a mean of the spans' shares: ``dev_busy_pct`` is total busy time over the total device time
#: of the spans that measured it (PhaseEntry.busy_ms / busy_window_ms), the store's definition
#: (store/read.py), so ``top`` and ``phases`` agree and a long span weighs what it lasts.
MAX_KEYS = 4096
#: Duration buckets (seconds): 100 us .. 100 s, 1-2.5-5 per decade.
DURATION_BUCKETS: tuple[float, ...] = (
    *(round(m * 10.0**e, 6) for e in range(-4, 2) for m in (1.0, 2.5, 5.0)),
    100.0,
)
_BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in DURATION_BUCKETS)
_NBUCKETS = len(DURATION_BUCKETS) + 1
_NUM = (int, float)  # a signal's value counts towards its mean if exactly one of these (not bool)

Key = tuple[str, ...]
#: The additive figures of a series, as the Prometheus view reads them:
#: (spans, not_ok, duration_ns, buckets, cpu_ns, energy_uj).
Figures = tuple[int, int, int, tuple[int, ...], int, int]


class PhaseEntry:
    """One key's cumulative figures (only ever grow)."""

    __slots__ = (
        "abandoned",
        "buckets",
        "busy_ms",
        "busy_window_ms",
        "count",
        "cpu_ns",
        "energy_uj",
        "folded",
        "key",
        "last_ns",
        "max_ns",
        "min_ns",
        "not_ok",
        "shift",
        "sig_n",
        "sig_sum",
        "sq",
        "total_ns",
    )

    def __init__(self, key: Key, n_signals: int) -> None:
        self.key = key
        self.count = 0
        self.not_ok = 0
        self.abandoned = 0
        self.total_ns = 0
        self.shift = -1  # the first duration (ns); -1 until there is one
        self.sq = 0.0  # sum of (duration - shift)^2
        self.min_ns = 0
        self.max_ns = 0
        self.last_ns = 0  # end of the latest span (which class a path had last)
        self.cpu_ns = 0
        self.energy_uj = 0
        self.busy_ms = 0.0  # busy time of the spans that measured it ...
        self.busy_window_ms = 0.0  # ... and their device intervals' length
        self.buckets = [0] * _NBUCKETS
        self.sig_n = [0] * n_signals
        self.sig_sum = [0.0] * n_signals
        #: Its spans also go to the attached view's __other__ series (an unlabelled key).
        self.folded = False

    def figures(self) -> Figures:
        return (self.count, self.not_ok, self.total_ns, tuple(self.buckets), self.cpu_ns, self.energy_uj)

    @property
    def mean_ns(self) -> float:
        return self.total_ns / self.count if self.count else 0.0

    @property
    def m2(self) -> float:
        """Sum of squared deviations from the mean."""
        if self.count < 2:
            return 0.0
        s1 = self.total_ns - self.count * self.shift
        return max(self.sq - s1 * s1 / self.count, 0.0)


class PhaseStats:
    """Per-key aggregates of finalised spans.  Daemon thread only."""

    def __init__(self, max_keys: int = MAX_KEYS, signals: tuple[str, ...] = TRACKED) -> None:
        self.entries: dict[Key, PhaseEntry] = {}
        self.max_keys = max_keys
        self.signals = signals
        self._sig = tuple(enumerate(signals))
        #: Spans of keys beyond max_keys (one pool, key ("__untracked__",)).
        self.untracked = PhaseEntry(("__untracked__",), len(signals))
        self.untracked.folded = True
        #: The attached view's __other__ accumulator (metrics.LabelView), or None.
        self.other: PhaseEntry | None = None
        #: Unlabelled keys that got spans since the view last looked (only while a view is attached).
        self.touched: set[Key] = set()
        #: Called with each new entry (the view labels it while it has room).
        self.on_new_key: list[object] = []

    @property
    def overflow(self) -> int:
        return self.untracked.count

    def add(self, row: SpanRow, key: Key | None = None) -> None:
        """Fold one span into its key (default: (phase path, workload class or ""))."""
        self.add_many((row,), None if key is None else (key,))

    def add_many(self, rows: Iterable[SpanRow], keys: Iterable[Key] | None = None) -> None:
        """Fold spans in (``keys``: one per row, else each row's (path, class))."""
        entries = self.entries
        get = entries.get
        bounds = _BOUNDS_NS
        where = bisect.bisect_left
        sig_pairs = self._sig
        key_iter = iter(keys) if keys is not None else None
        groups: dict[PhaseEntry, list[dict[str, Any]]] = {}
        for row in rows:
            key = next(key_iter) if key_iter is not None else (row.path, row.workload_class or "")
            e = get(key)
            if e is None:
                e = self._new(key)
            end = row.end_ns
            d = end - row.start_ns
            if d < 0:
                d = 0
            n = e.count
            e.count = n + 1
            e.total_ns += d
            if n:
                x = d - e.shift
                e.sq += x * x
                if d < e.min_ns:
                    e.min_ns = d
                elif d > e.max_ns:
                    e.max_ns = d
            else:
                e.shift = e.min_ns = e.max_ns = d
            e.last_ns = end
            status = row.status
            if status != "ok":
                e.not_ok += 1
                if status == "abandoned":
                    e.abandoned += 1
            b = where(bounds, d)
            e.buckets[b] += 1
            grp = groups.get(e)
            if grp is None:
                groups[e] = [row.signals]
            else:
                grp.append(row.signals)
            if e.folded:
                self._fold_other(e, d, b, status != "ok")
        # The signals column by column per key: a comprehension per (key, signal) costs
        # half of the same lookups made span by span in the loop above.
        other = self.other
        for e, sigs in groups.items():
            cpu = int(sum([c for s in sigs if (c := (s.get("cpu_user_ns") or 0) + (s.get("cpu_sys_ns") or 0)) > 0]))
            en = sum([v for s in sigs if (v := s.get("gpu_energy_j")).__class__ in _NUM and v > 0])
            uj = int(en * 1e6 + 0.5) if en else 0
            e.cpu_ns += cpu
            e.energy_uj += uj
            if e.folded and other is not None:
                other.cpu_ns += cpu
                other.energy_uj += uj
            bw = [
                (b, w)
                for s in sigs
                if (b := s.get("dev_busy_ms")).__class__ in _NUM and (w := s.get("dev_ms")).__class__ in _NUM
            ]
            if bw:
                e.busy_ms += sum(b for b, _ in bw)
                e.busy_window_ms += sum(w for _, w in bw)
            sn, ss = e.sig_n, e.sig_sum
            for i, name in sig_pairs:
                vals = [v for s in sigs if (v := s.get(name)).__class__ in _NUM]
                if vals:
                    sn[i] += len(vals)
                    ss[i] += sum(vals)

    def _new(self, key: Key) -> PhaseEntry:
        if len(self.entries) >= self.max_keys:
            return self.untracked
        e = self.entries[key] = PhaseEntry(key, len(self.signals))
        for fn in self.on_new_key:
            fn(e)  # type: ignore[operator]
        return e

    def _fold_other(self, e: PhaseEntry, d: int, b: int, bad: bool) -> None:
        o = self.other
        if o is None:
            return
        o.count += 1
        o.not_ok += bad
        o.total_ns += d
        o.buckets[b] += 1
        if e is not self.untracked:
            self.touched.add(e.key)

    # ---------------------------------------------------------------- status
    def top(self, k: int = 20) -> list[PhaseStatus]:
        """The k phase paths with the most total time (a path's classes merged; its latest class shown)."""
        by_path: dict[str, list[PhaseEntry]] = {}
        for e in self.entries.values():
            by_path.setdefault(e.key[0], []).append(e)
        totals = sorted(((sum(e.total_ns for e in es), p) for p, es in by_path.items()), key=lambda t: -t[0])
        return [self._merged(p, by_path[p]) for _t, p in totals[:k]]

    def _merged(self, path: str, es: list[PhaseEntry]) -> PhaseStatus:
        count = sum(e.count for e in es)
        total = sum(e.total_ns for e in es)
        mean = total / count if count else 0.0
        # Chan et al.: M2 of the union = sum of M2s + sum of n_i (mean_i - mean)^2.
        m2 = sum(e.m2 + e.count * (e.mean_ns - mean) ** 2 for e in es)
        stdev = math.sqrt(m2 / (count - 1)) if count > 1 else 0.0
        named = [e for e in es if e.key[1:2] != ("",)]
        latest = max(named, key=lambda e: e.last_ns) if named else None
        signals: dict[str, float] = {}
        for i, name in enumerate(self.signals):
            n = sum(e.sig_n[i] for e in es)
            if n:
                signals[name] = round(sum(e.sig_sum[i] for e in es) / n, 3)
        window = sum(e.busy_window_ms for e in es)
        if window > 0:
            signals["dev_busy_pct"] = round(100.0 * sum(e.busy_ms for e in es) / window, 3)
        return PhaseStatus(
            path=path,
            workload_class=latest.key[1] if latest is not None else None,
            count=count,
            abandoned=sum(e.abandoned for e in es),
            total_s=round(total / 1e9, 6),
            mean_ms=round(mean / 1e6, 3),
            stdev_ms=round(stdev / 1e6, 3),
            min_ms=round(min(e.min_ns for e in es) / 1e6, 3),
            max_ms=round(max(e.max_ns for e in es) / 1e6, 3),
            energy_j=round(sum(e.energy_uj for e in es) / 1e6, 3),
            cpu_s=round(sum(e.cpu_ns for e in es) / 1e9, 6),
            signals=signals,
        )
