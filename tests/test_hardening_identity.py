"""Identity through pid reuse, and exited clients counted once (issue 8, classes 5 and 7).

HintService driven directly with real processes: children that run and exit,
and the kernel's own start times.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from gpuos_client import protocol as P
from gpuos_hintd import procfs
from gpuos_hintd.config import Config
from gpuos_hintd.service import REAP_GRACE_NS, HintService

PID = os.getpid()
PST = procfs.start_ticks(PID)


@pytest.fixture
def svc(tmp_path):
    s = HintService(Config(state_dir=tmp_path), store=None)
    yield s
    s.worker.close()


def child():
    p = subprocess.Popen(["sleep", "30"])
    time.sleep(0.05)
    return p, procfs.start_ticks(p.pid)


def mark(pid, pst, seq=1, name="m"):
    return P.encode_batch(pid, pst, seq, 0, [[P.MARK, 1, 1, name, None]])


def test_a_first_batch_from_a_process_that_is_gone_is_refused(svc):
    p, pst = child()
    p.kill()
    p.wait()
    # Its batch, queued before it died, is read now: its pid may already be someone else's.
    svc.ingest(mark(p.pid, pst), (p.pid, 0, 0), b"gone")
    assert svc.rejected["peer_gone"] == 1
    assert not svc.clients


def test_a_pid_reused_by_another_uid_cannot_be_spoken_for(svc):
    # The socket peer was uid 65534; the live process with that pid (and start time) is root's.
    svc.ingest(mark(PID, PST), (PID, 65534, 65534), b"attacker")
    assert svc.rejected["uid_mismatch"] == 1
    assert not svc.clients
    svc.ingest(mark(PID, PST), (PID, os.getuid(), os.getgid()), b"owner")
    assert [c.uid for c in svc.clients.values()] == [os.getuid()]


def test_a_connection_speaks_for_one_process_only(svc):
    svc.ingest(mark(PID, PST), (PID, 0, 0), b"conn")
    p, pst = child()
    try:
        svc.ingest(mark(PID, pst, seq=2), (PID, 0, 0), b"conn")  # another start time, same connection
        svc.ingest(mark(p.pid, pst, seq=3), (PID, 0, 0), b"conn")  # another pid
        assert svc.rejected["identity_changed"] == 2
        assert len(svc.clients) == 1
    finally:
        p.kill()
        p.wait()


def test_an_exited_client_is_counted_once_and_a_normal_exit_is_not_died(svc):
    p, pst = child()
    peer = (p.pid, 0, 0)
    svc.ingest(P.encode_batch(p.pid, pst, 1, 0, [[P.MARK, 1, 1, "m", None], [P.BYE, 2, 1]]), peer, b"c")
    p.kill()
    p.wait()
    svc.reap()  # found dead: the grace period starts (its last batches may still be queued)
    svc.ingest(P.encode_batch(p.pid, pst, 2, 3, [[P.MARK, 3, 1, "late", None]]), peer, b"c")  # still accepted
    time.sleep(REAP_GRACE_NS / 1e9 + 0.05)
    for _ in range(3):
        svc.reap()
        svc.ingest(P.encode_batch(p.pid, pst, 3, 3, [[P.MARK, 4, 1, "later", None]]), peer, b"c")
        svc.ingest(P.encode_batch(p.pid, pst, 1, 3, [[P.MARK, 4, 1, "new conn", None]]), peer, b"c2")
    st = svc.status().to_dict()
    assert st["counters"]["clients_exited"] == 1
    assert [e["reason"] for e in st["exited"]] == ["exited"]
    assert st["exited"][0]["dropped"] == 3  # counted once, not once per re-creation
    assert st["counters"]["client_dropped_total"] == 3
    assert svc.rejected["client_exited"] == 6
    assert not svc.clients


def test_status_discloses_other_uids_in_summary_only(svc):
    svc.ingest(
        P.encode_batch(
            PID,
            PST,
            1,
            0,
            [[P.HELLO, 1, 1, {"argv": ["prog", "--token=hunter2"]}], [P.PHASE_BEGIN, 2, 1, 1, 0, "secret", None, None]],
        ),
        (PID, 0, 0),
        b"root",
    )
    full = svc.status(0).to_dict()
    assert full["clients"][0]["cmdline"] and full["clients"][0]["open_phases"]
    other = svc.status(65534).to_dict()
    blob = msgpack.packb(other, default=str)
    c = other["clients"][0]
    assert c["redacted"] and c["pid"] == PID and "cmdline" not in c and "cgroup" not in c and "unit" not in c
    assert b"secret" not in blob and b"hunter2" not in blob
    assert other["phases"] == [] and other["connections"] == {}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a pid namespace needs root and unshare")
def test_a_pid_namespace_client_is_stored_with_host_tids(svc):
    p = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        host = None
        while host is None and time.monotonic() < deadline:
            for task in os.listdir(f"/proc/{p.pid}/task"):
                kids = Path(f"/proc/{p.pid}/task/{task}/children").read_text().split()
                host = int(kids[0]) if kids else None
            time.sleep(0.02)
        assert host is not None
        pst = procfs.start_ticks(host)
        # Inside its namespace the sleeper is pid 1 and its only thread tid 1.
        svc.ingest(P.encode_batch(1, pst, 1, 0, [[P.PHASE_BEGIN, 5, 1, 1, 0, "ns", None, None]]), (host, 0, 0), b"ns")
        c = next(iter(svc.clients.values()))
        assert c.ns_pid == 1 and c.key.pid == host
        assert [s.row.tid for s in svc.correlator.open_spans(c.key)] == [host]
    finally:
        p.kill()
        p.wait()
