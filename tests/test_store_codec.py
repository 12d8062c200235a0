"""Packed signals come back exactly as the correlator wrote them: values, types, None, strings, extras.

The store (schema v2) keeps each span's signals as one packed row per span plus a shared layout
(store/codec.py); readers must get the same dict JSON would have given them, so any value the
daemon (or a hostile client's attrs-like value) can put there round-trips, and ns counters keep
every digit where float32 would lose them.
"""

from __future__ import annotations

import math
import sqlite3
import time

from gpuos_hintd.model import DeviceInterval, SpanRow
from gpuos_hintd.store import Store, codec, read
from hypothesis import given, settings
from hypothesis import strategies as st

value = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=False, width=64),
    st.floats(-1e6, 1e6).map(lambda v: round(v, 3)),
    st.booleans(),
    st.none(),
    st.sampled_from(["power_samples", "host", "device"]),
    st.lists(st.integers(0, 3), max_size=2),
)
keys = st.sampled_from([f"k{i}" for i in range(12)])
signals = st.dictionaries(keys, value, max_size=12)


def _json_view(d):
    """What the v1 store gave back for a dict: NaN as None, the rest as it was."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _roundtrip(rows):
    out = []
    layouts = {}
    for spec, blob, xs in codec.encode(rows):
        lay = layouts.setdefault(spec, codec.Layout(spec)) if spec else None
        out.append(codec.decode(lay, blob, xs))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(signals, min_size=1, max_size=20))
def test_any_signals_round_trip_with_their_types(rows):
    # Same keys in several rows is the common case (one layout per batch): repeat the first one's keys.
    if rows and rows[0]:
        rows = [*rows, dict.fromkeys(rows[0], 0.5), dict(rows[0])]
    got = _roundtrip(rows)
    kinds: dict[tuple[str, ...], set[tuple[type, ...]]] = {}
    for want in rows:
        kinds.setdefault(tuple(want), set()).add(tuple(type(v) for v in want.values()))
    for want, have in zip(rows, got, strict=True):
        homogeneous = len(kinds[tuple(want)]) == 1
        want = _json_view(want)
        assert have == want
        # Types too, where the rows with these keys agree on them: a batch that mixes int and float in
        # one signal may give an integral value back as the other kind (equal values, see codec.py).
        if homogeneous:
            assert {k: type(v) for k, v in have.items()} == {k: type(v) for k, v in want.items()}


def test_ns_counters_keep_every_digit_and_the_row_is_small():
    rows = [{"cpu_user_ns": 123_456_789_012 + i, "thread_cpu_ns": 98_765_432.125, "zero": 0.0} for i in range(100)]
    got = _roundtrip(rows)
    assert got == rows
    (_spec, blob, _xs) = codec.encode(rows[:1])[0]
    assert len(blob) <= 8 + 8 + 1  # int64, the value x1000 in 8 bytes (or f8), a one-byte zero


def test_store_rows_read_back_through_the_v1_shaped_view(tmp_path):
    now = time.time_ns()
    sig = {"cpu_user_ns": 1234567.891, "rss_bytes_mean": 6e8, "cpu_exact": True, "gpu_energy_source": "power_samples"}
    store = Store(tmp_path)
    rows = [
        SpanRow("boot", 7, 8, i, 0, 7, "step", "train/step", 2, "train", {"i": i}, i, i + 5, now, "ok", signals=sig)
        for i in range(1, 4)
    ]
    store.submit("spans", rows)
    store.submit("device", [DeviceInterval("boot", 7, 8, 2, 100, 200, {"dev_ms": 0.1})])
    assert store.flush(5)
    store.close()
    conn = read.connect(tmp_path / "gpuos-hint.db")
    got = {r["span_id"]: r for r in conn.execute("SELECT * FROM spans ORDER BY span_id")}
    assert set(got) == {1, 2, 3}
    r = got[1]
    assert (r["name"], r["path"], r["workload_class"], r["status"], r["end_ns"], r["duration_ns"]) == (
        "step",
        "train/step",
        "train",
        "ok",
        6,
        5,
    )
    import json

    assert json.loads(r["signals"]) == sig and json.loads(r["attrs"]) == {"i": 1}
    assert json.loads(got[2]["signals"]) == {**sig, "dev_ms": 0.1} and got[2]["dev_start_ns"] == 100
    assert read.query_spans(conn, read.SpanQuery(name="step"))[0]["signals"] == sig
    # A plain SQLite connection sees every column but the packed signals.
    plain = sqlite3.connect(tmp_path / "gpuos-hint.db")
    assert plain.execute("SELECT count(*), min(name) FROM spans").fetchone() == (3, "step")


def test_a_v1_store_is_migrated_aside_and_read_with_the_new_rows(tmp_path):
    v1 = sqlite3.connect(tmp_path / "gpuos-hint.db")
    v1.executescript(
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE spans (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, pid INTEGER NOT NULL,
          pid_start INTEGER NOT NULL, span_id INTEGER NOT NULL, parent_span_id INTEGER NOT NULL,
          tid INTEGER NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, depth INTEGER NOT NULL,
          workload_class TEXT, attrs TEXT, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
          duration_ns INTEGER NOT NULL, start_wall_ns INTEGER NOT NULL, status TEXT NOT NULL,
          recovered INTEGER NOT NULL DEFAULT 0, dev_start_ns INTEGER, dev_end_ns INTEGER,
          samples INTEGER NOT NULL DEFAULT 0, estimated INTEGER NOT NULL DEFAULT 0,
          signals TEXT NOT NULL DEFAULT '{}', UNIQUE (boot_id, pid, pid_start, span_id));
        CREATE INDEX spans_by_wall ON spans (start_wall_ns);"""
    )
    now = time.time_ns()
    v1.execute(
        "INSERT INTO spans VALUES (5,'old',1,2,1,0,1,'before','before',1,NULL,NULL,0,9,9,?,'ok',0,NULL,NULL,1,0,?)",
        (now, '{"cpu_user_ns": 9.5}'),
    )
    v1.commit()
    v1.close()
    store = Store(tmp_path)
    store.submit("spans", [SpanRow("new", 1, 2, 1, 0, 1, "after", "after", 1, None, None, 0, 3, now, "ok")])
    assert store.flush(5)
    store.close()
    conn = read.connect(tmp_path / "gpuos-hint.db")
    rows = conn.execute("SELECT id, name, signals FROM spans ORDER BY id").fetchall()
    assert [(r["name"], r["signals"]) for r in rows] == [("before", '{"cpu_user_ns": 9.5}'), ("after", "{}")]
    assert rows[0]["id"] < rows[1]["id"]
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"


def test_the_metric_catalogue_is_written_for_readers(tmp_path):
    from gpuos_hintd.model import Metric

    store = Store(tmp_path)
    store.register_metrics(
        {"cpu_user_ns": Metric("ns", "counter", "process", "user CPU"), "rss_bytes": Metric("B", "gauge")}
    )
    assert store.flush(5)
    store.close()
    conn = read.connect(tmp_path / "gpuos-hint.db")
    assert read.metric_kinds(conn) == {"cpu_user_ns": "counter", "rss_bytes": "gauge"}
    assert read.metric_catalog(conn)["cpu_user_ns"]["help"] == "user CPU"
