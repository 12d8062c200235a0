"""Per-device energy attribution shared by the NVML and ROCm samplers.

Why a ledger instead of "delta x share" each tick: NVML's total-energy counter
(and amdgpu's hwmon energy1_input) updates only about every 100 ms, so at a
10 Hz tick most deltas are 0 and the next one carries two ticks' energy.  The
ledger therefore accumulates each process's *share x time* while the counter
stands still and splits the delta, when it comes, by those accumulated shares:
energy lands on the processes that were running while it was spent.

When a device has no energy counter, power x time (trapezoid) is integrated
instead and the result is flagged as estimated (Zeus does the same).

Shares are fractions in [0, 1] per process that sum to at most 1; what they
leave over is the device's *residual* (idle power, processes we don't watch).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

_INTERVALS_KEPT = 32


class EnergyLedger:
    """Splits one device's energy among processes; keeps residual and counter cadence."""

    __slots__ = (
        "_intervals",
        "_last_change_ns",
        "_last_counter",
        "_last_power",
        "_last_t",
        "_pending",
        "_pending_dt",
        "attributed_mj",
        "estimated",
        "residual_last_mj",
        "residual_mj",
    )

    def __init__(self) -> None:
        self._last_t: int | None = None
        self._last_counter: float | None = None
        self._last_power: float | None = None
        self._last_change_ns: int | None = None
        self._intervals: deque[int] = deque(maxlen=_INTERVALS_KEPT)
        self._pending: dict[Hashable, float] = {}
        self._pending_dt = 0.0
        self.estimated = False
        self.residual_mj = 0.0  # device energy given to no watched process, cumulative
        self.residual_last_mj = 0.0  # residual of the last split
        self.attributed_mj = 0.0  # device energy given to watched processes, cumulative

    def update(
        self,
        t_ns: int,
        counter_mj: float | None,
        power_mw: float | None,
        shares: Mapping[Hashable, float],
    ) -> dict[Hashable, float]:
        """Feed one tick; return the energy (mJ) attributed to each key by this tick.

        ``shares`` describe the interval since the previous tick.  Returns {}
        while the counter has not moved (the shares wait for the next change).
        """
        last_t, self._last_t = self._last_t, t_ns
        if last_t is None or t_ns <= last_t:
            self._baseline(counter_mj, power_mw, t_ns)
            return {}
        dt = float(t_ns - last_t)
        for key, frac in shares.items():
            self._pending[key] = self._pending.get(key, 0.0) + frac * dt
        self._pending_dt += dt

        if counter_mj is not None:
            self.estimated = False
            prev, self._last_counter = self._last_counter, counter_mj
            self._last_power = power_mw
            if prev is None or counter_mj < prev:  # first reading, or driver reload reset it
                self._clear(t_ns)
                return {}
            delta = counter_mj - prev
            if delta == 0:
                return {}  # counter not refreshed yet: keep accumulating shares
            if self._last_change_ns is not None:
                self._intervals.append(t_ns - self._last_change_ns)
            self._last_change_ns = t_ns
            return self._split(delta)

        # No counter: integrate power over the tick (trapezoid), flagged as estimated.
        self.estimated = True
        self._last_counter = None
        prev_p, self._last_power = self._last_power, power_mw
        if power_mw is None:
            self._clear(t_ns)
            return {}
        p0 = prev_p if prev_p is not None else power_mw
        return self._split((p0 + power_mw) / 2.0 * dt / 1e9)  # mW x s = mJ

    def _split(self, delta_mj: float) -> dict[Hashable, float]:
        out: dict[Hashable, float] = {}
        if self._pending_dt > 0:
            for key, weight in self._pending.items():
                share = delta_mj * min(weight / self._pending_dt, 1.0)
                if share > 0:
                    out[key] = share
        given = sum(out.values())
        if given > delta_mj:  # rounding: never attribute more than the device spent
            scale = delta_mj / given
            out = {k: v * scale for k, v in out.items()}
            given = delta_mj
        self.residual_last_mj = delta_mj - given
        self.residual_mj += self.residual_last_mj
        self.attributed_mj += given
        self._pending.clear()
        self._pending_dt = 0.0
        return out

    def _baseline(self, counter_mj: float | None, power_mw: float | None, t_ns: int) -> None:
        self._last_counter = counter_mj
        self._last_power = power_mw
        self.estimated = counter_mj is None
        self._clear(t_ns)

    def _clear(self, t_ns: int) -> None:
        self._pending.clear()
        self._pending_dt = 0.0
        self._last_change_ns = None  # a cadence is measured between two observed changes only

    def update_interval_ms(self) -> float | None:
        """Median observed time between counter changes (ms), None until two changes."""
        if not self._intervals:
            return None
        return statistics.median(self._intervals) / 1e6

    def summary(self) -> dict[str, Any]:
        return {
            "estimated": self.estimated,
            "counter_update_interval_ms": self.update_interval_ms(),
            "attributed_mj": round(self.attributed_mj, 3),
            "residual_mj": round(self.residual_mj, 3),
            "residual_last_mj": round(self.residual_last_mj, 3),
        }
