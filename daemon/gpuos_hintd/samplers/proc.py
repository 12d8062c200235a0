"""The /proc sampler: CPU, scheduling, faults, I/O and memory of hinting processes.

Process-scope values come from /proc/PID/{stat,io}; thread-scope values (for
the threads that opened phases) from /proc/PID/task/TID/{schedstat,stat,
status}.  Raw files, because psutil would read the same files several times
per tick for these fields; command lines and cgroups for `status` are read once
per client, also raw (clients.py), so the daemon does not need psutil at all.

Why both scopes: a phase runs on one thread, so its CPU time, context
switches and run-queue delay are that thread's; but GPU programs do work in
helper threads too (data loaders, the CUDA runtime), so the process totals
over the same interval are kept beside them.

What one tick costs, and why it is cheap (issue 10, "footprint"):

* **Held file descriptors.**  On the real /proc every file is opened once per
  process (or thread) and re-read with ``pread(fd, 0)``: the kernel regenerates
  the text on each read from offset 0, and the path walk through /proc, which
  was half of every read, goes away (measured: stat 9.5 -> 4.4 us, schedstat
  5.4 -> 0.9 us).  An fd names the task it was opened for, so a reused pid can
  never be read through it: the kernel answers ESRCH once the task is gone, and
  the entry is dropped.  At most ``max_fds`` are held (beyond, files are opened
  per read as before); fds of processes not sampled for ``idle_close_s`` are
  closed.  A recorded tree (tests) is read with open/read/close, because
  a test replaces its files.
* **Exact skips, no slower rates.**  Every metric here is still read for every
  tick: the counters because span deltas are interpolated between the two
  samples around each span edge (correlate.py), and the two gauges
  (``rss_bytes``, ``threads``) come from the ``stat`` read anyway.  What is
  skipped is only a read whose answer is known: a thread's ``status`` (context
  switches) when its schedstat run time and timeslice count have not moved
  since the last read (a thread switched in or out has run, so both move), and
  a thread's ``stat`` (faults) when the whole process's fault counts have not
  moved (they are the sum over its threads).  An idle thread then costs one
  schedstat read per tick instead of three reads.
* **Minimal per-sample Python**: stat is split once and indexed; no per-field
  dicts or path joins per read.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import ClassVar

from .. import procfs
from ..errors import AccessDenied, ProcessGone
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value

_NS = procfs.NS_PER_TICK
_PAGE = procfs.PAGE_SIZE
_CTX_KEYS = (b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")
_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC
# Positions in the fields after "(comm) " of a stat line (man 5 proc, field number - 3).
_MINFLT, _MAJFLT, _UTIME, _STIME, _THREADS, _START, _RSS = 7, 9, 11, 12, 17, 19, 21


def _stat_fields(data: bytes) -> list[bytes]:
    """The fields after the comm (which may hold ')' and spaces: split at the last ')')."""
    return data[data.rfind(b")") + 2 :].split()


def _ctx(data: bytes) -> tuple[int | None, int | None]:
    """(voluntary, nonvoluntary) context switches from a status text; None where missing."""
    out: list[int | None] = []
    for key in _CTX_KEYS:
        i = data.find(b"\n" + key + b":")  # the newline: "voluntary_..." is inside "nonvoluntary_..."
        if i < 0:
            out.append(None)
            continue
        j = data.find(b"\n", i + 1)
        value = data[i + len(key) + 2 : j if j >= 0 else None].strip()
        out.append(int(value) if value.isdigit() else None)
    return out[0], out[1]


class _Files:
    """Reads /proc files, through held fds on the real /proc, else open/read/close.

    OS errors become ProcessGone / AccessDenied (the edge, as in procfs.py); a held fd that
    fails is closed and forgotten, so a vanished task leaves nothing behind.
    """

    def __init__(self, root: Path, reuse: bool, max_fds: int) -> None:
        self.root = str(root)
        self.reuse = reuse
        self.max_fds = max_fds
        self.fds: dict[str, int] = {}
        self.opened = 0  # open() calls made (held or not), for health and tests

    def read(self, path: str, pid: int) -> bytes:
        fds = self.fds
        try:
            fd = fds.get(path)
            if fd is not None:
                try:
                    return os.pread(fd, 65536, 0)
                except OSError:
                    # The task it was opened for is gone (ESRCH).  Open the path afresh: it fails
                    # if nothing lives there, or reads a new process that got the pid (which
                    # the caller's start-time check then tells apart).
                    del fds[path]
                    os.close(fd)
            fd = os.open(path, _O_FLAGS)
            self.opened += 1
            if self.reuse and len(fds) < self.max_fds:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    os.close(fd)
                    raise
                fds[path] = fd
                return data
            try:
                return os.read(fd, 65536)
            finally:
                os.close(fd)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise ProcessGone(pid) from exc
        except PermissionError as exc:
            raise AccessDenied(pid) from exc
        except OSError as exc:  # ESRCH on a held fd of a task that exited
            raise ProcessGone(pid, str(exc)) from exc

    def drop(self, prefix: str) -> None:
        """Close every held fd under prefix (a process's or a thread's directory + '/')."""
        for path in [p for p in self.fds if p.startswith(prefix)]:
            os.close(self.fds.pop(path))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class _ThreadMemo:
    """A thread's last read values and what they were read against (for the exact skips)."""

    __slots__ = ("ctx_invol", "ctx_vol", "flt_of_proc", "majflt", "minflt", "sched", "seen_ns", "ticks_cpu")

    def __init__(self) -> None:
        self.seen_ns = 0
        self.sched: tuple[int, int] | None = None  # (run ns, timeslices) when status was read
        self.ctx_vol: int | None = None
        self.ctx_invol: int | None = None
        self.flt_of_proc: tuple[int, int] | None = None  # process (minflt, majflt) when stat was read
        self.minflt = 0
        self.majflt = 0
        self.ticks_cpu = 0  # utime + stime of the thread, clock ticks (fallback without schedstat)


