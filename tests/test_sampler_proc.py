"""The /proc sampler: same values as a plain read of /proc, held fds that never outlive
their task or read a reused pid, and exact skips that never return a stale counter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpuos_hintd import procfs
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.samplers.proc import ProcSampler

# A child that burns CPU and touches fresh pages on demand: "b" on stdin = busy 50 ms + 64 pages.
CHILD = r"""
import mmap, sys, time
print("ready", flush=True)
for line in sys.stdin:
    if line.startswith("b"):
        m = mmap.mmap(-1, 64 * 4096)
        for i in range(0, 64 * 4096, 4096):
            m[i] = 1
        m.close()
        t = time.perf_counter() + 0.05
        while time.perf_counter() < t:
            pass
    print("ok", flush=True)
"""


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    wait_blocked(p.pid)
    yield p
    p.kill()
    p.wait()


def poke(p: subprocess.Popen[str], cmd: str = "b") -> None:
    p.stdin.write(cmd + "\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "ok"
    wait_blocked(p.pid)


def wait_blocked(pid: int) -> None:
    """Until the child sleeps on stdin again (it may still run for a moment after answering)."""
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        state = procfs.read_stat(procfs.PROCFS, pid, pid)["state"]
        sched = procfs.read_schedstat(procfs.PROCFS, pid, pid)
        if state == "S" and sched == last:
            return
        last = sched
        time.sleep(0.01)
    raise AssertionError("child did not block")


def target(pid: int) -> Target:
    return Target(ProcKey(pid, procfs.start_ticks(pid)), frozenset({pid}))


def plain(pid: int) -> dict[str, int]:
    """The same figures, read the slow obvious way."""
    st = procfs.read_stat(procfs.PROCFS, pid, pid)
    status = procfs.read_kv(procfs.PROCFS, pid, "status", pid)
    run_ns, delay_ns, _ = procfs.read_schedstat(procfs.PROCFS, pid, pid)
    pst = procfs.read_stat(procfs.PROCFS, pid)
    return {
        "thread_minflt": int(st["minflt"]),
        "ctx_vol": status["voluntary_ctxt_switches"],
        "ctx_invol": status["nonvoluntary_ctxt_switches"],
        "thread_cpu_ns": run_ns,
        "run_delay_ns": delay_ns,
        "minflt": int(pst["minflt"]),
        "threads": int(pst["num_threads"]),
    }


def test_values_match_a_plain_read_across_idle_and_busy_ticks(child):
    s = ProcSampler()
    assert s.files.reuse  # the real /proc: held fds
    t = target(child.pid)
    for step in range(6):
        if step % 2:
            poke(child)  # busy: CPU, faults and context switches move
        got = s.sample([t], time.monotonic_ns())[t.key]
        want = plain(child.pid)  # the child is blocked on stdin now: nothing moves in between
        th = got.threads[child.pid]
        for k in ("thread_minflt", "ctx_vol", "ctx_invol", "thread_cpu_ns", "run_delay_ns"):
            assert th[k] == want[k], (step, k)
        assert got.values["minflt"] == want["minflt"] and got.values["threads"] == want["threads"]
        assert got.values["rss_bytes"] > 0 and got.values["cpu_user_ns"] >= 0
        assert set(got.values) >= {"io_syscr", "io_rchar_bytes"}
    h = s.health()
    assert h["fds_held"] == 5  # stat, io, task stat, status, schedstat
    assert h["reads_skipped"] > 0  # the idle ticks (0, 2, 4 after a read) skipped status/stat
    opened = h["files_opened"]
    s.sample([t], time.monotonic_ns())
    assert s.health()["files_opened"] == opened  # reused, not reopened
    s.close()
    assert not s.files.fds


def test_skip_never_hides_a_change(child):
    """Read, make the thread run and fault, read again: the counters move at once."""
    s = ProcSampler()
    t = target(child.pid)
    a = s.sample([t], time.monotonic_ns())[t.key].threads[child.pid]
    a2 = s.sample([t], time.monotonic_ns())[t.key].threads[child.pid]
    assert a2 == {**a, "run_delay_ns": a2["run_delay_ns"]}  # idle: same counters
    poke(child)
    b = s.sample([t], time.monotonic_ns())[t.key].threads[child.pid]
    assert b["thread_cpu_ns"] > a["thread_cpu_ns"]
    assert b["thread_minflt"] >= a["thread_minflt"] + 64
    assert b["ctx_vol"] > a["ctx_vol"]  # it blocked on stdin again after the work


def test_gone_process_releases_its_fds_and_reused_pid_is_refused(child):
    s = ProcSampler()
    t = target(child.pid)
    assert t.key in s.sample([t], time.monotonic_ns())
    assert s.files.fds
    child.kill()
    child.wait()
    assert s.sample([t], time.monotonic_ns()) == {}
    assert s.gone == 1 and not s.files.fds and not s._threads
    # A live pid with the wrong start time (what a reused pid looks like) is refused too.
    me = Target(ProcKey(os.getpid(), procfs.start_ticks(os.getpid()) + 1), frozenset())
    assert s.sample([me], time.monotonic_ns()) == {}
    assert s.gone == 2


def test_fds_of_processes_no_longer_sampled_are_closed(child):
    s = ProcSampler(idle_close_s=0.0)
    t = target(child.pid)
    now = time.monotonic_ns()
    s.sample([t], now)
    assert s.files.fds
    s.sample([], now + 2_000_000_000)  # not a target any more, past the idle limit and sweep period
    assert not s.files.fds and not s._threads


def test_fd_limit_falls_back_to_open_read_close(child):
    s = ProcSampler(max_fds=2)
    t = target(child.pid)
    for _ in range(3):
        got = s.sample([t], time.monotonic_ns())[t.key]
        assert got.threads[child.pid]["thread_cpu_ns"] > 0
    assert len(s.files.fds) == 2


def fake_proc(root: Path, pid: int, start: int, utime: int, status_ctx: tuple[int, int]) -> None:
    d = root / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / "self").mkdir(exist_ok=True)
    (root / "self" / "stat").write_text("1 (x) R\n")
    fields = ["S", *["0"] * 40]
    fields[7], fields[11], fields[12], fields[17], fields[19], fields[21] = "3", str(utime), "1", "2", str(start), "10"
    line = f"{pid} (we ird) name)) " + " ".join(fields) + "\n"
    (d / "stat").write_text(line)
    (d / "task" / str(pid) / "stat").write_text(line)
    (d / "io").write_text("rchar: 5\nwchar: 6\nsyscr: 7\nsyscw: 8\nread_bytes: 9\nwrite_bytes: 10\n")
    (d / "task" / str(pid) / "status").write_text(
        f"Name:\tx\nvoluntary_ctxt_switches:\t{status_ctx[0]}\nnonvoluntary_ctxt_switches:\t{status_ctx[1]}\n"
    )
    (d / "task" / str(pid) / "schedstat").write_text("0 0 0\n")  # a kernel without schedstat


def test_recorded_tree_without_schedstat(tmp_path):
    """A tree where files are rewritten between ticks (no held fds) and schedstat is zeros:
    thread CPU falls back to stat's ticks and nothing is skipped."""
    fake_proc(tmp_path, 4242, 99, utime=5, status_ctx=(11, 2))
    s = ProcSampler(tmp_path)
    assert not s.files.reuse
    t = Target(ProcKey(4242, 99), frozenset({4242}))
    a = s.sample([t], 1)[t.key]
    assert a.values["cpu_user_ns"] == 5 * procfs.NS_PER_TICK and a.values["minflt"] == 3
    assert a.values["io_syscr"] == 7 and a.values["io_write_bytes"] == 10
    assert a.values["rss_bytes"] == 10 * procfs.PAGE_SIZE and a.values["threads"] == 2
    assert a.threads[4242] == {
        "ctx_vol": 11,
        "ctx_invol": 2,
        "thread_cpu_ns": 6 * procfs.NS_PER_TICK,
        "run_delay_ns": 0,
        "thread_minflt": 3,
        "thread_majflt": 0,
    }
    fake_proc(tmp_path, 4242, 99, utime=8, status_ctx=(12, 2))
    b = s.sample([t], 2)[t.key]
    assert b.threads[4242]["ctx_vol"] == 12 and b.threads[4242]["thread_cpu_ns"] == 9 * procfs.NS_PER_TICK
    (tmp_path / "4242" / "io").unlink()
    (tmp_path / "4242" / "io").mkdir()  # unreadable as a file: reads fail as "gone"
    assert s.sample([t], 3) == {}
