"""torch.profiler's device events, read from its chrome trace: the truth side of the GPU checks.

accuracy_gpu.py and cupti_check.py score the client's CUPTI busy time against the profiler's
kernels; both read them here, with arithmetic of their own (not gpuos_client.busy, which is the
code under test).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

#: Chrome-trace categories of device work (kernels, copies, memsets): what busy time covers.
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def chrome_trace(prof: Any) -> dict[str, Any]:
    """A finished ``torch.profiler.profile``'s chrome trace, as parsed JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        return json.loads(Path(f.name).read_text())


def device_events(trace: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(start us, duration us, name) of every device event in a trace, in start order."""
    return sorted(
        (float(e["ts"]), float(e.get("dur", 0.0)), str(e.get("name", "")))
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES
    )


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals, in their unit: overlaps counted once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
