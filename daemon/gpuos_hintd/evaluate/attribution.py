"""With hints vs without: per-phase CPU time and GPU energy, three ways.

* ``hinted`` - what the daemon reports: the sum over the hinted spans of each
  phase of their correlated signals (``cpu_user_ns + cpu_sys_ns`` and
  ``gpu_energy_mj`` of each span, interpolated by the correlator at the exact
  span edges).  ``(none)`` is the rest of the process total.  At level ``top``
  the spans are the depth-1 ones, at ``leaf`` those with no child span: in both
  cases disjoint in time on a thread, so the sums do not double count.
* ``window_oracle`` - each window's counter deltas given to its *true* majority
  label: the best any window-resolution method can do; its gap to ``hinted`` is
  the cost of the sampling period alone.
* ``os_only`` - each window's deltas given to the label the OS-only pipeline
  inferred (segmentation + classifier, out of sample).

Errors are relative to ``hinted`` per phase, and overall as the misattributed
share: half the L1 distance between the two share vectors (0 = same split,
1 = completely different).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .dataset import NONE, Span


def phase_spans(spans: Sequence[Span], level: str) -> list[Span]:
    """The spans whose sums are that level's per-phase figures (depth 1, or leaves)."""
    if level == "top":
        return [s for s in spans if s.depth == min((x.depth for x in spans), default=1)]
    parents = {s.parent_span_id for s in spans}  # span ids are unique within a process
    return [s for s in spans if s.span_id not in parents]


def span_cpu_ns(s: Span) -> float:
    return float(s.signals.get("cpu_user_ns") or 0.0) + float(s.signals.get("cpu_sys_ns") or 0.0)


def span_energy_mj(s: Span) -> float | None:
    v = s.signals.get("gpu_energy_mj", s.signals.get("amdgpu_energy_mj"))
    return None if v is None else float(v)


def hinted(spans: Sequence[Span], level: str, total_cpu_ns: float, total_energy_mj: float | None) -> dict[str, Any]:
    cpu: dict[str, float] = defaultdict(float)
    energy: dict[str, float] = defaultdict(float)
    has_energy = False
    for s in phase_spans(spans, level):
        cpu[s.path] += span_cpu_ns(s)
        e = span_energy_mj(s)
        if e is not None:
            energy[s.path] += e
            has_energy = True
    cpu[NONE] = max(total_cpu_ns - sum(cpu.values()), 0.0)
    out: dict[str, Any] = {"cpu_ns": dict(cpu)}
    if has_energy and total_energy_mj is not None:
        energy[NONE] = max(total_energy_mj - sum(energy.values()), 0.0)
        out["energy_mj"] = dict(energy)
    return out


def by_label(labels: Iterable[Any], deltas: np.ndarray) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for lab, d in zip(labels, deltas, strict=True):
        if not np.isnan(d):
            acc[str(lab)] += float(d)
    return dict(acc)


def share_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float | None:
    """Half the L1 distance between the normalised vectors a and b (labels missing = 0)."""
    ta, tb = sum(a.values()), sum(b.values())
    if ta <= 0 or tb <= 0:
        return None
    labs = set(a) | set(b)
    return round(0.5 * sum(abs(a.get(k, 0.0) / ta - b.get(k, 0.0) / tb) for k in labs), 4)


def compare(hint: Mapping[str, float], oracle: Mapping[str, float], os_only: Mapping[str, float]) -> dict[str, Any]:
    """Per-phase figures and errors, plus the misattributed shares of the oracle and OS-only splits."""
    rows = []
    for lab in sorted(set(hint) | set(oracle) | set(os_only)):
        h = hint.get(lab, 0.0)
        o = os_only.get(lab, 0.0)
        rows.append(
            {
                "phase": lab,
                "hinted": h,
                "window_oracle": oracle.get(lab, 0.0),
                "os_only": o,
                "os_only_rel_err": round((o - h) / h, 4) if h > 0 else None,
            }
        )
    return {
        "phases": rows,
        "misattributed_share_window_oracle": share_distance(hint, oracle),
        "misattributed_share_os_only": share_distance(hint, os_only),
    }
