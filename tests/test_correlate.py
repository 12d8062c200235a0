"""Correlation arithmetic: interpolated counter deltas, gauge means, abandonment, device intervals."""

from __future__ import annotations

import pytest
from gpuos_hintd.correlate import Correlator
from gpuos_hintd.samplers.base import Metric, ProcKey, ProcSample
from gpuos_hintd.store import SpanRow

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
    assert sig["dev_gpu_util_pct_mean"] == 100 and sig["dev_samples"] == 2
    assert corr.device_signals(ProcKey(1, 1), 0, 1) == {}
