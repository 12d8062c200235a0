"""OS-signal time series per process, aligned with the hinted phases as ground truth.

One *run* is one client process (boot_id, pid, pid_start).  Its OS view is the
process-scope rows of the ``samples`` table (tid = 0) in time order; its truth
is its rows of the ``spans`` table.

Windows.  Consecutive samples t[i-1] < t[i] make window i = (t[i-1], t[i]].
A counter metric (the kind its sampler declares, ``Metric.kind``) becomes a
rate over the window, delta / seconds (a negative delta - a reset - is NaN); a
gauge is its value at t[i].  None (the source could not say) is NaN.

Labels.  A label timeline is built from the spans at three levels:
``top`` (the depth-1 phase open), ``leaf`` (the innermost phase open) and
``class`` (the innermost workload class given by any open span), with
``(none)`` where nothing is open.  A window takes the label that covers most of
its time (majority overlap) and records that fraction as its *purity*; a
window shorter than the phases in it is therefore labelled by the phase that
dominates it, and the short ones are visible as purity < 1.

What is left out on purpose.  Thread-scope rows (tid != 0) are sampled only for
threads that have phases open - the daemon knows those threads *from the hints*
- so their presence alone leaks the truth.  The OS-only view uses the process
rows only, which the daemon samples from connect to exit whatever the hints say.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..store import read

NONE = "(none)"
#: Gaps shorter than this between two spans of one phase are bridged (see ``timeline``).
BRIDGE_NS = 1_000_000
LEVELS = ("top", "leaf", "class")
#: Metrics never used as features: flags about how a value was obtained, not what the process did.
EXCLUDED = frozenset({"gpu_energy_estimated", "amdgpu_energy_estimated", "threads_sampled"})


def metric_kinds(conn: sqlite3.Connection | None = None) -> dict[str, str]:
    """{metric: 'counter'|'gauge'}: the store's catalogue where it has one (v2), else every sampler's.

    A v2 store records the kinds the daemon declared (store.read.metric_kinds); a v1 store
    (tests/data/eval/h100_run.db) does not, so its kinds come from the sampler classes the
    daemon knows (import failures skipped), as before.
    """
    if conn is not None:
        kinds = read.metric_kinds(conn)
        if kinds:
            return kinds
    from ..samplers import registry

    kinds = {}
    for module in registry.KNOWN:
        try:
            classes = registry.sampler_classes(module)
        except Exception:  # an optional dependency is missing: its metrics are simply unknown
            continue
        for cls in classes:
            for name, metric in cls.metrics.items():
                kinds[name] = metric.kind
    return kinds


@dataclasses.dataclass(slots=True)
class Span:
    start_ns: int
    end_ns: int
    name: str
    path: str
    depth: int
    workload_class: str | None
    tid: int
    signals: dict[str, Any]
    dev_start_ns: int | None = None
    dev_end_ns: int | None = None
    span_id: int = 0
    parent_span_id: int = 0

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0)


@dataclasses.dataclass(slots=True)
class Run:
    """One process: its samples (OS view) and its spans (truth)."""

    key: str
    workload: str
    t_ns: np.ndarray
    raw: dict[str, np.ndarray]
    spans: list[Span]
    hinted: bool = True
    #: {metric: kind} from the store's catalogue (empty for a v1 store: metric_kinds() then asks the samplers).
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)


def kinds_of(runs: Sequence[Run]) -> dict[str, str]:
    """The metric kinds of runs read from one store: its catalogue, else the samplers' (metric_kinds)."""
    for r in runs:
        if r.kinds:
            return r.kinds
    return metric_kinds()


@dataclasses.dataclass(slots=True)
class Timeline:
    """A piecewise-constant label over time: segment i is [edges[i], edges[i+1]) with labels[i]."""

    edges: np.ndarray
    labels: list[str]

    def boundaries(self) -> tuple[np.ndarray, np.ndarray]:
        """Internal edges where the label changes, and each one's scale: min(length before, after)."""
        lengths = np.diff(self.edges)
        idx = np.arange(1, len(self.labels))
        return self.edges[idx], np.minimum(lengths[idx - 1], lengths[idx]) if len(idx) else np.zeros(0)


@dataclasses.dataclass(slots=True)
class Windows:
    """The windows of one run: features, truth labels per level, purity, and attributable deltas."""

    run: Run
    t0: np.ndarray
    t1: np.ndarray
    features: np.ndarray
    feature_names: list[str]
    labels: dict[str, np.ndarray]
    purity: dict[str, np.ndarray]
    timelines: dict[str, Timeline]
    cpu_ns: np.ndarray
    energy_mj: np.ndarray

    def __len__(self) -> int:
        return len(self.t1)

    @property
    def period_ns(self) -> float:
        return float(np.median(self.t1 - self.t0)) if len(self) else 0.0


