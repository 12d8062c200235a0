"""The per-phase power estimator across repetitions (NNLS on hinted occupancy, block bootstrap).

Synthetic power curve with known per-phase power (said so): a 15 ms "prefill" at 600 W, then
ten 4 ms "decode/step" spans at 250 W inside a "decode" parent, then idle at 100 W, jittered;
the driver's 20 ms averaged samples cannot resolve a single prefill, the fit across
repetitions must.
"""

from __future__ import annotations

import random

import pytest
from gpuos_hintd.phase_energy import UNHINTED, PhaseEnergy, SpanIv, fit_marks
from gpuos_hintd.samplers._power import PowerSeries

MS = 1_000_000
WATTS = {"prefill": 600.0, "decode/step": 250.0, "decode": 180.0, UNHINTED: 100.0}


def build(seconds: float = 30.0, seed: int = 0):
    rng = random.Random(seed)
    spans, t, sid = [], 50 * MS, 0
    while t < seconds * 1e9:
        sid += 1
        spans.append(SpanIv(sid, 0, "prefill", t, t + 15 * MS))
        t += 15 * MS
        sid += 1
        parent = sid
        d0 = t
        t += 1 * MS  # the parent's own time between steps counts as "decode"
        for _ in range(10):
            sid += 1
            spans.append(SpanIv(sid, parent, "decode/step", t, t + 4 * MS))
            t += 4 * MS + MS
        spans.append(SpanIv(parent, 0, "decode", d0, t))
        t += rng.randint(5, 60) * MS  # idle gap
    # Exclusive power curve on a 0.1 ms grid, then 20 ms driver averages.
    grid = 100_000
    n = int(seconds * 1e9) // grid + 1
    p = [WATTS[UNHINTED] * 1000] * n
    for s in sorted(spans, key=lambda s: s.path.count("/")):  # children paint over parents
        for i in range(s.a // grid, min(s.b // grid, n)):
            p[i] = WATTS[s.path] * 1000
    ser = PowerSeries(100_000)
    per = 20 * MS // grid
    pts = [(k * 20 * MS, sum(p[(k - 1) * per : k * per]) / per) for k in range(1, n // per)]
    ser.add([(t, w + rng.gauss(0, 5000)) for t, w in pts])  # +-5 W of sensor noise
    return spans, ser


def test_fit_recovers_sub_period_phase_power_with_an_interval():
    spans, ser = build()
    pe = PhaseEnergy()
    marks = []
    end = ser.last_t
    for s in spans:
        pe.on_span("k", s.span_id, s.parent_id, s.path, s.a, s.b)
    for now in range(200 * MS, end + 2_000 * MS, 100 * MS):
        m = pe.advance("k", now, {"gpu_power_mw@0": ser}, [])
        if m:
            marks.append(m)
    last = pe.forget("k")
    if last:
        marks.append(last)
    fit = fit_marks(marks, resamples=60)
    assert fit["prefill"]["windows"] > 1000
    for name, watts in WATTS.items():
        got = fit[name]
        lo, hi = got["ci_w"]
        assert got["power_w"] == pytest.approx(watts, rel=0.05), (name, got)
        assert lo <= got["power_w"] <= hi and hi - lo < 0.2 * watts, (name, got)


def test_marks_are_bounded_and_forget_drops_state():
    spans, ser = build(seconds=3.0)
    pe = PhaseEnergy()
    for s in spans:
        pe.on_span("k", s.span_id, s.parent_id, s.path, s.a, s.b)
    pe.advance("k", ser.last_t + 2_000 * MS, {"gpu_power_mw@0": ser}, [])
    assert len(pe.procs["k"].ring) < len(spans)  # spans behind every window taken are dropped
    assert pe.forget("k")["cols"][0] == UNHINTED
    assert "k" not in pe.procs and pe.forget("k") is None
