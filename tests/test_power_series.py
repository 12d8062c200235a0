"""Per-span GPU energy from timestamped power samples: integration, calibration, the correlator.

The power curve is synthetic (a 25 ms busy/idle square wave, as measured on an H200: 125-730 W),
sampled every 20 ms the way the driver does; the truth is the square wave's exact integral.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from gpuos_hintd.correlate import Correlator
from gpuos_hintd.model import Metric, ProcKey, ProcSample, SpanRow
from gpuos_hintd.power_series import PowerSeries

MS = 1_000_000
KEY = ProcKey(100, 5)
BUSY_W, IDLE_W = 730.0, 125.0


def square(t_ns: int) -> float:
    """Power (mW) at t: busy during the first 25 ms of every 50 ms, idle otherwise."""
    return (BUSY_W if (t_ns // (25 * MS)) % 2 == 0 else IDLE_W) * 1000


def driver_samples(t0: int, t1: int, period: int = 20 * MS) -> list[tuple[int, float]]:
    # The driver's sample is the mean power over its period (a 1 ms grid is exact enough here).
    out = []
    for t in range(t0 + period, t1 + 1, period):
        out.append((t, sum(square(x) for x in range(t - period, t, MS)) / (period // MS)))
    return out


def truth_mj(a: int, b: int) -> float:
    return sum(square(x) for x in range(a, b, MS // 10)) * (MS // 10) / 1e9


def test_integral_of_long_intervals_matches_the_curve():
    s = PowerSeries()
    s.add(driver_samples(0, 10_000 * MS))
    got = s.integrate(1_000 * MS, 9_000 * MS)
    assert got is not None and got.extrapolated_ns == 0
    assert got.mj == pytest.approx(truth_mj(1_000 * MS, 9_000 * MS), rel=0.005)
    assert got.samples == 399


def test_edges_carry_a_resolution_estimate_and_extrapolation_is_counted():
    s = PowerSeries()
    s.add(driver_samples(0, 1_000 * MS))
    short = s.integrate(500 * MS + 3 * MS, 500 * MS + 13 * MS)
    assert short.samples == 0 and short.err_mj > 0
    past = s.integrate(900 * MS, 1_100 * MS)
    assert past.extrapolated_ns == 100 * MS and past.err_mj >= BUSY_W * 0.1 / 2


def test_calibration_against_the_counter_over_long_windows():
    # The counter says 3 % more than the samples; it moves every ~100 ms, observed at ticks.
    s = PowerSeries()
    s.add(driver_samples(0, 12_000 * MS))
    assert s.scale is None
    for t in range(100 * MS, 11_000 * MS, 103 * MS):
        s.note_counter(t, 1.03 * truth_mj(0, t))
    assert s.scale == pytest.approx(1.03, abs=0.01)
    assert s.scale_window_ns >= 2_000 * MS


def test_non_increasing_samples_are_dropped():
    s = PowerSeries()
    assert len(s.add([(10, 1.0), (20, 2.0)])) == 2
    assert s.add([(20, 5.0), (15, 3.0), (30, 4.0)]) == [(30, 4.0)]


def _row(span_id, start, end, name):
    r = SpanRow("b", KEY.pid, KEY.start, span_id, 0, 7, name, name, 1, None, None, start, start, 0, "open")
    return r, end


def run_spans(spans, until_ms=1500):
    out: list[SpanRow] = []
    corr = Correlator({"gpu_energy_mj": Metric("mJ", "counter")}, out.extend)
    corr.on_sample(
        KEY, 100 * MS, ProcSample({"gpu_energy_mj": 0}, series={"gpu_power_mw@0": driver_samples(0, 100 * MS)})
    )
    for sid, a, b, name in spans:
        corr.begin(KEY, SpanRow("b", 100, 5, sid, 0, 7, name, name, 1, None, None, a, a, 0, "open"))
        corr.end(KEY, sid, b, "ok")
    samples = driver_samples(0, until_ms * MS)
    for tick in range(200, until_ms, 100):
        pts = [p for p in samples if (tick - 100) * MS < p[0] <= tick * MS]
        corr.on_sample(KEY, tick * MS, ProcSample({"gpu_energy_mj": 0}, series={"gpu_power_mw@0": pts}))
    assert len(out) == len(spans)
    for r in out:
        assert r.signals["gpu_energy_source"] == "power_samples" and r.signals["gpu_energy_window"] == "host"
    return out


def test_spans_longer_than_the_sample_period_get_their_own_energy():
    # Spans of 100 ms (four wave periods) on a 20 ms sample grid: each within its stated resolution.
    spans = [(i + 1, 200 * MS + i * 100 * MS + 5 * MS, 200 * MS + (i + 1) * 100 * MS + 5 * MS, "s") for i in range(10)]
    for r in run_spans(spans):
        want = truth_mj(r.start_ns, r.end_ns) / 1000
        assert abs(r.signals["gpu_energy_j"] - want) <= r.signals["gpu_energy_err_j"], (r.signals, want)
        assert r.signals["gpu_energy_err_j"] < 0.2 * want


def test_sub_period_spans_sum_right_but_are_not_resolved():
    # busy/idle spans of 25 ms each, aligned with the square wave: the driver's 20 ms averages
    # cannot tell them apart (that is the estimator's job), but nothing is lost in total.
    spans = []
    t = 200 * MS
    for i in range(40):
        spans.append((i + 1, t, t + 25 * MS, "busy" if i % 2 == 0 else "idle"))
        t += 25 * MS
    out = run_spans(spans)
    total = sum(r.signals["gpu_energy_j"] for r in out)
    assert total == pytest.approx(truth_mj(200 * MS, 1200 * MS) / 1000, rel=0.01)
    busy = sum(r.signals["gpu_energy_j"] for r in out if r.name == "busy")
    assert busy < 0.9 * truth_mj(0, 25 * MS) / 1000 * 20  # smeared, and the test says so


def test_span_waits_for_the_series_to_reach_its_end_then_uses_the_device_interval():
    out: list[SpanRow] = []
    corr = Correlator({}, out.extend)
    corr.on_sample(KEY, 0, ProcSample(series={"gpu_power_mw@0": [(0, 100_000.0)]}))
    corr.begin(KEY, SpanRow("b", 100, 5, 1, 0, 7, "p", "p", 1, None, None, 10 * MS, 10 * MS, 0, "open"))
    corr.end(KEY, 1, 50 * MS, "ok")
    corr.get(KEY, 1).row.dev_start_ns, corr.get(KEY, 1).row.dev_end_ns = 60 * MS, 90 * MS
    corr.on_sample(KEY, 100 * MS, ProcSample(series={"gpu_power_mw@0": [(80 * MS, 100_000.0)]}))
    assert out == []  # the samples stop before the device interval's end: wait
    corr.on_sample(KEY, 200 * MS, ProcSample(series={"gpu_power_mw@0": [(100 * MS, 300_000.0)]}))
    (r,) = out
    s = r.signals
    assert s["gpu_energy_window"] == "device"
    # A sample is the mean over the period ending at it: 100 W over 60-80 ms, 300 W over 80-90 ms.
    assert s["gpu_energy_j"] == pytest.approx(2.0 + 3.0, abs=1e-6)


@pytest.mark.parametrize("delay_ms", [0, 7])
def test_nvml_sampler_reads_power_samples_and_calibrates(tmp_path, monkeypatch, delay_ms):
    """NVMLSampler on a (synthetic, said so) recording with nvmlDeviceGetSamples in it.

    With a measured sample delay for the device's model, every sample moves that much earlier.
    """
    import json

    from gpuos_hintd import power_model

    if delay_ms:
        monkeypatch.setitem(power_model.SAMPLE_DELAY_NS, "synthetic", (delay_ms * MS, "a test"))

    from gpuos_hintd.model import Target
    from gpuos_hintd.samplers.nvml import NVMLSampler
    from gpuos_hintd.samplers.nvml_replay import FORMAT, VERSION, ReplayNVML

    samples = driver_samples(0, 5_000 * MS)
    frames = []
    for i in range(1, 50):
        t = i * 100 * MS
        frames.append(
            {
                "t_ns": t,
                "wall_ns": 0,
                "devices": [
                    {
                        "nvmlDeviceGetTotalEnergyConsumption": int(1.02 * truth_mj(0, t - 7 * MS)),
                        "nvmlDeviceGetPowerUsage": int(square(t)),
                        "nvmlDeviceGetComputeRunningProcesses": [{"pid": KEY.pid, "usedGpuMemory": 1}],
                        "nvmlDeviceGetProcessUtilization": {"error": "NotSupported"},
                        "nvmlDeviceGetSamples": {
                            "type": 1,
                            "samples": [[a, int(w)] for a, w in samples if t - 100 * MS < a <= t],
                        },
                    }
                ],
            }
        )
    rec = {
        "format": FORMAT,
        "version": VERSION,
        "synthetic": True,
        "nvmlDeviceGetCount": 1,
        "devices": [{"nvmlDeviceGetUUID": "GPU-synthetic", "nvmlDeviceGetName": "synthetic"}],
        "frames": frames,
    }
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    nv = ReplayNVML(path)
    sampler = NVMLSampler(backend=nv)
    assert sampler.available() == (True, "")
    got: list[tuple[int, float]] = []
    while True:
        ps = sampler.sample([Target(KEY)], nv.t_ns)[KEY]
        got.extend(ps.series.get("gpu_power_mw@0", []))
        if not nv.step():
            break
    # Every driver sample arrived once, on the recorded timeline (within the tens of us that reading wall - monotonic twice costs).
    want = [s for s in samples if s[0] <= 4_900 * MS]
    assert len(got) == len(want)
    assert all(abs(a + delay_ms * MS - b) <= 50_000 for (a, _), (b, _) in zip(got, want, strict=True))
    # Values are the device's power x the process's share (alone: 1) x the calibration once known.
    ratios = [v / int(w) for (_, v), (_, w) in zip(got, want, strict=True)]
    assert ratios[0] == 1.0 and ratios[-1] == pytest.approx(1.02, abs=0.02)
    dev = sampler.devices()[0]
    assert dev["power_samples_period_ms"] == pytest.approx(20, abs=0.01)
    assert dev["power_samples_scale"] == pytest.approx(1.02, abs=0.02)
    assert dev["power_samples_delay_ms"] == delay_ms
    assert dev["power_samples_delay_source"] == ("a test" if delay_ms else None)


# -- a real H200 recording (benchmarks/gpu/record_nvml.py, 2026-12-01: two matmul children) ---------
H200 = Path(__file__).resolve().parent / "data" / "nvml" / "h200_power_samples_recording.json"


def _h200_replay():
    pytest.importorskip("pynvml")
    import pynvml
    from gpuos_hintd.samplers.nvml_replay import ReplayNVML

    nv = ReplayNVML(H200)
    assert not nv.synthetic
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetName(h) == "NVIDIA H200"
    pts: list[tuple[int, float]] = []
    counters: list[tuple[int, int]] = []
    cursor = 0
    while True:  # what the sampler is handed each tick: samples newer than its cursor, and the counter
        _, got = nv.nvmlDeviceGetSamples(h, pynvml.NVML_TOTAL_POWER_SAMPLES, cursor)
        for s in got:
            pts.append((s.timeStamp * 1000 - nv._wall_offset_us * 1000, float(s.sampleValue.uiVal)))
            cursor = max(cursor, s.timeStamp)
        counters.append((nv.t_ns, nv.nvmlDeviceGetTotalEnergyConsumption(h)))
        if not nv.step():
            return pts, counters


def test_real_h200_power_samples_are_sane_and_integrate_to_the_counter():
    """The driver's power samples as recorded on an H200, through the replay and PowerSeries.

    Measured on this recording (900 samples over 18 s, 158 counter changes): spacing median
    19.997 ms, 85 % within 15-25 ms, none over 45 ms; 80-698 W (limit 700 W); the integral between
    the first and last counter change equals the counter's delta to 0.0003 %; every >= 2 s window
    between counter changes brackets the counter's delta once the ~50 ms frame spacing (when in
    the frame gap the counter moved) is allowed for.
    """
    pts, counters = _h200_replay()
    ts = [t for t, _ in pts]
    assert len(pts) >= 800 and ts == sorted(ts) and len(set(ts)) == len(ts)
    gaps = sorted((b - a) / MS for a, b in itertools.pairwise(ts))
    assert gaps[len(gaps) // 2] == pytest.approx(20.0, abs=0.1)
    assert sum(15 <= g <= 25 for g in gaps) >= 0.8 * len(gaps) and gaps[-1] <= 50
    watts = [w / 1000 for _, w in pts]
    assert min(watts) > 50 and max(watts) <= 700.0  # the board's limit, nvidia-smi: 700.00 W
    assert max(watts) > 600 and min(watts) < 150  # the bursts and the idle gaps are both in it

    series = PowerSeries(maxlen=len(pts) + 1)
    assert len(series.add(pts)) == len(pts)
    # (previous frame, frame) around each change: the counter moved somewhere in between.
    ch = [(counters[i - 1][0], counters[i][0], counters[i][1]) for i in range(1, len(counters))
          if counters[i][1] != counters[i - 1][1]]  # fmt: skip
    assert len(ch) >= 100
    (_, a, ca), (_, b, cb) = ch[0], ch[-1]
    assert b - a >= 15_000 * MS
    whole = series.integrate(a, b, scale=1.0)
    assert whole.extrapolated_ns == 0
    assert whole.mj == pytest.approx(cb - ca, rel=0.001)
    windows = 0
    for i, (p0, c0, e0) in enumerate(ch):
        later = [x for x in ch[i + 1 :] if x[1] - c0 >= 2_000 * MS]
        if not later:
            break
        p1, c1, e1 = later[0]
        lo, hi = series.integrate(c0, p1, scale=1.0).mj, series.integrate(p0, c1, scale=1.0).mj
        assert lo * 0.995 <= e1 - e0 <= hi * 1.005, (c0, c1, lo, e1 - e0, hi)
        windows += 1
    assert windows >= 100


def test_real_h200_recording_through_the_nvml_sampler():
    pytest.importorskip("pynvml")
    from gpuos_hintd.model import Target
    from gpuos_hintd.samplers.nvml import NVMLSampler
    from gpuos_hintd.samplers.nvml_replay import ReplayNVML

    nv = ReplayNVML(H200)
    sampler = NVMLSampler(backend=nv)
    assert sampler.available() == (True, "")
    keys = [ProcKey(pid, 1) for pid in nv.data["workload"]["pids"]]
    got: dict[ProcKey, list[tuple[int, float]]] = {k: [] for k in keys}
    while True:
        for k, ps in sampler.sample([Target(k) for k in keys], nv.t_ns).items():
            got[k].extend(ps.series.get("gpu_power_mw@0", []))
        if not nv.step():
            break
    dev = sampler.devices()[0]
    assert dev["power_samples_period_ms"] == pytest.approx(20.0, abs=0.1)
    assert dev["power_samples_scale"] == pytest.approx(1.0, abs=0.02)
    assert all(len(v) > 100 for v in got.values()), {k.pid: len(v) for k, v in got.items()}