class ProcSampler(Sampler):
    name: ClassVar[str] = "proc"
    #: Every ProcSample (and its dicts) is new per call: sampling.sample_all may merge into it.
    fresh_results: ClassVar[bool] = True
    metrics: ClassVar[Mapping[str, Metric]] = {
        "cpu_user_ns": Metric("ns", "counter", "process", "user CPU time of all threads"),
        "cpu_sys_ns": Metric("ns", "counter", "process", "system CPU time of all threads"),
        "minflt": Metric("faults", "counter", "process", "minor page faults"),
        "majflt": Metric("faults", "counter", "process", "major page faults"),
        "io_syscr": Metric("calls", "counter", "process", "read-like syscalls"),
        "io_syscw": Metric("calls", "counter", "process", "write-like syscalls"),
        "io_rchar_bytes": Metric("bytes", "counter", "process", "bytes read (incl. page cache)"),
        "io_wchar_bytes": Metric("bytes", "counter", "process", "bytes written (incl. page cache)"),
        "io_read_bytes": Metric("bytes", "counter", "process", "bytes read from storage"),
        "io_write_bytes": Metric("bytes", "counter", "process", "bytes written to storage"),
        "rss_bytes": Metric("bytes", "gauge", "process", "resident set size (read every tick, from stat)"),
        "threads": Metric("threads", "gauge", "process", "number of threads (read every tick, from stat)"),
        "ctx_vol": Metric("switches", "counter", "thread", "voluntary context switches (blocked)"),
        "ctx_invol": Metric("switches", "counter", "thread", "involuntary context switches (preempted)"),
        "thread_cpu_ns": Metric("ns", "counter", "thread", "CPU time of the phase's thread (schedstat)"),
        "run_delay_ns": Metric("ns", "counter", "thread", "time runnable but waiting for a CPU"),
        "thread_minflt": Metric("faults", "counter", "thread", "minor faults of the phase's thread"),
        "thread_majflt": Metric("faults", "counter", "thread", "major faults of the phase's thread"),
    }

    def __init__(
        self,
        procfs_root: Path = procfs.PROCFS,
        reuse_fds: bool | None = None,
        max_fds: int | None = None,
        idle_close_s: float = 5.0,
    ) -> None:
        """reuse_fds: hold fds and pread them (default: only on the real /proc, see the module doc).

        max_fds: at most this many held (default: 1024, or an eighth of the soft RLIMIT_NOFILE when
        that is smaller, so the hint socket's connections keep their share of the fd limit)."""
        if max_fds is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_fds = 1024 if soft == resource.RLIM_INFINITY else max(0, min(1024, soft // 8))
        self.procfs = procfs_root
        self._root = str(procfs_root)
        reuse = str(procfs_root) == "/proc" if reuse_fds is None else reuse_fds
        self.files = _Files(procfs_root, reuse, max_fds)
        self.idle_close_ns = int(idle_close_s * 1e9)
        self.denied = 0
        self.gone = 0
        self.skipped_reads = 0
        self._threads: dict[tuple[ProcKey, int], _ThreadMemo] = {}
        self._seen: dict[ProcKey, int] = {}  # last sample time per process, for closing idle fds
        self._next_sweep_ns = 0

    def available(self) -> tuple[bool, str]:
        if not (self.procfs / "self" / "stat").exists():
            return False, f"{self.procfs} is not a procfs (no self/stat)"
        return True, ""

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        out: dict[ProcKey, ProcSample] = {}
        seen = self._seen
        for target in targets:
            key = target.key
            try:
                out[key] = self._one(target, now_ns)
                seen[key] = now_ns
            except ProcessGone:
                self.gone += 1
                self._forget(key)
            except AccessDenied:
                self.denied += 1
        if now_ns >= self._next_sweep_ns:
            self._next_sweep_ns = now_ns + 1_000_000_000
            for key in [k for k, t in seen.items() if now_ns - t > self.idle_close_ns]:
                self._forget(key)
            for (key, tid), memo in list(self._threads.items()):
                if now_ns - memo.seen_ns > self.idle_close_ns:  # a thread no longer hinted
                    del self._threads[(key, tid)]
                    self.files.drop(f"{self._root}/{key.pid}/task/{tid}/")
        return out

    def _forget(self, key: ProcKey) -> None:
        """Drop what is held for a process: its fds, its threads' memos."""
        self._seen.pop(key, None)
        self.files.drop(f"{self._root}/{key.pid}/")
        for k in [k for k in self._threads if k[0] == key]:
            del self._threads[k]

    def _one(self, target: Target, now_ns: int) -> ProcSample:
        key = target.key
        pid = key.pid
        base = f"{self._root}/{pid}"
        read = self.files.read
        f = _stat_fields(read(base + "/stat", pid))
        if int(f[_START]) != key.start:
            raise ProcessGone(pid, "pid reused")
        minflt, majflt = int(f[_MINFLT]), int(f[_MAJFLT])
        values: dict[str, Value] = {
            "cpu_user_ns": int(f[_UTIME]) * _NS,
            "cpu_sys_ns": int(f[_STIME]) * _NS,
            "minflt": minflt,
            "majflt": majflt,
            "rss_bytes": int(f[_RSS]) * _PAGE,
            "threads": int(f[_THREADS]),
        }
        try:
            io = read(base + "/io", pid)
        except AccessDenied:  # /proc/PID/io needs ptrace access: another user's process
            self.denied += 1
        else:
            values.update(_IO_NONE)  # a field this kernel lacks stays None (never a made-up 0)
            for line in io.splitlines():
                k, _, v = line.partition(b": ")
                name = _IO_NAMES.get(k)
                if name is not None and v.isdigit():
                    values[name] = int(v)
        threads: dict[int, dict[str, Value]] = {}
        if target.tids:
            flt = (minflt, majflt)
            for tid in target.tids:
                try:
                    threads[tid] = self._thread(key, f"{base}/task/{tid}", tid, flt, now_ns)
                except (ProcessGone, AccessDenied):
                    self.files.drop(f"{base}/task/{tid}/")
                    self._threads.pop((key, tid), None)
                    continue  # the thread ended; the process goes on
        return ProcSample(values, threads)

    def _thread(self, key: ProcKey, base: str, tid: int, proc_flt: tuple[int, int], now_ns: int) -> dict[str, Value]:
        read = self.files.read
        pid = key.pid
        memo = self._threads.get((key, tid))
        if memo is None:
            memo = self._threads[(key, tid)] = _ThreadMemo()
        memo.seen_ns = now_ns
        parts = read(base + "/schedstat", pid).split()
        if len(parts) >= 3:
            run_ns, delay_ns, slices = int(parts[0]), int(parts[1]), int(parts[2])
        else:
            run_ns = delay_ns = slices = 0
        if memo.flt_of_proc != proc_flt or not run_ns:
            f = _stat_fields(read(base + "/stat", pid))
            memo.minflt, memo.majflt = int(f[_MINFLT]), int(f[_MAJFLT])
            memo.ticks_cpu = int(f[_UTIME]) + int(f[_STIME])
            memo.flt_of_proc = proc_flt
        else:
            self.skipped_reads += 1
        sched = (run_ns, slices)
        if memo.sched != sched or not run_ns:
            memo.ctx_vol, memo.ctx_invol = _ctx(read(base + "/status", pid))
            memo.sched = sched
        else:
            self.skipped_reads += 1
        return {
            "ctx_vol": memo.ctx_vol,
            "ctx_invol": memo.ctx_invol,
            "thread_cpu_ns": run_ns or memo.ticks_cpu * _NS,
            "run_delay_ns": delay_ns,
            "thread_minflt": memo.minflt,
            "thread_majflt": memo.majflt,
        }

    def health(self) -> dict[str, int]:
        return {
            "gone": self.gone,
            "denied": self.denied,
            "fds_held": len(self.files.fds),
            "files_opened": self.files.opened,
            "reads_skipped": self.skipped_reads,
        }

    def close(self) -> None:
        self.files.close()
        self._threads.clear()
        self._seen.clear()


_IO_NAMES = {
    b"syscr": "io_syscr",
    b"syscw": "io_syscw",
    b"rchar": "io_rchar_bytes",
    b"wchar": "io_wchar_bytes",
    b"read_bytes": "io_read_bytes",
    b"write_bytes": "io_write_bytes",
}
_IO_NONE: dict[str, Value] = dict.fromkeys(_IO_NAMES.values())
