"""Timestamped power samples of one GPU: integration over any interval, and calibration.

Why: the energy counter (NVML total energy, amdgpu energy1_input) moves only
every ~100 ms on an H200, so a 15 ms prefill cannot be told from the decode
steps around it by counter deltas.  The driver keeps its own power samples,
~20 ms apart on an H200, each with a timestamp (``nvmlDeviceGetSamples(...,
NVML_TOTAL_POWER_SAMPLES, last_ts)``); integrating them over a span's own
interval gives the span its energy at 20 ms resolution, whatever the daemon's
tick rate, so it cannot alias with the counter's update period.

Each sample is read as the mean power over the period that ends at its
timestamp (a step curve, value ``w_i`` on ``(t_{i-1}, t_i]``): the driver's
samples are averages over its sampling period, not instants.  (If they were
instants, this shifts energy by up to half a period; the H200 script checks
span energy against isolated-phase truth either way.)  Their integral is
calibrated against the energy counter over long windows (>= ``CAL_MIN_NS``
between two observed counter changes): ``scale = d(counter) / integral``, kept
and reported, so that span energies add up to what the counter says.

Every integral comes with a resolution estimate: at each edge of the interval
the power is only known at the samples around it, so the edge's distance to
the nearest sample times the spread of the four samples around it is counted
as uncertain
(this assumes power does not swing within one sample period: below the sample
period, the per-phase estimator across repetitions is the answer); beyond the last sample the
curve is held (and that time is counted as extrapolated).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses

MAX_POINTS = 8192  # ~160 s at 50 Hz: room for late device intervals
CAL_MIN_NS = 2_000_000_000  # calibration windows of at least 2 s ...
CAL_MAX_NS = 120_000_000_000  # ... over at most the last 2 minutes
SCALE_BOUNDS = (0.5, 2.0)  # a scale outside this is a broken reading, not a calibration


@dataclasses.dataclass(slots=True)
class Integral:
    """Energy over an interval from power samples, with what limits its precision."""

    mj: float
    err_mj: float  # resolution estimate (edges + extrapolation)
    samples: int  # power samples strictly inside the interval
    extrapolated_ns: int  # interval time past the last (or before the first) sample


class PowerSeries:
    """Bounded power samples of one device, their running integral, and the counter calibration."""

    __slots__ = ("_cal", "_cum", "_t", "_w", "period_ns", "scale", "scale_window_ns")

    def __init__(self, maxlen: int = MAX_POINTS) -> None:
        self._t: collections.deque[int] = collections.deque(maxlen=maxlen)
        self._w: collections.deque[float] = collections.deque(maxlen=maxlen)  # mW
        self._cum: collections.deque[float] = collections.deque(maxlen=maxlen)  # mJ from an arbitrary origin
        self._cal: collections.deque[tuple[int, float, float]] = collections.deque(maxlen=4096)
        self.scale: float | None = None  # counter / samples over the calibration window
        self.scale_window_ns = 0
        self.period_ns: int | None = None  # median sample spacing seen

    def __len__(self) -> int:
        return len(self._t)

    @property
    def last_t(self) -> int | None:
        return self._t[-1] if self._t else None

    def add(self, points: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Append samples (t_ns, mW); returns the ones that were new (older or equal are dropped)."""
        new = []
        for t, w in sorted(points):
            if self._t and t <= self._t[-1]:
                continue
            if self._t:
                self._cum.append(self._cum[-1] + w * (t - self._t[-1]) / 1e9)
            else:
                self._cum.append(0.0)
            self._t.append(t)
            self._w.append(w)
            new.append((t, w))
        if new and len(self._t) >= 3:
            gaps = sorted(self._t[i + 1] - self._t[i] for i in range(max(len(self._t) - 33, 0), len(self._t) - 1))
            self.period_ns = gaps[len(gaps) // 2]
        return new

    def _cum_at(self, t: int) -> float:
        """Running integral (mJ) at t, holding the curve flat outside the samples."""
        ts = self._t
        i = bisect.bisect_right(ts, t)
        if i == 0:
            return self._cum[0] - self._w[0] * (ts[0] - t) / 1e9  # before the first: held
        if i == len(ts):
            return self._cum[-1] + self._w[-1] * (t - ts[-1]) / 1e9
        return self._cum[i - 1] + self._w[i] * (t - ts[i - 1]) / 1e9

    def _edge_err(self, t: int) -> float:
        ts = self._t
        i = bisect.bisect_right(ts, t)
        if i == 0 or i == len(ts):
            return 0.0  # extrapolated: accounted for separately
        near = min(t - ts[i - 1], ts[i] - t)  # how far the edge is from a sample
        ws = [self._w[j] for j in range(max(i - 2, 0), min(i + 2, len(ts)))]
        return (max(ws) - min(ws)) * near / 1e9

    def integrate(self, a: int, b: int, scale: float | None = None) -> Integral | None:
        """Energy (mJ) between a and b; None without samples.  ``scale`` defaults to the calibration."""
        if not self._t or b < a:
            return None
        s = scale if scale is not None else (self.scale or 1.0)
        raw = self._cum_at(b) - self._cum_at(a)
        ts = self._t
        ext = max(0, min(b, ts[0]) - a) + max(0, b - max(a, ts[-1]))
        inside = bisect.bisect_left(ts, b) - bisect.bisect_right(ts, a)
        err = self._edge_err(a) + self._edge_err(b)
        if ext:  # held power: the power may have gone anywhere between idle and the peak seen
            err += max(self._w) * ext / 2.0 / 1e9
        return Integral(raw * s, err * s, inside, ext)

    def windows(self, after: int, upto: int) -> list[tuple[int, int, float]]:
        """(t0, t1, mJ) of each interval between consecutive samples with after < t1 <= upto."""
        ts, ws = self._t, self._w
        i = max(bisect.bisect_right(ts, after), 1)
        out = []
        while i < len(ts) and ts[i] <= upto:
            t0, t1 = ts[i - 1], ts[i]
            out.append((t0, t1, ws[i] * (t1 - t0) / 1e9))
            i += 1
        return out

    def covered(self, t: int) -> bool:
        return bool(self._t) and self._t[-1] >= t

    def forget_before(self, t: int) -> None:
        """Drop samples older than t (keeping one before it for interpolation)."""
        while len(self._t) > 2 and self._t[1] < t:
            self._t.popleft()
            self._w.popleft()
            self._cum.popleft()

    # -- calibration ----------------------------------------------------------
    def note_counter(self, t_ns: int, counter_mj: float) -> None:
        """An observed *change* of the device's energy counter, at tick time t_ns.

        The counter's own update time lies somewhere in the tick before t_ns;
        over a window of >= 2 s that is < 5 % per edge, and the ticks are
        jittered so it averages out rather than aliasing.
        """
        if not self._t or t_ns > self._t[-1] + 1_000_000_000:
            return  # no power samples around it (the series stopped): not comparable
        cal = self._cal
        if cal and counter_mj < cal[-1][1]:
            cal.clear()  # counter reset (driver reload)
        cal.append((t_ns, counter_mj, self._cum_at(t_ns)))
        while len(cal) > 2 and t_ns - cal[1][0] >= CAL_MAX_NS:
            cal.popleft()
        t0, c0, i0 = cal[0]
        if t_ns - t0 >= CAL_MIN_NS:
            di = self._cum_at(t_ns) - i0 if t0 >= self._t[0] else 0.0
            if di > 0:
                s = (counter_mj - c0) / di
                if SCALE_BOUNDS[0] <= s <= SCALE_BOUNDS[1]:
                    self.scale, self.scale_window_ns = s, t_ns - t0
