"""The bulk correlator agrees with the per-span reference on random events and samples.

tests/correlate_reference.py is correlate.py as it was before the bulk rewrite (7b3ad84), one span
at a time.  Both get the same samples (counters that grow, gauges that move, values that go
missing), the same spans on several threads (some with the client's edge readings, some that end
late, some still open when the process goes) and the same close; every span they emit must carry
the same status, end, sample count, estimated flag and signals (to the 3 decimals both round to).
"""

from __future__ import annotations

import math
import time

import correlate_reference as ref
import pytest
from gpuos_hintd import correlate
from gpuos_hintd.model import Metric, ProcKey, ProcSample, SpanRow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = ProcKey(4242, 77)
KEY2 = ProcKey(4343, 78)  # a second process fed the same events, for the deferred (one pass per tick) mode
MS = 1_000_000
METRICS = {
    "cpu_user_ns": Metric("ns", "counter"),
    "cpu_sys_ns": Metric("ns", "counter"),
    "minflt": Metric("1", "counter"),
    "ctx_vol": Metric("1", "counter"),
    "rss_bytes": Metric("bytes", "gauge"),
    "threads": Metric("1", "gauge"),
    "gpu_util_pct": Metric("%", "gauge"),
    "gpu_energy_mj": Metric("mJ", "counter"),
    "gpu_energy_estimated": Metric("1", "gauge"),
    "thread_cpu_ns": Metric("ns", "counter", "thread"),
    "thread_running": Metric("1", "gauge", "thread"),
}
TIDS = (KEY.pid, KEY.pid + 1, KEY.pid + 2)

span_st = st.tuples(
    st.sampled_from(TIDS),
    st.integers(0, 900),  # start, ms
    st.integers(0, 250),  # length, ms
    st.booleans(),  # with edge readings
    st.integers(0, 3),  # 0: ends in time; 1: end arrives one tick late; 2: never ends; 3: error status
    st.integers(0, 2_000),  # edge reading gap, us
)
sample_st = st.tuples(
    st.integers(1, 60),  # ms since the last sample
    st.floats(0, 1.0),  # CPU share of the interval
    st.booleans(),  # a value missing this time
    st.integers(0, 100),  # a gauge value
)