# ----------------------------------------------------------------------------- loading
def workload_of(cmdline: str | None, comm: str | None) -> str:
    """'llm' for 'python -m gpuos_workloads.llm ...', else the program name."""
    parts = (cmdline or "").split()
    for i, p in enumerate(parts):
        if p == "-m" and i + 1 < len(parts):
            return parts[i + 1].rsplit(".", 1)[-1]
    for p in parts[1:]:
        if p.endswith(".py"):
            return p.rsplit("/", 1)[-1][:-3]
    return comm or "?"


def series_from_rows(rows: Iterable[tuple[int, Mapping[str, Any]]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """[(t_ns, {metric: value})] -> sorted times and one float array per metric (NaN where None/absent)."""
    rows = sorted(rows, key=lambda r: r[0])
    t = np.array([r[0] for r in rows], dtype=np.int64)
    names = sorted({k for _, sig in rows for k, v in sig.items() if isinstance(v, (int, float)) or v is None})
    raw = {}
    for name in names:
        vals = [sig.get(name) for _, sig in rows]
        raw[name] = np.array([np.nan if v is None else float(v) for v in vals], dtype=float)
    return t, raw


def load_runs(conn: sqlite3.Connection, since_wall_ns: int | None = None) -> list[Run]:
    """Every process of the store with at least 3 process-scope samples, oldest first."""
    since = since_wall_ns or 0
    kinds = read.metric_kinds(conn)
    runs: list[Run] = []
    for p in read.processes(conn):
        boot_id, pid, pid_start, comm, cmdline = p["boot_id"], p["pid"], p["pid_start"], p["comm"], p["cmdline"]
        rows = read.process_samples(conn, boot_id, pid, pid_start, since)
        if len(rows) < 3:
            continue
        t, raw = series_from_rows(rows)
        spans = [
            Span(
                d["start_ns"],
                d["end_ns"],
                d["name"],
                d["path"],
                d["depth"],
                d["workload_class"],
                d["tid"],
                d["signals"],
                d["dev_start_ns"],
                d["dev_end_ns"],
                d["span_id"],
                d["parent_span_id"],
            )
            for d in read.process_spans(conn, boot_id, pid, pid_start, since)
        ]
        key = f"{workload_of(cmdline, comm)}:{pid}"
        runs.append(Run(key, workload_of(cmdline, comm), t, raw, spans, hinted=bool(spans), kinds=kinds))
    return runs


# ---------------------------------------------------------------------------- truth
def timeline(spans: Sequence[Span], level: str, t_lo: int, t_hi: int, bridge_ns: int = BRIDGE_NS) -> Timeline:
    """The label at every instant of [t_lo, t_hi] at one level, adjacent equal labels merged.

    A gap shorter than ``bridge_ns`` between two spans (the loop's own overhead between iterations,
    e.g. step -> (none) -> step for a few microseconds) is not a boundary of its own (``_bridge``).
    """
    cuts = {t_lo, t_hi}
    for s in spans:
        cuts.update(c for c in (s.start_ns, s.end_ns) if t_lo < c < t_hi)
    edges = np.array(sorted(cuts), dtype=np.int64)
    if len(edges) < 2:
        return Timeline(np.array([t_lo, max(t_hi, t_lo + 1)], dtype=np.int64), [NONE])
    starts = np.array([s.start_ns for s in spans], dtype=np.int64)
    ends = np.array([s.end_ns for s in spans], dtype=np.int64)
    depth = np.array([s.depth for s in spans], dtype=np.int64)
    mids = (edges[:-1] + edges[1:]) // 2
    labels: list[str] = []
    for m in mids:
        open_idx = np.nonzero((starts <= m) & (ends > m))[0]
        labels.append(_label_at(spans, open_idx, depth, level))
    out_edges = [int(edges[0])]
    out_labels: list[str] = []
    for i, lab in enumerate(labels):
        if out_labels and out_labels[-1] == lab:
            continue
        if out_labels:
            out_edges.append(int(edges[i]))
        out_labels.append(lab)
    out_edges.append(int(edges[-1]))
    return _bridge(out_edges, out_labels, bridge_ns)


def _bridge(edges: list[int], labels: list[str], bridge_ns: int) -> Timeline:
    """Absorb gaps shorter than bridge_ns into the segment before them.

    A gap is (none), or the enclosing phase showing through between two of its children
    (``step`` between ``step/data`` and ``step/forward``); a short phase of its own is kept.
    """
    e, lab = [edges[0]], []
    for i, name in enumerate(labels):
        nxt = labels[i + 1] if i + 1 < len(labels) else ""
        gap = name == NONE or nxt.startswith(name + "/") or (lab and lab[-1].startswith(name + "/"))
        if lab and edges[i + 1] - edges[i] < bridge_ns and gap:
            e[-1] = edges[i + 1]  # the gap joins the segment before it
            continue
        if lab and lab[-1] == name:
            e[-1] = edges[i + 1]  # the same label again: one segment
            continue
        lab.append(name)
        e.append(edges[i + 1])
    return Timeline(np.array(e, dtype=np.int64), lab)


def _label_at(spans: Sequence[Span], open_idx: np.ndarray, depth: np.ndarray, level: str) -> str:
    if not len(open_idx):
        return NONE
    order = sorted(open_idx, key=lambda i: (depth[i], spans[i].start_ns))
    if level == "top":
        return spans[order[0]].path
    if level == "leaf":
        return spans[order[-1]].path
    for i in reversed(order):
        if spans[i].workload_class:
            return spans[i].workload_class
    return NONE


def window_labels(tl: Timeline, t0: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority-overlap label of each window (t0, t1] and the fraction of the window it covers."""
    labels = np.empty(len(t1), dtype=object)
    purity = np.zeros(len(t1))
    names = sorted(set(tl.labels))
    code = {n: i for i, n in enumerate(names)}
    seg_code = np.array([code[lab] for lab in tl.labels])
    for w, (a, b) in enumerate(zip(t0, t1, strict=True)):
        lo = max(np.searchsorted(tl.edges, a, side="right") - 1, 0)
        hi = min(np.searchsorted(tl.edges, b, side="left"), len(tl.labels))
        acc = np.zeros(len(names))
        for s in range(lo, max(hi, lo + 1)):
            ov = min(b, tl.edges[s + 1]) - max(a, tl.edges[s])
            if ov > 0:
                acc[seg_code[s]] += ov
        best = int(np.argmax(acc))
        labels[w] = names[best]
        purity[w] = acc[best] / max(b - a, 1)
    return labels, purity


# ------------------------------------------------------------------------- features
def windows_of(run: Run, kinds: Mapping[str, str]) -> Windows:
    """Per-window features (counter rates, gauge values), truth labels and attributable deltas."""
    t = run.t_ns
    t0, t1 = t[:-1], t[1:]
    dt_s = np.maximum((t1 - t0) / 1e9, 1e-9)
    names, cols = [], []
    for name in sorted(run.raw):
        if name in EXCLUDED:
            continue
        v = run.raw[name]
        if kinds.get(name, "gauge") == "counter":
            d = np.diff(v)
            d[d < 0] = np.nan  # a reset, not negative work
            cols.append(d / dt_s)
        else:
            cols.append(v[1:])
        names.append(name)
    feats = np.column_stack(cols) if cols else np.zeros((len(t1), 0))
    cpu = _delta(run.raw, ("cpu_user_ns", "cpu_sys_ns"))
    energy = _delta(run.raw, ("gpu_energy_mj", "amdgpu_energy_mj"), first=True)
    labels, purity, tls = {}, {}, {}
    for level in LEVELS:
        tl = timeline(run.spans, level, int(t[0]), int(t[-1]))
        tls[level] = tl
        labels[level], purity[level] = window_labels(tl, t0, t1)
    return Windows(run, t0, t1, feats, names, labels, purity, tls, cpu, energy)


def _delta(raw: Mapping[str, np.ndarray], names: Sequence[str], first: bool = False) -> np.ndarray:
    """Per-window delta of the sum of the named counters (or of the first present one); NaN if none."""
    present = [raw[n] for n in names if n in raw and not np.all(np.isnan(raw[n]))]
    if not present:
        n = len(next(iter(raw.values()))) if raw else 1
        return np.full(max(n - 1, 0), np.nan)
    total = present[0] if first else np.sum(present, axis=0)
    d = np.diff(total)
    return np.where(np.isnan(d) | (d < 0), 0.0, d)


def align_features(windows: Sequence[Windows]) -> list[str]:
    """One common, informative column set for all runs: the union, minus all-NaN or constant columns."""
    names = sorted({n for w in windows for n in w.feature_names})
    keep = []
    for n in names:
        vals = np.concatenate([w.features[:, w.feature_names.index(n)] for w in windows if n in w.feature_names])
        vals = vals[~np.isnan(vals)]
        if len(vals) and np.ptp(vals) > 0:
            keep.append(n)
    for w in windows:
        cols = [
            w.features[:, w.feature_names.index(n)] if n in w.feature_names else np.full(len(w), np.nan) for n in keep
        ]
        w.features = np.column_stack(cols) if cols else np.zeros((len(w), 0))
        w.feature_names = list(keep)
    return keep


def transform(x: np.ndarray) -> np.ndarray:
    """Signed log1p (rates and sizes span orders of magnitude), NaN -> 0."""
    return np.nan_to_num(np.sign(x) * np.log1p(np.abs(x)), nan=0.0)
