"""`gpuos-hintctl evaluate`: how well the OS infers phases from its own signals, and what hints add.

DESIGN section 8.  Modules, one job each:
``dataset`` (samples + spans -> windows with features and truth labels),
``segment`` (OS-only change points, boundary precision/recall/F1),
``classify`` (OS-only window labels, accuracy/F1/confusion, majority baseline),
``attribution`` (per-phase CPU time and GPU energy: hinted vs OS-only),
``breakdown`` (short phases, host vs device, shared GPUs),
``pipeline`` (all of it, out of sample) and ``report`` (Markdown + JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import read
from .dataset import load_runs
from .pipeline import evaluate


def evaluate_store(
    path: Path | str, since_wall_ns: int | None = None, tolerance_ms: float | None = None
) -> dict[str, Any]:
    """Evaluate a store file, opened read-only."""
    conn = read.connect(Path(path))
    try:
        runs = load_runs(conn, since_wall_ns)
    finally:
        conn.close()
    result = evaluate(runs, tolerance_ms)
    result["store"] = str(path)
    return result


__all__ = ["evaluate", "evaluate_store", "load_runs"]
