"""What stretch of time a driver power sample describes: the fit, and the delays measured.

Why: span energy is the integral of the driver's power samples over the span's device interval
(power_series.py), which needs to know which stretch of time each sample averages.  Assuming
the wrong one does not change the total (the sum over all spans still matches the energy
counter) but moves energy between neighbouring phases, by up to the error in time: on an H200
that is a 20 ms sample period against 15-25 ms phases.

``fit_sample_model`` measures it from a square wave whose edges are known
(benchmarks/gpu/power_lag.py): for every candidate model - sample ``i`` is the mean true power
over ``(t_i - d - w, t_i - d]``, with ``w`` the sample spacing (``"step"``) or a fixed window - it
computes each sample's busy fraction from the edges, fits ``idle + (busy - idle) x fraction`` by
least squares and keeps the residual.  ``SAMPLE_DELAY_NS`` is the table of delays measured that
way, by device name; a device not in it gets 0 (the samples taken at face value), and
``gpuos-hintctl status`` says which applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuos_client.busy import BusyIntervals

#: Measured sample delay by device name (the fit's best ``d`` for the ``step`` window), with the
#: recorded result it comes from.  Filled only from recordings under benchmarks/results/.
SAMPLE_DELAY_NS: dict[str, tuple[int, str]] = {
    # Square waves of 10-200 ms on an H200 (driver 580.159.04), 697 samples: best model a 20 ms
    # mean ending 3 ms before the stamp (rms 68 W; 87 W for the samples at face value).
    "NVIDIA H200": (3_000_000, "benchmarks/results/h200/round4/power_lag.json"),
}

DELAYS_MS = tuple(range(-30, 101))
WINDOWS_MS: tuple[float | str, ...] = ("step", 0.0, 10.0, 20.0, 40.0, 60.0, 100.0)


def sample_delay_ns(device_name: str | None) -> tuple[int, str | None]:
    """(delay, source) for a device whose name is in the table exactly; else (0, None).

    Exact, not a prefix: an "NVIDIA H200 NVL" is another board (another power limit, its own
    sensor path) and is taken at face value until it is measured.
    """
    entry = SAMPLE_DELAY_NS.get(device_name) if device_name else None
    return entry if entry is not None else (0, None)


def _union(busy: Sequence[tuple[int, int]]) -> BusyIntervals:
    """The known busy stretches as a merged union (the client's CUPTI busy arithmetic), unbounded."""
    iv = BusyIntervals(horizon_ns=1 << 62, max_intervals=len(busy) + 1, floor_ns=-(1 << 62))
    iv.add(busy)
    return iv


def _fraction(iv: BusyIntervals, lo: float, hi: float) -> float:
    """The busy share of (lo, hi]; for an instant (hi <= lo), 1 if busy then, else 0."""
    if hi <= lo:
        return float(iv.busy_ns(lo, lo + 1) or 0)
    return (iv.busy_ns(lo, hi) or 0) / (hi - lo)


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(intercept, slope, rms residual) of ys on xs; slope 0 when xs do not vary."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    icpt = my - slope * mx
    rms = math.sqrt(sum((y - icpt - slope * x) ** 2 for x, y in zip(xs, ys, strict=True)) / n)
    return icpt, slope, rms


def fit_sample_model(
    samples: Sequence[tuple[int, float]],
    busy: Sequence[tuple[int, int]],
    delays_ms: Sequence[int] = DELAYS_MS,
    windows_ms: Sequence[float | str] = WINDOWS_MS,
) -> dict[str, object]:
    """The (delay, window) under which the samples best follow the known busy edges.

    ``samples``: (t_ns, mW) on the edges' clock, sorted; ``busy``: (start_ns, end_ns) of the
    known busy stretches.  Returns the best model, the daemon's current one (``step``, d = 0) for
    comparison, and per window the best delay and its residual.
    """
    pts = sorted(samples)
    if len(pts) < 10 or not busy:
        raise ValueError("need >= 10 samples and some busy intervals")
    B = _union(busy)
    kept = B.intervals()
    lo_t, hi_t = kept[0][0], kept[-1][1]
    ys = [w / 1000.0 for _, w in pts[1:]]  # W
    grid: dict[str, list[tuple[int, float]]] = {}
    best: tuple[float, int, float | str, float, float] | None = None
    for win in windows_ms:
        row = []
        for d_ms in delays_ms:
            d = d_ms * 1_000_000
            xs, yk = [], []
            for i in range(1, len(pts)):
                t = pts[i][0] - d
                w = (pts[i][0] - pts[i - 1][0]) if win == "step" else float(win) * 1e6
                if t - w < lo_t - 1e9 or t > hi_t + 1e9:
                    continue
                xs.append(_fraction(B, t - w, t))
                yk.append(ys[i - 1])
            if len(xs) < 10:
                continue
            icpt, slope, rms = _fit_line(xs, yk)
            row.append((d_ms, round(rms, 3)))
            if best is None or rms < best[0]:
                best = (rms, d_ms, win, icpt, icpt + slope)
        grid[str(win)] = row
    assert best is not None
    per_window = {w: min(r, key=lambda x: x[1]) for w, r in grid.items() if r}
    current = dict(grid.get("step", [])).get(0)
    return {
        "best": dict(
            delay_ms=best[1],
            window_ms=best[2],
            rms_w=round(best[0], 3),
            idle_w=round(best[3], 1),
            busy_w=round(best[4], 1),
        ),
        "step_best_delay_ms": per_window.get("step", (None, None))[0],
        "step_best_rms_w": per_window.get("step", (None, None))[1],
        "current_model_rms_w": current,
        "per_window_best": {w: {"delay_ms": d, "rms_w": r} for w, (d, r) in per_window.items()},
        "grid": grid,
        "samples": len(pts),
        "busy_intervals": len(B),
    }
