"""The /proc sampler: CPU, scheduling, faults, I/O and memory of hinting processes.

Process-scope values come from /proc/PID/{stat,io,status}; thread-scope values
(for the threads that opened phases) from /proc/PID/task/TID/{stat,status,
schedstat}.  Raw files, read once each per tick, because psutil would read
the same files several times per tick for these fields; psutil is used where
it adds value (command lines and cgroups for `status`, in clients.py).

Why both scopes: a phase runs on one thread, so its CPU time, context
switches and run-queue delay are that thread's; but GPU programs do work in
helper threads too (data loaders, the CUDA runtime), so the process totals
over the same interval are kept beside them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import ClassVar

from .. import procfs
from ..errors import AccessDenied, ProcessGone
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value

_NS = procfs.NS_PER_TICK
_CTX_KEYS = (b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")


class ProcSampler(Sampler):
    name: ClassVar[str] = "proc"
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
        "rss_bytes": Metric("bytes", "gauge", "process", "resident set size"),
        "threads": Metric("threads", "gauge", "process", "number of threads"),
        "ctx_vol": Metric("switches", "counter", "thread", "voluntary context switches (blocked)"),
        "ctx_invol": Metric("switches", "counter", "thread", "involuntary context switches (preempted)"),
        "thread_cpu_ns": Metric("ns", "counter", "thread", "CPU time of the phase's thread (schedstat)"),
        "run_delay_ns": Metric("ns", "counter", "thread", "time runnable but waiting for a CPU"),
        "thread_minflt": Metric("faults", "counter", "thread", "minor faults of the phase's thread"),
        "thread_majflt": Metric("faults", "counter", "thread", "major faults of the phase's thread"),
    }

    def __init__(self, procfs_root: Path = procfs.PROCFS) -> None:
        self.procfs = procfs_root
        self.denied = 0
        self.gone = 0

    def available(self) -> tuple[bool, str]:
        if not (self.procfs / "self" / "stat").exists():
            return False, f"{self.procfs} is not a procfs (no self/stat)"
        return True, ""

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        out: dict[ProcKey, ProcSample] = {}
        for target in targets:
            try:
                out[target.key] = self._one(target)
            except ProcessGone:
                self.gone += 1
            except AccessDenied:
                self.denied += 1
        return out

    def _one(self, target: Target) -> ProcSample:
        pid, root = target.key.pid, self.procfs
        stat = procfs.read_stat(root, pid)
        if int(stat["starttime"]) != target.key.start:
            raise ProcessGone(pid, "pid reused")
        values: dict[str, Value] = {
            "cpu_user_ns": int(stat["utime"]) * _NS,
            "cpu_sys_ns": int(stat["stime"]) * _NS,
            "minflt": int(stat["minflt"]),
            "majflt": int(stat["majflt"]),
            "rss_bytes": int(stat["rss"]) * procfs.PAGE_SIZE,
            "threads": int(stat["num_threads"]),
        }
        try:
            io = procfs.read_kv(root, pid, "io")
            values.update(
                io_syscr=io.get("syscr"),
                io_syscw=io.get("syscw"),
                io_rchar_bytes=io.get("rchar"),
                io_wchar_bytes=io.get("wchar"),
                io_read_bytes=io.get("read_bytes"),
                io_write_bytes=io.get("write_bytes"),
            )
        except AccessDenied:  # /proc/PID/io needs ptrace access: another user's process
            self.denied += 1
        threads: dict[int, dict[str, Value]] = {}
        for tid in target.tids:
            try:
                threads[tid] = self._thread(pid, tid)
            except (ProcessGone, AccessDenied):
                continue  # the thread ended; the process goes on
        return ProcSample(values, threads)

    def _thread(self, pid: int, tid: int) -> dict[str, Value]:
        root = self.procfs
        stat = procfs.read_stat(root, pid, tid)
        status = procfs.read_kv(root, pid, "status", tid, keys=_CTX_KEYS)
        run_ns, delay_ns, _slices = procfs.read_schedstat(root, pid, tid)
        return {
            "ctx_vol": status.get("voluntary_ctxt_switches"),
            "ctx_invol": status.get("nonvoluntary_ctxt_switches"),
            "thread_cpu_ns": run_ns or (int(stat["utime"]) + int(stat["stime"])) * _NS,
            "run_delay_ns": delay_ns,
            "thread_minflt": int(stat["minflt"]),
            "thread_majflt": int(stat["majflt"]),
        }

    def health(self) -> dict[str, int]:
        return {"gone": self.gone, "denied": self.denied}
