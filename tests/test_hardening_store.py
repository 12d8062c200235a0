"""The store writer survives any row, is bounded, never overwrites a span, and notices a deleted file.

Issue 8, class 2 (and 9's store mode, 10's deleted state dir).  A real SQLite store
in tmp; rows the public API accepts (bytes, NaN, inf) and ones only an attacker
or a bug makes (ints near or past 2^63).
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import stat
import threading
import time

import pytest
from gpuos_hintd.model import MarkRow, SampleRow, SpanRow
from gpuos_hintd.store import DB_NAME, Store

NOW = time.time_ns()


def span(span_id, name="n", attrs=None, start=0, end=5, status="ok", recovered=False, pid=1):
    # A current wall time: the writer's retention prune would delete a span "from 1970".
    return SpanRow("b", pid, 2, span_id, 0, 1, name, name, 1, None, attrs, start, end, NOW, status, recovered)


def rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def test_rows_the_api_accepts_are_written_not_fatal(store):
    bad = [
        span(1, attrs={"blob": b"\x00\xffbytes", "nan": math.nan, "inf": math.inf, "big": 2**64 - 1}),
        span(2, start=2**63 - 10, end=2**63 + 10),  # ints past int64 after the daemon's arithmetic
    ]
    store.submit("spans", bad)
    store.submit("marks", [MarkRow("b", 1, 2, 1, 2**64, NOW, "m", {"x": b"y"})])
    store.submit("samples", [SampleRow("b", 1, 2, 0, 1, NOW, {"v": math.nan})])
    assert store.flush(5)
    store.submit("spans", [span(3, name="after")])
    assert store.flush(5)
    h = store.health()
    assert h["writer_alive"] and h["writer_crashes"] == 0
    assert h["written"]["spans"] == 3 and h["written"]["marks"] == 1 and h["written"]["samples"] == 1
    got = dict(rows(store.path, "SELECT span_id, attrs FROM spans WHERE span_id=1"))
    assert '\\\\xffbytes"' in got[1] and '"nan":null' in got[1] and '"big":"18446744073709551615"' in got[1]
    assert rows(store.path, "SELECT name FROM spans WHERE span_id=3") == [("after",)]


def test_a_row_that_cannot_be_bound_is_dropped_alone_and_counted(store):
    weird = span(1)
    weird.tid = object()  # nothing can bind this: the row goes, the batch stays
    store.submit("spans", [span(0, name="before"), weird, span(2, name="next")])
    assert store.flush(5)
    h = store.health()
    assert h["bad_rows"] == 1
    assert sorted(r[0] for r in rows(store.path, "SELECT name FROM spans")) == ["before", "next"]


def test_the_writer_restarts_after_any_exception_and_says_so(store, monkeypatch):
    calls = []
    real = store._check_file

    def once(*a):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("simulated")
        return real(*a)

    monkeypatch.setattr(store, "_check_file", once)
    store.submit("spans", [span(1)])
    store.flush(5)
    deadline = time.monotonic() + 5
    while store.health()["written"]["spans"] < 1 and time.monotonic() < deadline:
        store.flush(1)
    h = store.health()
    assert h["writer_crashes"] == 1 and "MemoryError" in h["last_crash"]
    assert h["writer_alive"]
    # A writer thread that is gone anyway is started again from the daemon's loop.
    store._q.put(None)  # ends the writer as a death would
    store._thread.join(5)
    assert not store._thread.is_alive()
    assert store.ensure_writer() is True
    assert store.health()["writer_restarts"] == 1
    store.submit("spans", [span(2)])
    assert store.flush(5)
    assert store.health()["written"]["spans"] == 2


def test_queue_is_bounded_samples_shed_first_spans_last(tmp_path):
    store = Store(tmp_path / "s", max_queue_rows=10)
    gate = threading.Event()
    real = store._write
    store._write = lambda batch: gate.wait(10) and real(batch)  # type: ignore[method-assign]
    try:
        store.submit("marks", [MarkRow("b", 1, 2, 1, 0, 0, "m", None)])
        time.sleep(0.3)  # the writer holds that one, blocked
        for i in range(4):
            store.submit("samples", [SampleRow("b", 1, 2, 0, i, i, {}) for _ in range(5)])
        for i in range(5):
            store.submit("spans", [span(100 + i * 5 + j) for j in range(5)])
        h = store.health()
        assert h["shed_by_kind"].get("samples", 0) == 10  # 2 of 4 sample batches did not fit
        assert h["shed_by_kind"].get("spans", 0) == 15  # spans only past twice the bound: 3 of 5 batches
        assert h["queued_rows"] <= 20
    finally:
        gate.set()
        store.close()


def test_a_stored_span_is_never_overwritten(store):
    store.submit("spans", [span(7, name="first")])
    store.flush(5)
    store.submit("spans", [span(7, name="impostor", start=1)])
    store.flush(5)
    assert rows(store.path, "SELECT name FROM spans WHERE span_id=7") == [("first",)]
    assert store.health()["span_conflicts"] == 1
    # ... except by its own recovered continuation after the daemon's restart
    store.submit("spans", [span(8, name="long", status="interrupted")])
    store.flush(5)
    store.submit("spans", [span(8, name="long", status="ok", recovered=True, end=99)])
    store.flush(5)
    assert rows(store.path, "SELECT status, end_ns FROM spans WHERE span_id=8") == [("ok", 99)]


def test_the_store_is_not_world_readable_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        s = Store(tmp_path / "state")
        s.submit("spans", [span(1)])
        s.flush(5)
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            p = tmp_path / "state" / name
            if p.exists():
                assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (name, oct(p.stat().st_mode))
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) & 0o077 == 0
        s.close()
    finally:
        os.umask(old)


def test_a_deleted_state_dir_is_noticed_reported_and_recreated(tmp_path):
    s = Store(tmp_path / "state")
    try:
        s.submit("spans", [span(1)])
        s.flush(5)
        shutil.rmtree(tmp_path / "state")
        s._last_check = 0.0
        s.submit("spans", [span(2)])
        s.flush(5)
        h = s.health()
        assert h["reopened"] == 1 and h["write_errors"] >= 1
        s.submit("spans", [span(3)])
        assert s.flush(5)
        assert (tmp_path / "state" / DB_NAME).exists()
        assert [r[0] for r in rows(tmp_path / "state" / DB_NAME, "SELECT span_id FROM spans")] in ([2, 3], [3])
    finally:
        s.close()


def test_writer_trouble_is_visible_in_status(tmp_path):
    from gpuos_hintd.cli.status import render_status
    from gpuos_hintd.config import Config
    from gpuos_hintd.service import HintService

    store = Store(tmp_path / "state")
    svc = HintService(Config(state_dir=tmp_path / "state"), store)
    try:
        store.writer_crashes, store.last_crash, store.bad_rows = 2, "MemoryError: x", 3
        text = render_status(svc.status().to_dict())
        assert "writer crashes 2" in text and "bad rows 3" in text and "MemoryError" in text
    finally:
        svc.worker.close()
        store.close()
