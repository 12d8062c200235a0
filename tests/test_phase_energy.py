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
from gpuos_hintd.power_series import PowerSeries

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


def test_hintctl_shows_figures_with_their_uncertainty_and_the_fit(tmp_path):
    """Spans and __phase_energy__ marks in a real store; `spans` and `phases` print them with ±."""
    import json
    import os
    import subprocess
    import sys

    from gpuos_hintd.model import MarkRow, SpanRow
    from gpuos_hintd.store import Store

    spans, ser = build(seconds=12.0)
    pe = PhaseEnergy()
    for s in spans:
        pe.on_span("k", s.span_id, s.parent_id, s.path, s.a, s.b)
    marks = [
        m
        for now in range(1_000 * MS, ser.last_t + 12_000 * MS, 1_000 * MS)
        if (m := pe.advance("k", now, {"gpu_power_mw@0": ser}, []))
    ]
    marks.append(pe.forget("k"))
    store = Store(tmp_path / "state")
    rows = []
    for s in spans[:200]:
        r = SpanRow("boot", 42, 7, s.span_id, s.parent_id, 42, s.path.rsplit("/", 1)[-1], s.path, 1 + s.path.count("/"),
                    None, None, s.a, s.b, 1_700_000_000_000_000_000 + s.a, "ok")  # fmt: skip
        r.signals = {"thread_cpu_ns": 1_000_000, "thread_cpu_ns_err": 50_000, "cpu_exact": False,
                     "proc_cpu_ns": 1_000_000, "gpu_energy_j": 2.5, "gpu_energy_err_j": 0.4}  # fmt: skip
        rows.append(r)
    store.submit("spans", rows)
    store.submit("marks", [MarkRow("boot", 42, 7, 0, i, 1_700_000_000_000_000_000 + i, "__phase_energy__", m)
                           for i, m in enumerate(marks) if m])  # fmt: skip
    store.close()
    env = dict(os.environ, GPUOS_HINT_STATE_DIR=str(tmp_path / "state"))
    out = subprocess.run(
        [sys.executable, "-m", "gpuos_hintd.cli.main", "phases"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("prefill"))
    assert "2.5" in line and "±" in line  # energy with its uncertainty
    assert "FIT W" in out.stdout
    js = json.loads(
        subprocess.run(
            [sys.executable, "-m", "gpuos_hintd.cli.main", "phases", "--json"], env=env, capture_output=True, text=True
        ).stdout
    )
    fit = {r["name"]: r.get("energy_fit") for r in js}
    assert fit["prefill"]["power_w"] == pytest.approx(600, rel=0.08)
    lo, hi = fit["prefill"]["ci_w"]
    assert lo <= fit["prefill"]["power_w"] <= hi
    sp = subprocess.run([sys.executable, "-m", "gpuos_hintd.cli.main", "spans", "--limit", "5"], env=env,
                        capture_output=True, text=True)  # fmt: skip
    assert sp.returncode == 0, sp.stderr
    assert "1.000±0.050" in sp.stdout and "2.500±0.400" in sp.stdout
