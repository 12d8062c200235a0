"""Correlation arithmetic: interpolated counter deltas, gauge means, abandonment, device intervals."""

from __future__ import annotations

import pytest
from gpuos_hintd import edge_cpu
from gpuos_hintd.correlate import Correlator
from gpuos_hintd.model import Metric, ProcKey, ProcSample, SpanRow

KEY = ProcKey(100, 5)
METRICS = {
    "cpu_user_ns": Metric("ns", "counter"),
    "thread_cpu_ns": Metric("ns", "counter", "thread"),
    "rss_bytes": Metric("bytes", "gauge"),
    "gpu_util_pct": Metric("%", "gauge"),
}
MS = 1_000_000


def row(span_id, start, tid=7, name="p"):
    return SpanRow("boot", KEY.pid, KEY.start, span_id, 0, tid, name, name, 1, None, None, start, start, 0, "open")


def sample(cpu, rss, thread_cpu=None, tid=7, util=None):
    s = ProcSample({"cpu_user_ns": cpu, "rss_bytes": rss, "gpu_util_pct": util})
    if thread_cpu is not None:
        s.threads[tid] = {"thread_cpu_ns": thread_cpu}
    return s


@pytest.fixture
def corr():
    out = []
    c = Correlator(METRICS, out.extend)
    c.out = out
    return c


def test_counters_are_interpolated_at_the_span_edges(corr):
    # CPU grows 50 ms per 100 ms tick; span from 125 ms to 275 ms -> 75 ms of CPU.
    corr.on_sample(KEY, 100 * MS, sample(50 * MS, 1000, thread_cpu=0))
    corr.begin(KEY, row(1, 125 * MS))
    corr.on_sample(KEY, 200 * MS, sample(100 * MS, 3000, thread_cpu=100 * MS))
    corr.end(KEY, 1, 275 * MS, "ok")
    assert corr.out == []  # not final until a sample at/after its end
    corr.on_sample(KEY, 300 * MS, sample(150 * MS, 5000, thread_cpu=200 * MS))
    (r,) = corr.out
    assert r.signals["cpu_user_ns"] == pytest.approx(75 * MS)
    assert r.signals["thread_cpu_ns"] == pytest.approx(150 * MS)
    assert r.signals["cpu_pct"] == pytest.approx(50.0)
    assert r.signals["thread_cpu_pct"] == pytest.approx(100.0)
    assert r.signals["rss_bytes_mean"] == 3000 and r.signals["rss_bytes_max"] == 3000
    assert r.samples == 1 and not r.estimated
    assert "gpu_util_pct_mean" not in r.signals  # None values are left out, not made 0


def test_span_inside_one_interval_is_estimated_from_the_rate(corr):
    corr.on_sample(KEY, 0, sample(0, 10))
    corr.begin(KEY, row(1, 10 * MS))
    corr.end(KEY, 1, 30 * MS, "ok")
    corr.on_sample(KEY, 100 * MS, sample(100 * MS, 30, util=80))
    (r,) = corr.out
    assert r.signals["cpu_user_ns"] == pytest.approx(20 * MS)
    assert r.signals["rss_bytes_mean"] == pytest.approx(14)  # interpolated at the midpoint (20 ms)
    assert r.estimated and r.samples == 0


def test_abandoned_process_closes_open_spans_at_last_sight(corr):
    corr.on_sample(KEY, 0, sample(0, 10))
    corr.begin(KEY, row(1, 10 * MS))
    corr.begin(KEY, row(2, 20 * MS, name="q"))
    corr.on_sample(KEY, 100 * MS, sample(40 * MS, 10))
    corr.end(KEY, 2, 90 * MS, "ok")
    closed = corr.close_process(KEY, "abandoned", at_ns=100 * MS)
    st = {r.span_id: r for r in closed}
    assert st[1].status == "abandoned" and st[1].end_ns == 100 * MS
    assert st[2].status == "ok" and st[2].end_ns == 90 * MS
    assert st[1].signals["cpu_user_ns"] == pytest.approx(36 * MS)
    assert corr.spans == {} and KEY not in corr.prev


def test_gauges_mean_and_max_over_samples_inside(corr):
    corr.on_sample(KEY, 0, sample(0, 0, util=0))
    corr.begin(KEY, row(1, 1))
    for i, util in enumerate([10, 90, 50], start=1):
        corr.on_sample(KEY, i * 100 * MS, sample(0, 0, util=util))
    corr.end(KEY, 1, 350 * MS, "ok")
    corr.on_sample(KEY, 400 * MS, sample(0, 0, util=0))
    (r,) = corr.out
    assert r.signals["gpu_util_pct_mean"] == pytest.approx(50.0)  # 10, 90, 50 (the 400 ms sample is after the end)
    assert r.signals["gpu_util_pct_max"] == 90


def test_device_interval_signals_from_recent_history(corr):
    for i, util in enumerate([0, 100, 100, 0]):
        corr.on_sample(KEY, i * 100 * MS, sample(0, 0, util=util))
    sig = corr.device_signals(KEY, 50 * MS, 250 * MS)
    assert sig["dev_gpu_util_pct_mean"] == 100 and sig["dev_samples"] == 2 and sig["dev_ms"] == 200
    assert corr.device_signals(ProcKey(1, 1), 0, 1) == {"dev_ms": 0.0}  # an unknown process: only its length


# ---------------------------------------------------------------- edge readings (ru)
def ru(t_read, thread_cpu, proc_cpu=0, nvcsw=0, nivcsw=0, minflt=0, majflt=0):
    return (t_read, thread_cpu, proc_cpu, nvcsw, nivcsw, minflt, majflt)


