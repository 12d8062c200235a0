"""Running statistics per phase path (Welford), for live status, top and metrics.

History is in the store; these are the cheap, always-current figures that
`gpuos-hintctl status`/`top` and Prometheus show without a query.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .model import SpanRow

#: Signals whose per-phase running mean is kept (bounded, so memory stays flat).
TRACKED = ("cpu_pct", "thread_cpu_pct", "ctx_vol", "gpu_util_pct_mean", "gpu_power_mw_mean", "gpu_energy_j")
MAX_PHASES = 4096


@dataclasses.dataclass(slots=True)
class RunningStat:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    @property
    def stdev(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


@dataclasses.dataclass(slots=True)
class PhaseEntry:
    path: str
    workload_class: str | None = None
    count: int = 0
    abandoned: int = 0
    total_ns: int = 0
    duration: RunningStat = dataclasses.field(default_factory=RunningStat)
    signals: dict[str, RunningStat] = dataclasses.field(default_factory=dict)
    energy_mj: float = 0.0
    cpu_ns: int = 0


class PhaseStats:
    def __init__(self, max_phases: int = MAX_PHASES) -> None:
        self.entries: dict[str, PhaseEntry] = {}
        self.max_phases = max_phases
        self.overflow = 0

    def add(self, row: SpanRow) -> None:
        e = self.entries.get(row.path)
        if e is None:
            if len(self.entries) >= self.max_phases:
                self.overflow += 1
                return
            e = self.entries[row.path] = PhaseEntry(row.path)
        e.workload_class = row.workload_class or e.workload_class
        e.count += 1
        e.abandoned += row.status == "abandoned"
        e.total_ns += row.duration_ns
        e.duration.add(row.duration_ns)
        sig = row.signals
        e.energy_mj += (sig.get("gpu_energy_j") or 0.0) * 1000.0
        e.cpu_ns += (sig.get("cpu_user_ns") or 0) + (sig.get("cpu_sys_ns") or 0)
        for name in TRACKED:
            v = sig.get(name)
            if isinstance(v, int | float):
                e.signals.setdefault(name, RunningStat()).add(float(v))

    def top(self, k: int = 20) -> list[dict[str, Any]]:
        """The k phases with the most total time, as plain dicts."""
        ranked = sorted(self.entries.values(), key=lambda e: e.total_ns, reverse=True)[:k]
        return [
            {
                "path": e.path,
                "workload_class": e.workload_class,
                "count": e.count,
                "abandoned": e.abandoned,
                "total_s": round(e.total_ns / 1e9, 6),
                "mean_ms": round(e.duration.mean / 1e6, 3),
                "stdev_ms": round(e.duration.stdev / 1e6, 3),
                "min_ms": round(e.duration.min / 1e6, 3),
                "max_ms": round(e.duration.max / 1e6, 3),
                "energy_j": round(e.energy_mj / 1000, 3),
                "cpu_s": round(e.cpu_ns / 1e9, 6),
                "signals": {n: round(s.mean, 3) for n, s in e.signals.items()},
            }
            for e in ranked
        ]
