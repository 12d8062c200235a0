"""The bounded-label view of the per-phase aggregator, and Prometheus's histogram buckets.

Prometheus must not get one series per phase name a program invents, so the exporters (the
daemon's /metrics in metrics.py, the fleet identity metrics in export/prom.py) show the top
keys of one PhaseStats by span count and fold the rest into ``__other__``.  This module holds
that view and the bucket conversion both exporters share; it imports no prometheus_client, so
both stand on it without standing on each other.
"""

from __future__ import annotations

import heapq
from typing import Any

from .phase_stats import DURATION_BUCKETS, MAX_KEYS, Figures, PhaseEntry, PhaseStats

OTHER = "__other__"
#: Distinct (phase, class) keys whose span counts are tracked for ranking; beyond
#: this, new keys go straight to __other__ and are counted in untracked_spans.
MAX_TRACKED = MAX_KEYS


# ------------------------------------------------------------ bounded labels
Key = tuple[str, ...]  # (phase path, workload class or "") - or export/prom.py's identity triple


def _minus(a: Figures, b: Figures) -> Figures:
    buckets = tuple(x - y for x, y in zip(a[3], b[3], strict=True))
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], buckets, a[4] - b[4], a[5] - b[5])


def frozen(f: Figures) -> tuple[int, int, float, tuple[int, ...], float, float]:
    """Figures in Prometheus units: (spans, not_ok, duration s, buckets, cpu s, energy J)."""
    return (f[0], f[1], f[2] / 1e9, f[3], f[4] / 1e9, f[5] / 1e6)


class LabelView:
    """The bounded-label view of one PhaseStats (see the module docstring).  Daemon thread only.

    It keeps no per-span state of its own: a labelled key's series is its
    aggregate minus its figures at promotion (``base``), and ``__other__`` is
    the aggregator's ``other`` accumulator (spans of unlabelled keys, folded in
    by PhaseStats.add) plus what demoted keys carried when they left.
    """

    def __init__(self, stats: PhaseStats, top_k: int) -> None:
        if top_k < 0:
            raise ValueError("top_k must be >= 0")
        if stats.other is not None:
            raise ValueError("this PhaseStats already has a view")
        self.stats = stats
        self.top_k = top_k
        self.base: dict[Key, Figures] = {}  # labelled keys -> their figures at promotion
        self.other = stats.other = PhaseEntry(("__other__",), 0)
        self.promotions = 0
        self.dirty = True
        self._seen: tuple[int, int, int] = (-1, -1, -1)
        for e in stats.entries.values():  # keys from before the view: first come, first labelled
            self._on_new(e)
            if not e.folded:
                self.base[e.key] = e.figures()
        stats.on_new_key.append(self._on_new)

    @property
    def labelled(self) -> list[Key]:
        return sorted(self.base)

    @property
    def untracked_spans(self) -> int:
        return self.stats.untracked.count

    def _on_new(self, e: PhaseEntry) -> None:
        if len(self.base) < self.top_k:
            self.base[e.key] = (0, 0, 0, (0,) * len(e.buckets), 0, 0)
        else:
            e.folded = True

    def rerank(self) -> None:
        """Promote unlabelled keys that now rank in the top_k (see the module docstring)."""
        stats = self.stats
        if not stats.touched:
            return
        entries, touched = stats.entries, stats.touched
        stats.touched = set()
        self.dirty = True
        # Only a key that got spans can have overtaken a labelled one (counts only grow),
        # so the full ranking runs only when one of those now beats the weakest labelled key.
        weakest = max((-entries[k].count, k) for k in self.base) if self.base else None
        if weakest is not None and not any((-entries[k].count, k) < weakest for k in touched):
            return
        ranked = heapq.nsmallest(self.top_k, entries, key=lambda k: (-entries[k].count, k))
        want = set(ranked)
        for key in [k for k in self.base if k not in want]:
            e = entries[key]
            gone = _minus(e.figures(), self.base.pop(key))
            o = self.other
            o.count, o.not_ok, o.total_ns = o.count + gone[0], o.not_ok + gone[1], o.total_ns + gone[2]
            o.buckets = [x + y for x, y in zip(o.buckets, gone[3], strict=True)]
            o.cpu_ns, o.energy_uj = o.cpu_ns + gone[4], o.energy_uj + gone[5]
            e.folded = True
        for key in ranked:
            if key not in self.base:
                e = entries[key]
                self.base[key] = e.figures()
                e.folded = False
                self.promotions += 1

    def series(self) -> list[tuple[Key, tuple[int, int, float, tuple[int, ...], float, float]]]:
        """Every labelled key's series (sorted), then __other__'s: what a scrape shows."""
        entries = self.stats.entries
        out = [(k, frozen(_minus(entries[k].figures(), self.base[k]))) for k in sorted(self.base)]
        out.append(((OTHER,), frozen(self.other.figures())))
        return out

    def changed(self) -> bool:
        """Whether a span reached any series since the last call (O(top_k))."""
        entries = self.stats.entries
        sig = (self.other.count, sum(entries[k].count for k in self.base), len(self.base))
        if sig != self._seen or self.dirty:
            self._seen, self.dirty = sig, False
            return True
        return False


def _le(v: float) -> str:
    return "+Inf" if v == float("inf") else repr(float(v))


def cumulative_buckets(buckets: Any) -> list[tuple[str, int]]:
    """Per-bucket span counts (DURATION_BUCKETS, then +Inf) as Prometheus's cumulative (le, count)."""
    cum, acc = [], 0
    for le, k in zip((*DURATION_BUCKETS, float("inf")), buckets, strict=True):
        acc += k
        cum.append((_le(le), acc))
    return cum
