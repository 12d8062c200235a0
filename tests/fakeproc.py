"""A fake /proc tree under a tmp dir, in the formats the daemon's readers parse.

It holds what procfs.py, clients.py (verify_peer, describe_process, is_alive,
ns_to_host_tid) and samplers/proc.py read: ``PID/stat``, ``status`` (Uid,
NSpid, context switches), ``cmdline``, ``cgroup``, ``io``, ``task/TID/{stat,
status,schedstat}``, plus ``self/stat`` (the proc sampler's availability check)
and ``sys/kernel/random/boot_id``.  Tests change it between calls: CPU time
advances, a process exits (its directory goes) or turns zombie.

The line layouts follow man 5 proc; tests/data/ has no recorded tree because
these files hold nothing a recording would add (the parsers are tested on the
real /proc elsewhere).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

BOOT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@dataclasses.dataclass
class FakeThread:
    tid: int
    utime: int = 0  # clock ticks
    stime: int = 0
    run_ns: int = 0  # schedstat
    delay_ns: int = 0
    slices: int = 0
    ctx_vol: int = 0
    ctx_invol: int = 0
    minflt: int = 0
    majflt: int = 0
    ns_tid: int | None = None  # the tid inside the process's pid namespace


@dataclasses.dataclass
class FakeProcess:
    pid: int
    start: int  # starttime, clock ticks since boot
    uid: int = 1000
    comm: str = "python3"
    cmdline: tuple[str, ...] = ("python3", "train.py")
    cgroup: str = "0::/user.slice/user-1000.slice/session-1.scope"
    state: str = "S"
    ns_pid: int | None = None
    rss_pages: int = 2560
    threads: dict[int, FakeThread] = dataclasses.field(default_factory=dict)


def _stat_line(pid: int, comm: str, state: str, minflt: int, majflt: int, utime: int, stime: int, nthreads: int,
               start: int, rss: int) -> str:  # fmt: skip
    # Fields 4.. of man 5 proc: ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime
    # vsize rss, then 31 more (processor is the 39th field).
    head = [1, pid, pid, 0, -1, 4194304, minflt, 0, majflt, 0, utime, stime, 0, 0, 20, 0, nthreads, 0, start,
            123456789, rss]  # fmt: skip
    tail = [0] * 31
    return f"{pid} ({comm}) {state} " + " ".join(str(x) for x in head + tail) + "\n"


class FakeProc:
    """Builds and edits the tree; ``root`` is what the daemon is given as its procfs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, FakeProcess] = {}
        (root / "sys/kernel/random").mkdir(parents=True, exist_ok=True)
        (root / "sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
        self.add(1, start=1, uid=0, comm="systemd", cmdline=("/sbin/init",), cgroup="0::/init.scope")
        (root / "self").mkdir(exist_ok=True)
        (root / "self" / "stat").write_text(_stat_line(1, "systemd", "S", 0, 0, 0, 0, 1, 1, 0))

    def add(self, pid: int, start: int, uid: int = 1000, tids: tuple[int, ...] = (), **kw: object) -> FakeProcess:
        p = FakeProcess(pid, start, uid, **kw)  # type: ignore[arg-type]
        for tid in (pid, *tids):
            p.threads[tid] = FakeThread(tid)
        self.procs[pid] = p
        self.write(p)
        return p

    def thread(self, pid: int, tid: int) -> FakeThread:
        return self.procs[pid].threads[tid]

    def run(self, pid: int, tid: int | None = None, ticks: int = 10, ctx: int = 1) -> None:
        """The thread (default: the main one) runs ``ticks`` clock ticks of user time."""
        p = self.procs[pid]
        t = p.threads[tid or pid]
        t.utime += ticks
        t.run_ns += ticks * 10_000_000
        t.slices += 1
        t.ctx_vol += ctx
        self.write(p)

    def kill(self, pid: int) -> None:
        """The process exits and its parent reaps it: the directory goes."""
        self.procs.pop(pid)
        shutil.rmtree(self.root / str(pid))

    def zombie(self, pid: int) -> None:
        p = self.procs[pid]
        p.state = "Z"
        p.cmdline = ()
        self.write(p)

    def write(self, p: FakeProcess) -> None:
        d = self.root / str(p.pid)
        (d / "task").mkdir(parents=True, exist_ok=True)
        ut = sum(t.utime for t in p.threads.values())
        st = sum(t.stime for t in p.threads.values())
        mn = sum(t.minflt for t in p.threads.values())
        mj = sum(t.majflt for t in p.threads.values())
        n = len(p.threads)
        (d / "stat").write_text(_stat_line(p.pid, p.comm, p.state, mn, mj, ut, st, n, p.start, p.rss_pages))
        ns = f"NSpid:\t{p.pid}\t{p.ns_pid}\n" if p.ns_pid is not None else f"NSpid:\t{p.pid}\n"
        (d / "status").write_text(self._status(p.comm, p.state, p.uid, ns, *self._ctx(p)))
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in p.cmdline))
        (d / "cgroup").write_text(p.cgroup + "\n")
        (d / "io").write_text(
            f"rchar: {ut * 1000}\nwchar: 0\nsyscr: {ut}\nsyscw: 0\nread_bytes: 0\nwrite_bytes: 0\n"
            "cancelled_write_bytes: 0\n"
        )
        for t in p.threads.values():
            td = d / "task" / str(t.tid)
            td.mkdir(exist_ok=True)
            stat = _stat_line(t.tid, p.comm, p.state, t.minflt, t.majflt, t.utime, t.stime, n, p.start, p.rss_pages)
            (td / "stat").write_text(stat)
            tns = f"NSpid:\t{t.tid}\t{t.ns_tid}\n" if t.ns_tid is not None else f"NSpid:\t{t.tid}\n"
            (td / "status").write_text(self._status(p.comm, p.state, p.uid, tns, t.ctx_vol, t.ctx_invol))
            (td / "schedstat").write_text(f"{t.run_ns} {t.delay_ns} {t.slices}\n")

    @staticmethod
    def _ctx(p: FakeProcess) -> tuple[int, int]:
        return sum(t.ctx_vol for t in p.threads.values()), sum(t.ctx_invol for t in p.threads.values())

    @staticmethod
    def _status(comm: str, state: str, uid: int, nspid: str, vol: int, invol: int) -> str:
        return (
            f"Name:\t{comm}\nUmask:\t0022\nState:\t{state} (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t1\nPPid:\t1\n"
            f"TracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            f"FDSize:\t64\n{nspid}VmRSS:\t10240 kB\nThreads:\t1\n"
            f"voluntary_ctxt_switches:\t{vol}\nnonvoluntary_ctxt_switches:\t{invol}\n"
        )
