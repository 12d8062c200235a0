"""Where OS-only inference breaks down, measured on the data.

* short phases: spans (and boundaries) bucketed by duration in sample periods,
  with the share of spans and of hinted time in each bucket, and the boundary
  recall of the OS-only segmentation per bucket;
* host vs device: for spans with device-side intervals (``--device-timing``),
  how far the GPU's interval is from the host's - a sync-free phase ends on the
  host long before (or after) its work ends on the device, and every OS signal
  sampled on the host side is shifted by that much;
* several processes on one GPU: whether any two runs used a GPU at overlapping
  times (the per-process energy split is then an estimate); reported as absent
  when the data has no such overlap, never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .dataset import Run, Span

BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("< 0.5 period", 0.0, 0.5),
    ("0.5-1 period", 0.5, 1.0),
    ("1-2 periods", 1.0, 2.0),
    ("2-5 periods", 2.0, 5.0),
    ("5-20 periods", 5.0, 20.0),
    (">= 20 periods", 20.0, float("inf")),
)


def bucket_of(periods: float) -> str:
    for name, lo, hi in BUCKETS:
        if lo <= periods < hi:
            return name
    return BUCKETS[-1][0]


def span_durations(spans: Sequence[Span], period_ns: float) -> list[dict[str, Any]]:
    """Per bucket: spans, their share of all spans, and their share of summed span time (all depths)."""
    n = len(spans)
    total = sum(s.duration_ns for s in spans) or 1
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in spans:
        b = acc[bucket_of(s.duration_ns / period_ns)]
        b[0] += 1
        b[1] += s.duration_ns
    return [
        {
            "bucket": name,
            "spans": acc[name][0],
            "span_share": round(acc[name][0] / n, 4) if n else 0.0,
            "time_share": round(acc[name][1] / total, 4),
        }
        for name, _, _ in BUCKETS
        if name in acc
    ]


def recall_by_scale(scales_ns: np.ndarray, matched: np.ndarray, period_ns: float) -> list[dict[str, Any]]:
    """Boundary recall per bucket of boundary scale (the shorter of the two phases it separates)."""
    out = []
    names = np.array([bucket_of(s / period_ns) for s in scales_ns], dtype=object)
    for name, _, _ in BUCKETS:
        sel = names == name
        if sel.any():
            out.append(
                {
                    "bucket": name,
                    "boundaries": int(sel.sum()),
                    "found": int(matched[sel].sum()),
                    "recall": round(float(matched[sel].mean()), 4),
                }
            )
    return out


def host_vs_device(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Per phase path with device intervals: median host and device ms, median end lag (device - host)."""
    acc: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for s in spans:
        if s.dev_start_ns is not None and s.dev_end_ns is not None:
            acc[s.path].append((s.duration_ns, s.dev_end_ns - s.dev_start_ns, s.dev_end_ns - s.end_ns))
    rows = []
    for path, vals in sorted(acc.items()):
        host, dev, lag = (np.array(v, dtype=float) for v in zip(*vals, strict=True))
        rows.append(
            {
                "phase": path,
                "spans": len(vals),
                "host_ms_median": round(float(np.median(host)) / 1e6, 3),
                "device_ms_median": round(float(np.median(dev)) / 1e6, 3),
                "device_end_lag_ms_median": round(float(np.median(lag)) / 1e6, 3),
                "device_end_lag_ms_max": round(float(np.max(lag)) / 1e6, 3),
            }
        )
    return rows


def shared_gpu(runs: Sequence[Run]) -> dict[str, Any]:
    """Pairs of runs whose GPU use (gpu_devices > 0 at a sample) overlaps in time."""
    spans = []
    for r in runs:
        dev = r.raw.get("gpu_devices")
        if dev is None:
            continue
        on = r.t_ns[np.nan_to_num(dev) > 0]
        if len(on):
            spans.append((r.key, int(on.min()), int(on.max())))
    pairs = []
    for i in range(len(spans)):
        for j in range(i + 1, len(spans)):
            a, b = spans[i], spans[j]
            ov = min(a[2], b[2]) - max(a[1], b[1])
            if ov > 0:
                pairs.append({"runs": [a[0], b[0]], "overlap_s": round(ov / 1e9, 3)})
    return {"gpu_runs": len(spans), "overlapping_pairs": pairs}
