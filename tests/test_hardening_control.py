"""The control socket as another user sees it (issue 8 class 9, issue 12 item 3).

A real daemon (run by root) in a world-traversable /tmp dir; requests come from a
forked child that has dropped to uid 65534, so the daemon learns the caller's
uid from SO_PEERCRED (libzmq's Peer-Address), as it would for any local user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
from conftest import start_daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to uid 65534 needs root")

SECRET = "--token=hunter2"


def as_nobody(endpoint: str, op: str, **args) -> dict:
    """One control request from a child running as uid 65534; the raw reply map."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, fresh zmq context after the fork
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            import zmq

            ctx = zmq.Context()
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            s.send(msgpack.packb({"op": op, **args}))
            data = s.recv() if s.poll(15000) else msgpack.packb({"ok": False, "error": "timeout"})
            os.write(w, data)
        except BaseException as exc:
            os.write(w, msgpack.packb({"ok": False, "error": f"child: {type(exc).__name__}: {exc}"}))
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 20):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return msgpack.unpackb(b"".join(chunks), raw=False, strict_map_key=False)


@pytest.fixture
def shared_daemon():
    base = Path(tempfile.mkdtemp(prefix="gpuos-ctl-", dir="/tmp"))
    os.chmod(base, 0o755)
    d = start_daemon(base)
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_another_uid_sees_root_clients_in_summary_and_no_history(shared_daemon):
    d = shared_daemon
    p = d.client(
        f"""
        import sys, gpuos_client as h
        sys.argv.append({SECRET!r})
        with h.phase("done"):
            pass
        with h.phase("private_phase"):
            h.flush(); print("in", flush=True)
            sys.stdin.readline()
        """,
        wait=False,
    )
    try:
        assert p.stdout.readline().strip() == b"in"
        d.wait_for(lambda: any(c["open_phases"] for c in d.status()["clients"]), what="open phase")
        d.wait_for(lambda: d.request("spans"), what="a stored span")
        root_view = d.status()
        assert any(c["cmdline"] for c in root_view["clients"])

        reply = as_nobody(d.control, "status")
        assert reply["ok"], reply
        blob = msgpack.packb(reply)
        assert b"hunter2" not in blob and b"private_phase" not in blob
        mine = [c for c in reply["result"]["clients"] if c["pid"] == p.pid]
        assert mine and mine[0]["redacted"] and mine[0]["open_count"] == 1

        spans = as_nobody(d.control, "spans", limit=100)
        assert spans["ok"] and spans["result"] == []  # root's spans are not theirs
        assert d.request("spans", limit=100)  # root sees them
        phases = as_nobody(d.control, "phases")
        assert phases["ok"] and phases["result"] == []
        export = as_nobody(d.control, "export")
        assert export["ok"] and export["result"]["stats"]["slices"] == 0

        bad = as_nobody(d.control, "spans", limit=2**64 - 1)
        assert not bad["ok"] and "limit" in bad["error"]
        # sync: any user may ask, answered without blocking the loop, bounded
        t0 = time.monotonic()
        synced = as_nobody(d.control, "sync", timeout=1e9)
        assert synced["ok"] and time.monotonic() - t0 < 12
    finally:
        p.stdin.write(b"\n")
        p.stdin.flush()
        p.wait(10)


def test_the_store_of_a_hand_run_daemon_is_private(shared_daemon):
    d = shared_daemon
    d.client("import gpuos_client as h\nwith h.phase('x'):\n    pass\n")
    d.sync()
    for f in d.state_dir.iterdir():
        assert f.stat().st_mode & 0o077 == 0, (f, oct(f.stat().st_mode))