def test_edge_readings_give_each_span_its_own_cpu(corr):
    # hot 4 ms / cold 6 ms alternation inside one 100 ms sample interval: the samples only
    # see 40 ms of CPU over 100 ms; the readings put all of it in the hot spans.
    corr.on_sample(KEY, 0, sample(0, 10, thread_cpu=0))
    t, cpu = 0, 0
    for i in range(10):
        corr.begin(KEY, row(2 * i + 1, t, name="hot"), ru(t, cpu, cpu, 5 * i, i, 100 + i, 0))
        t, cpu = t + 4 * MS, cpu + 4 * MS
        corr.end(KEY, 2 * i + 1, t, "ok", ru(t, cpu, cpu, 5 * i, i + 1, 100 + i + 1, 0))
        corr.begin(KEY, row(2 * i + 2, t, name="cold"), ru(t, cpu, cpu, 5 * i, i + 1, 100 + i + 1, 0))
        t += 6 * MS
        corr.end(KEY, 2 * i + 2, t, "ok", ru(t, cpu, cpu, 5 * (i + 1), i + 1, 100 + i + 1, 0))
    corr.on_sample(KEY, 100 * MS, sample(40 * MS, 10, thread_cpu=40 * MS))
    assert len(corr.out) == 20
    for r in corr.out:
        s = r.signals
        assert s["cpu_exact"] is True
        want = 4 * MS if r.name == "hot" else 0
        assert s["thread_cpu_ns"] == want and s["proc_cpu_ns"] == want
        assert s["thread_cpu_ns_err"] == edge_cpu.rusage_res(want) and s["proc_cpu_ns_err"] == 0
        assert s["cpu_user_ns"] + s.get("cpu_sys_ns", 0) == want  # the sampled split, rescaled
        assert s["ctx_vol"] == (0 if r.name == "hot" else 5)
        assert s["ctx_invol"] == (1 if r.name == "hot" else 0)
        assert s["thread_minflt"] == (1 if r.name == "hot" else 0)


def test_reused_reading_bounds_the_span(corr):
    # The end edge reuses the begin's reading (taken 3 ms before the begin): the span's thread
    # CPU lies in [d - gap_begin, d + gap_end] cut to [0, duration].
    corr.on_sample(KEY, 0, sample(0, 10, thread_cpu=0))
    r0 = ru(7 * MS, 7 * MS, 7 * MS)
    corr.begin(KEY, row(1, 10 * MS), r0)
    corr.end(KEY, 1, 15 * MS, "ok", r0)
    corr.on_sample(KEY, 100 * MS, sample(100 * MS, 10, thread_cpu=100 * MS))
    (r,) = corr.out
    s = r.signals
    assert s["cpu_exact"] is False
    lo, hi = s["thread_cpu_ns"] - s["thread_cpu_ns_err"], s["thread_cpu_ns"] + s["thread_cpu_ns_err"]
    assert lo <= 5 * MS <= hi  # the true value (the thread spun all along) is inside the bound
    assert s["thread_cpu_ns"] == 0  # the readings' own difference, with the gap as its bound
    assert s["ctx_vol"] == 0 and s["ru_gap_ns"] == 3 * MS + 8 * MS  # counts between the readings, gap said


def test_spans_without_readings_are_inexact_with_a_bound(corr):
    # Thread CPU 40 ms over 100 ms; a 4 ms span gets 1.6 ms interpolated, bounded by [0, 4 ms].
    corr.on_sample(KEY, 0, sample(0, 10, thread_cpu=0))
    corr.begin(KEY, row(1, 50 * MS))
    corr.end(KEY, 1, 54 * MS, "ok")
    corr.on_sample(KEY, 100 * MS, sample(40 * MS, 10, thread_cpu=40 * MS))
    (r,) = corr.out
    s = r.signals
    assert s["cpu_exact"] is False
    assert s["thread_cpu_ns"] == pytest.approx(1.6 * MS, abs=1)
    assert s["thread_cpu_ns_err"] == pytest.approx(2.4 * MS, abs=1)  # up to the whole 4 ms
    assert "proc_cpu_ns" not in s


def test_samples_tighten_the_bound_of_unread_spans(corr):
    # The thread ran all the time: the samples pin a 30 ms span to exactly 30 ms of CPU.
    corr.on_sample(KEY, 0, sample(0, 10, thread_cpu=0))
    corr.begin(KEY, row(1, 20 * MS))
    corr.end(KEY, 1, 50 * MS, "ok")
    corr.on_sample(KEY, 100 * MS, sample(100 * MS, 10, thread_cpu=100 * MS))
    (r,) = corr.out
    assert r.signals["thread_cpu_ns"] == 30 * MS and r.signals["thread_cpu_ns_err"] == 0


def test_readings_that_the_wall_time_forbids_are_clamped_and_flagged(corr):
    # getrusage said 1.3 ms of thread CPU in a 1 ms span: clamped to 1 ms, the bound says 0.3 ms.
    corr.on_sample(KEY, 0, sample(0, 10, thread_cpu=0))
    corr.begin(KEY, row(1, 10 * MS), ru(10 * MS, 0, 0))
    corr.end(KEY, 1, 11 * MS, "ok", ru(11 * MS, 1_300_000, 1_000_000))
    corr.on_sample(KEY, 100 * MS, sample(100 * MS, 10, thread_cpu=50 * MS))
    (r,) = corr.out
    s = r.signals
    assert s["cpu_reading_clamped"] is True and s["cpu_exact"] is True
    assert s["thread_cpu_ns"] == MS and s["thread_cpu_ns_err"] == 300_000 + edge_cpu.rusage_res(MS)
    assert s["proc_cpu_ns"] == MS
