"""HintService in-process against a fake /proc tree (tests/fakeproc.py): no daemon, no ZeroMQ.

Admission (peer credentials checked against the tree), spans through real
sampling ticks (the proc sampler reads the tree), heartbeat recovery,
``lost_end``, ``abandoned`` when the process leaves the tree, the rate limit and
the per-uid bounds, the typed status snapshot, and a fuzz test of ``ingest()``
with arbitrary bytes and peers.  Each test runs in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fakeproc import BOOT_ID, FakeProc
from gpuos_client import protocol as P
from gpuos_hintd.config import Config
from gpuos_hintd.model import SpanRow
from gpuos_hintd.samplers.proc import ProcSampler
from gpuos_hintd.service import HintService
from gpuos_hintd.status import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PID, START, UID = 4242, 777_000, 1000
PEER = (PID, UID, UID)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    fp = FakeProc(tmp_path / "proc")
    fp.add(PID, START, UID, tids=(PID + 1,), comm="python3", cmdline=("python3", "train.py", "--lr=3e-4"),
           cgroup="0::/system.slice/train.service")  # fmt: skip
    return fp


class Harness:
    def __init__(self, svc: HintService, proc: FakeProc) -> None:
        self.svc, self.proc = svc, proc
        self.rows: list[SpanRow] = []
        svc.sinks.append(self.rows.extend)
        self.seq: dict[int, int] = {}

    def send(self, events: list[list[Any]], pid: int = PID, start: int = START, peer: Any = PEER,
             rid: bytes = b"conn") -> list[dict[str, Any]]:  # fmt: skip
        seq = self.seq[pid] = self.seq.get(pid, 0) + 1
        out = self.svc.ingest(P.encode_batch(pid, start, seq, 0, events), peer, rid)
        return [r for r in map(P.decode_reply, out) if r is not None]

    def now(self) -> int:
        return time.monotonic_ns()

    def begin(self, span: int, name: str, parent: int = 0, tid: int = PID, **kw: Any) -> list[Any]:
        return [P.PHASE_BEGIN, self.now(), tid, span, parent, name, kw.get("cls"), None]

    def end(self, span: int, status: str = "ok", tid: int = PID) -> list[Any]:
        return [P.PHASE_END, self.now(), tid, span, status, None]

    def status(self, uid: int | None = 0) -> dict[str, Any]:
        return self.svc.status(uid).to_dict()


def _service(proc: FakeProc, tmp_path: Path, **cfg: Any) -> HintService:
    return HintService(Config(state_dir=tmp_path / "state", **cfg), None, [ProcSampler(proc.root)], proc.root)


@pytest.fixture
def h(proc: FakeProc, tmp_path: Path) -> Iterator[Harness]:
    svc = _service(proc, tmp_path)
    yield Harness(svc, proc)
    svc.worker.close()


@pytest.fixture
def make(proc: FakeProc, tmp_path: Path) -> Iterator[Any]:
    made: list[HintService] = []

    def build(**cfg: Any) -> Harness:
        made.append(_service(proc, tmp_path, **cfg))
        return Harness(made[-1], proc)

    yield build
    for svc in made:
        svc.worker.close()


# ------------------------------------------------------------------ admission
def test_admission_reads_identity_from_the_given_procfs(h: Harness) -> None:
    replies = h.send([[P.HELLO, h.now(), PID, {"argv": ["python3", "train.py"], "client": "9.9"}]])
    assert [r["op"] for r in replies] == [P.REPLY_WELCOME, P.REPLY_ACK]
    assert replies[1]["ok"] == 1 and replies[1]["bad"] == 0
    assert h.svc.boot_id == BOOT_ID
    (c,) = h.status()["clients"]
    assert (c["pid"], c["uid"], c["comm"], c["cmdline"]) == (PID, UID, "python3", ["python3", "train.py", "--lr=3e-4"])
    assert (c["cgroup"], c["unit"], c["client_version"], c["ns_pid"]) == ("/system.slice/train.service",
                                                                           "train.service", "9.9", None)  # fmt: skip
    assert h.svc.counters["clients_seen"] == 1 and not h.svc.rejected


def test_a_cut_comm_is_completed_from_argv0(h: Harness) -> None:
    h.proc.add(5000, 5, UID, comm="very-long-progr", cmdline=("/opt/bin/very-long-program-name", "x"))
    h.send([[P.MARK, h.now(), 5000, "m", None]], pid=5000, start=5, peer=(5000, UID, UID))
    assert [c["comm"] for c in h.status()["clients"]] == ["very-long-program-name"]


@pytest.mark.parametrize(
    ("claim", "peer", "reason"),
    [
        ((PID, START + 1), PEER, "pid_start_mismatch"),  # a recycled pid, or a forged start time
        ((PID + 7, START), PEER, "pid_mismatch"),  # claims another process
        ((31337, 1), (31337, UID, UID), "peer_gone"),  # not (or no longer) in /proc
        ((PID, START), (PID, UID + 1, UID + 1), "uid_mismatch"),  # the live process runs as another uid
        ((PID, START), None, "no_credentials"),  # a transport without peer credentials
    ],
)
def test_admission_refuses_claims_the_tree_does_not_back(h: Harness, claim: Any, peer: Any, reason: str) -> None:
    replies = h.send([[P.MARK, h.now(), PID, "m", None]], pid=claim[0], start=claim[1], peer=peer)
    assert h.svc.rejected == {reason: 1}
    assert replies == [{"op": P.REPLY_ACK, "seq": 1, "ok": 0, "bad": 1, "why": reason}]
    assert not h.svc.clients


def test_a_container_client_is_admitted_by_its_nspid_line(h: Harness) -> None:
    p = h.proc.add(6000, 60, UID, tids=(6001,), ns_pid=7)
    p.threads[6001].ns_tid = 8
    h.proc.write(p)
    h.send([h.begin(1, "step", tid=8)], pid=7, start=60, peer=(6000, UID, UID))
    assert not h.svc.rejected
    (c,) = h.status()["clients"]
    assert (c["pid"], c["ns_pid"]) == (6000, 7)
    assert [o["tid"] for o in c["open_phases"]] == [6001]  # the host tid, for the samplers


# ----------------------------------------------------------- spans and ticks
def test_a_span_between_ticks_gets_the_cpu_the_tree_shows(h: Harness) -> None:
    h.send([h.begin(1, "step"), h.begin(2, "fwd", parent=1)])
    h.svc.tick()
    h.proc.run(PID, ticks=50, ctx=4)
    h.svc.tick()
    h.send([h.end(2), h.end(1)])
    assert [o["path"] for o in h.status()["clients"][0]["open_phases"]] == []
    h.proc.run(PID, ticks=5)
    h.svc.tick()
    by_path = {r.path: r for r in h.rows}
    assert set(by_path) == {"step", "step/fwd"} and {r.status for r in h.rows} == {"ok"}
    fwd = by_path["step/fwd"]
    assert fwd.depth == 2 and fwd.boot_id == BOOT_ID
    # 50 ticks ran wholly inside the span (between its two samples): at least that, at most all 55
    from gpuos_hintd.procfs import NS_PER_TICK

    assert 50 * NS_PER_TICK <= fwd.signals["cpu_user_ns"] <= 55 * NS_PER_TICK
    st = h.svc.status()
    assert st.counters.get("spans_closed") == 2 and st.counters.get("ticks") == 3
    phases = {p.path: p for p in st.phases}
    assert phases["step/fwd"].count == 1 and phases["step/fwd"].cpu_s == pytest.approx(
        fwd.signals["cpu_user_ns"] / 1e9, abs=1e-6
    )


def test_an_end_without_a_begin_is_counted_as_orphan(h: Harness) -> None:
    h.send([h.end(99)])
    assert h.svc.counters["orphan_ends"] == 1 and not h.svc.rejected


def test_heartbeat_rebuilds_a_span_the_daemon_did_not_see(h: Harness) -> None:
    t0 = h.now()
    open_span = [5, 0, PID, t0, "decode", "inference.decode", None]
    h.send([[P.HEARTBEAT, h.now(), PID, [open_span], {"dropped": 3, "buffered": 2}]])
    assert h.svc.counters["spans_recovered"] == 1
    (c,) = h.status()["clients"]
    assert [o["path"] for o in c["open_phases"]] == ["decode"] and c["dropped"] == 3 and c["buffered"] == 2
    h.send([[P.HEARTBEAT, h.now(), PID, [open_span], {}]])  # known now: not rebuilt twice
    assert h.svc.counters["spans_recovered"] == 1
    h.send([h.end(5)])
    h.svc.tick()
    (row,) = h.rows
    assert row.recovered and row.start_ns == t0 and row.workload_class == "inference.decode"


def test_a_span_the_client_no_longer_lists_lost_its_end(h: Harness) -> None:
    h.send([h.begin(1, "kept"), h.begin(2, "dropped")])
    kept = [1, 0, PID, h.now(), "kept", None, None]
    h.send([[P.HEARTBEAT, h.now(), PID, [kept], {}]])
    h.svc.tick()  # the sweep runs once per client per tick
    assert h.svc.counters["spans_lost_end"] == 1
    assert [(r.path, r.status) for r in h.rows] == [("dropped", "lost_end")]
    assert [o["path"] for o in h.status()["clients"][0]["open_phases"]] == ["kept"]


def test_a_vanished_process_has_its_spans_abandoned_and_later_batches_refused(h: Harness) -> None:
    h.send([h.begin(1, "step"), h.begin(2, "inner", parent=1), h.end(2)])
    h.svc.tick()
    h.proc.kill(PID)
    assert [k.pid for k in h.svc.reap(force=True)] == [PID]
    st = h.status()
    assert st["clients"] == [] and [(e["pid"], e["reason"], e["abandoned_spans"]) for e in st["exited"]] == [
        (PID, "died", 1)
    ]
    assert st["counters"]["spans_abandoned"] == 1 and st["counters"]["clients_exited"] == 1
    assert sorted((r.path, r.status) for r in h.rows) == [("step", "abandoned"), ("step/inner", "ok")]
    h.send([[P.MARK, h.now(), PID, "late", None]])  # a batch still in flight from the dead process
    assert h.svc.rejected == {"client_exited": 1}


def test_a_zombie_is_gone_too_and_bye_says_exited(h: Harness) -> None:
    h.send([h.begin(1, "step"), [P.BYE, h.now(), PID]])
    h.proc.zombie(PID)
    h.svc.reap(force=True)
    (e,) = h.status()["exited"]
    assert (e["reason"], e["abandoned_spans"]) == ("exited", 1)


# --------------------------------------------------------------- bounds
def test_rate_limit_refuses_a_burst_and_says_why(make: Any) -> None:
    h = make(rate_events_per_s=1.0, rate_burst_events=20)
    assert h.send([[P.MARK, h.now(), PID, f"m{i}", None] for i in range(15)])[-1]["ok"] == 15
    replies = h.send([[P.MARK, h.now(), PID, f"m{i}", None] for i in range(15)])
    assert replies == [{"op": P.REPLY_ACK, "seq": 2, "ok": 0, "bad": 15, "why": "rate_limited"}]
    assert h.svc.rejected == {"rate_limited": 1} and h.svc.counters["events"] == 15


def test_per_uid_client_bound_spares_root(make: Any) -> None:
    h = make(max_clients_per_uid=2)
    for pid in (5001, 5002, 5003):
        h.proc.add(pid, pid, UID)
    for pid in (5001, 5002, 5003):
        h.send([[P.MARK, h.now(), pid, "m", None]], pid=pid, start=pid, peer=(pid, UID, UID), rid=str(pid).encode())
    assert h.svc.rejected == {"too_many_clients_for_uid": 1} and len(h.svc.clients) == 2
    h.proc.add(5100, 5100, 0)
    h.send([[P.MARK, h.now(), 5100, "m", None]], pid=5100, start=5100, peer=(5100, 0, 0), rid=b"root")
    assert len(h.svc.clients) == 3  # root is not bounded per uid
    h.proc.kill(5001)
    h.svc.reap(force=True)  # a reaped client frees its uid's slot
    h.send([[P.MARK, h.now(), 5003, "m", None]], pid=5003, start=5003, peer=(5003, UID, UID), rid=b"5003")
    assert len(h.svc.clients) == 3 and h.svc.rejected == {"too_many_clients_for_uid": 1}


def test_open_span_bounds_per_client_and_per_uid(make: Any) -> None:
    h = make(max_open_spans_per_client=3, max_open_spans_per_uid=4)
    ack = h.send([h.begin(i, f"p{i}") for i in range(1, 6)])[-1]
    assert (ack["ok"], ack["bad"], ack["why"]) == (3, 2, "too_many_open_spans")
    h.proc.add(5001, 5001, UID)
    ack = h.send([h.begin(i, f"q{i}", tid=5001) for i in range(1, 4)], pid=5001, start=5001,
                 peer=(5001, UID, UID), rid=b"b")[-1]  # fmt: skip
    assert (ack["ok"], ack["why"]) == (1, "too_many_open_spans_for_uid")
    assert h.svc.status().open_spans == 4


# ---------------------------------------------------------------- status
def test_status_wire_form_round_trips_and_redacts(h: Harness) -> None:
    h.svc.set_metrics_url("http://127.0.0.1:9/metrics")
    h.send([[P.HELLO, h.now(), PID, {"argv": ["x"]}], h.begin(1, "secret")])
    h.svc.tick()
    st = h.svc.status()
    wire = st.to_dict()
    assert wire["daemon"]["metrics_url"] == "http://127.0.0.1:9/metrics"
    assert Status.from_dict(msgpack.unpackb(msgpack.packb(wire))).to_dict() == wire
    assert list(wire) == ["daemon", "counters", "rejected", "clients", "exited", "quotas", "samplers", "store",
                          "connections", "phases"]  # fmt: skip
    assert st.clients[0].pid_start == START and st.open_spans == 1
    other = h.status(UID + 1)
    (c,) = other["clients"]
    assert c["redacted"] and c["open_count"] == 1 and c["open_phases"] == [] and "cmdline" not in c
    assert b"secret" not in msgpack.packb(other)
    summary = h.svc.status(detail=False)
    assert summary.clients[0].open_phases == () and summary.clients[0].open_count == 1 and not summary.detail


def test_status_from_an_older_or_partial_reply() -> None:
    st = Status.from_dict({"metrics_url": "http://x/metrics", "daemon": {"version": "0.1"}, "clients": [{"pid": 3}]})
    assert st.daemon.metrics_url == "http://x/metrics" and st.daemon.version == "0.1"
    assert st.clients[0].pid == 3 and st.store is None and st.phases == () and st.counters.get("events") == 0
    assert Status.from_dict({}).clients == ()


# ------------------------------------------------------------------ fuzz
peers = st.one_of(
    st.none(),
    st.just(PEER),
    st.tuples(st.sampled_from([PID, 1, 31337, 0, -1]), st.integers(-1, 70000), st.integers(-1, 70000)),
)
frames = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda evs, pid, start: P.encode_batch(pid, start, 1, 0, evs),
        st.lists(st.lists(st.one_of(st.integers(-2, 2**40), st.text(max_size=8), st.none()), max_size=9), max_size=6),
        st.sampled_from([PID, 1, 7]),
        st.sampled_from([START, 1, 0]),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=frames, peer=peers, rid=st.binary(max_size=4))
def test_ingest_takes_any_bytes_from_any_peer(h: Harness, data: bytes, peer: Any, rid: bytes) -> None:
    before_msgs, before_rej = h.svc.counters["messages"], sum(h.svc.rejected.values())
    replies = h.svc.ingest(data, peer, rid)
    assert all(isinstance(r, bytes) for r in replies)
    assert h.svc.counters["messages"] == before_msgs + 1
    # a message either got an answer or was refused and counted, never silently lost
    assert replies or sum(h.svc.rejected.values()) > before_rej
    assert h.svc.rejected["internal_error"] == 0, h.svc.rejected
    # and the service still serves a well-formed client afterwards
    ok = h.svc.ingest(P.encode_batch(PID, START, 1, 0, [[P.MARK, time.monotonic_ns(), PID, "ok", None]]), PEER, b"g")
    assert P.decode_reply(ok[-1])["ok"] == 1
    h.svc.status(0)
    h.svc.status(UID + 1)