def _ru(t, cpu, gap_us, k):
    return (t - gap_us * 1000, cpu, cpu * 2, k, k // 3, 10 * k, 0)


def _run(mod, spans, samples, close_at, defer=False):
    """Feed the events; with ``defer``, two processes get them and each tick ends with end_tick()."""
    out: list[SpanRow] = []
    c = mod.Correlator(METRICS, out.extend)
    keys = (KEY, KEY2) if defer else (KEY,)
    if defer:
        c.defer = True
    opened = {}
    pending_end: list[tuple[int, int, str, object]] = []
    t, cpu, thr, energy = 0, 0, dict.fromkeys(TIDS, 0), 0.0
    events = sorted(
        ((start * MS, i) for i, (_tid, start, *_rest) in enumerate(spans)),
    )
    ev = 0
    for dt, share, missing, gauge in samples:
        t_next = t + dt * MS
        # Spans that begin before this sample, then the ends that are due.
        while ev < len(events) and events[ev][0] < t_next:
            s0, i = events[ev]
            ev += 1
            tid, _start, length, with_ru, end_kind, gap_us = spans[i]
            for k in keys:
                row = SpanRow(
                    "boot", k.pid, k.start, i + 1, 0, tid, f"p{i % 3}", f"p{i % 3}", 1, None, None, s0, s0, 0, "open"
                )
                c.begin(k, row, _ru(s0, thr[tid], gap_us, i) if with_ru else None)
                opened[i] = row
            if end_kind == 2:
                continue
            e = s0 + length * MS + 1234
            status = "error" if end_kind == 3 else "ok"
            ru_end = _ru(e, thr[tid] + int(length * MS * share), gap_us // 2, i + length) if with_ru else None
            pending_end.append((e + (dt * MS if end_kind == 1 else 0), i + 1, status, (e, ru_end)))
        still = []
        for arrive, sid, status, (e, ru_end) in pending_end:
            if arrive <= t_next:
                for k in keys:
                    c.end(k, sid, e, status, ru_end)
            else:
                still.append((arrive, sid, status, (e, ru_end)))
        pending_end = still
        t = t_next
        cpu += int(dt * MS * share)
        energy += dt * 0.35
        for tid in TIDS:
            thr[tid] += int(dt * MS * share / len(TIDS))
        values = {
            "cpu_user_ns": cpu,
            "cpu_sys_ns": cpu // 3,
            "minflt": cpu // 7919,
            "ctx_vol": None if missing else cpu // 104729,
            "rss_bytes": 1_000_000 + gauge * 4096,
            "threads": len(TIDS),
            "gpu_util_pct": None if missing else gauge,
            "gpu_energy_mj": round(energy, 3),
            "gpu_energy_estimated": 1 if gauge > 95 else 0,
        }
        threads = {
            tid: {"thread_cpu_ns": thr[tid], "thread_running": gauge % 2}
            for tid in TIDS
            if not (missing and tid == TIDS[2])
        }
        for k in keys:
            c.on_sample(k, t, ProcSample(dict(values), {tid: dict(v) for tid, v in threads.items()}))
        if defer:
            c.end_tick()
    for k in keys:
        c.close_process(k, "abandoned", close_at if close_at is None else t + close_at * MS)
    if defer:
        c.end_tick()  # nothing is left for it: close_process finalised its process's due spans
    mine = {r.span_id: r for r in out if r.pid == KEY.pid}
    if defer:
        twin = {r.span_id: r for r in out if r.pid == KEY2.pid}
        assert set(twin) == set(mine) and len(out) == 2 * len(mine), "each span exactly once per process"
        for sid, r in mine.items():
            assert twin[sid].signals == r.signals, sid
    return mine


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, rel=1e-9, abs=2e-3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spans=st.lists(span_st, min_size=1, max_size=40),
    samples=st.lists(sample_st, min_size=1, max_size=40),
    close_at=st.one_of(st.none(), st.integers(0, 50)),
)
@pytest.mark.parametrize("defer", [False, True], ids=["per-process", "one-pass-per-tick"])
def test_bulk_path_matches_the_per_span_reference(spans, samples, close_at, defer):
    want = _run(ref, spans, samples, close_at)
    got = _run(correlate, spans, samples, close_at, defer)
    assert set(got) == set(want)
    for sid, w in want.items():
        g = got[sid]
        assert (g.status, g.start_ns, g.end_ns, g.samples, g.estimated) == (
            w.status,
            w.start_ns,
            w.end_ns,
            w.samples,
            w.estimated,
        ), sid
        assert set(g.signals) == set(w.signals), (sid, set(g.signals) ^ set(w.signals))
        bad = {k: (g.signals[k], v) for k, v in w.signals.items() if not _same(g.signals[k], v)}
        assert not bad, (sid, bad)


def test_a_batch_of_spans_of_one_tick_is_finalised_in_one_emit():
    out: list[list[SpanRow]] = []
    c = correlate.Correlator(METRICS, out.append)
    c.on_sample(KEY, 0, ProcSample({"cpu_user_ns": 0}, {KEY.pid: {"thread_cpu_ns": 0}}))
    for i in range(100):
        row = SpanRow("b", KEY.pid, KEY.start, i + 1, 0, KEY.pid, "s", "s", 1, None, None, i * MS, i * MS, 0, "open")
        c.begin(KEY, row)
        c.end(KEY, i + 1, i * MS + MS // 2, "ok")
    c.on_sample(KEY, 100 * MS, ProcSample({"cpu_user_ns": 100 * MS}, {KEY.pid: {"thread_cpu_ns": 50 * MS}}))
    assert len(out) == 1 and len(out[0]) == 100
    assert all(r.signals["cpu_user_ns"] == pytest.approx(MS / 2) for r in out[0])
    assert all(r.signals["cpu_exact"] is False for r in out[0])


def test_spans_stored_from_the_correlators_columns_read_back_as_their_dicts(tmp_path):
    import json

    from gpuos_hintd.store import Store, read

    store = Store(tmp_path)
    emitted: list[SpanRow] = []
    now = time.time_ns()

    def emit(rows):
        assert getattr(rows, "columns", None) is not None  # the batch carries its columns
        for r in rows:
            r.start_wall_ns = now  # the writer's retention prune would delete spans "from 1970"
        emitted.extend(rows)
        store.submit("spans", rows)

    spans = [(TIDS[i % 3], 7 * i % 900, 3 + i % 40, i % 2 == 0, i % 4, 10 * i) for i in range(60)]
    samples = [(40 + i % 7, (i % 10) / 10, i % 5 == 0, i * 13 % 100) for i in range(30)]
    orig = correlate.Correlator
    try:
        correlate.Correlator = lambda metrics, _emit: orig(metrics, emit)  # type: ignore[misc]
        _run(correlate, spans, samples, None)
    finally:
        correlate.Correlator = orig
    assert store.flush(10)
    store.close()
    assert emitted
    conn = read.connect(tmp_path / "gpuos-hint.db")
    got = {r["span_id"]: json.loads(r["signals"]) for r in conn.execute("SELECT span_id, signals FROM spans")}
    assert len(got) == len(emitted)
    for row in emitted:
        assert got[row.span_id] == row.signals, row.span_id
