"""What a GPU process's threads are doing, sampled from /proc without privilege.

At each tick, for each thread of each target, /proc/PID/task/TID/syscall says
whether the thread runs or which syscall it is blocked in (with its arguments,
so for ioctl the fd, which /proc/PID/fd/FD resolves to a GPU device or not).
That snapshot answers "how many threads are submitting to the driver, waiting
for each other, doing I/O, running" - the OS-side view of submission and
synchronisation that DESIGN section 5 asks for - with no eBPF, no root and no
help from the process.  It is a sample, not a count: a syscall shorter than
the tick is seen in proportion to the time spent in it, which is what a gauge
averaged over a span wants.  The eBPF backend (syscalls_ebpf.py) counts calls.

Reading another process's `syscall` (and `wchan`, and `fd/` links) needs
ptrace-read access: the same uid or CAP_SYS_PTRACE.  Without it the sampler
still gives threads_running and threads_total from `stat`, and None for the
rest (STYLE section 7: forbidden is None, never a made-up 0).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from .. import procfs as pfs
from ..errors import AccessDenied, ProcessGone
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value
from .syscall_table import SyscallTable, table_for

ThreadClass = Literal["running", "gpu_ioctl", "sync_wait", "io", "other", "idle"]
CLASSES: tuple[ThreadClass, ...] = ("running", "gpu_ioctl", "sync_wait", "io", "other", "idle")

# Device nodes GPU user-space drivers submit work through: NVIDIA (nvidia0..N,
# nvidiactl, nvidia-uvm), DRM (amdgpu, i915/xe, nouveau, nvidia-drm render
# nodes), AMD's compute node, and the kernel's accel subsystem.
DEFAULT_GPU_PATHS: tuple[str, ...] = ("/dev/nvidia", "/dev/dri/", "/dev/kfd", "/dev/accel/")
# Character-device driver names in /proc/devices with the same meaning: they
# catch a GPU node reached through another path (a container's bind mount).
_GPU_DRIVER_NAMES = ("nvidia", "drm", "kfd", "accel")

# wchan symbols, for kernels without /proc/PID/task/TID/syscall
# (no CONFIG_HAVE_ARCH_TRACEHOOK): a coarser fallback of the same classes.
_WCHAN_SYNC = ("futex", "poll", "select", "epoll", "nanosleep", "hrtimer")
_WCHAN_IO = ("pipe_read", "pipe_write", "wait_on_page", "folio_wait", "io_schedule", "sk_wait", "_recvmsg")


class SyscallField(NamedTuple):
    """One parsed /proc/.../syscall: running, or the syscall number (-1: none) and arg0."""

    running: bool
    nr: int
    arg0: int | None


def parse_syscall(data: bytes) -> SyscallField:
    """Parse the `syscall` file: "running", "-1 SP PC", or "NR ARG0..ARG5 SP PC" (hex args).

    Raises ValueError on anything else, so a format change is noticed, not misread.
    """
    parts = data.split()
    if not parts:
        raise ValueError("empty syscall file")
    if parts[0] == b"running":
        return SyscallField(True, -1, None)
    nr = int(parts[0])
    if nr < 0 or len(parts) < 2:
        return SyscallField(False, -1, None)
    return SyscallField(False, nr, int(parts[1], 16))


@pfs.wrap_os_errors
def _read_task(root: str, pid: int, tid: int, name: str) -> bytes:
    """One read of /proc/PID/task/TID/NAME; OS errors become ProcessGone/AccessDenied."""
    fd = os.open(f"{root}/{pid}/task/{tid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _thread_state(root: str, pid: int, tid: int) -> str:
    """The one-letter scheduler state from task/TID/stat (readable without ptrace)."""
    data = _read_task(root, pid, tid, "stat")
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode()


def gpu_majors(procfs: Path = pfs.PROCFS) -> frozenset[int]:
    """Majors of GPU character-device drivers, from /proc/devices (empty if unreadable)."""
    majors: set[int] = set()
    try:
        text = (procfs / "devices").read_text()
    except OSError:
        return frozenset()
    in_char = False
    for line in text.splitlines():
        if line.endswith("devices:"):
            in_char = line.startswith("Character")
            continue
        num, _, name = line.strip().partition(" ")
        if in_char and num.isdigit() and name.startswith(_GPU_DRIVER_NAMES):
            majors.add(int(num))
    return frozenset(majors)


class FdClassifier:
    """Decides whether a process's fd is a GPU device node, cached per (pid, fd).

    The link is read every time (one readlink: an fd may be closed and reused
    for another file between ticks), but the decision is cached against the link
    text, so a changed link is re-decided and an unchanged one costs no stat().
    """

    __slots__ = ("_cache", "_majors", "_prefixes", "_root", "hits", "misses")

    def __init__(
        self,
        procfs: Path = pfs.PROCFS,
        gpu_paths: Iterable[str] = DEFAULT_GPU_PATHS,
        majors: frozenset[int] | None = None,
    ) -> None:
        self._root = str(procfs)
        self._prefixes = tuple(gpu_paths)
        self._majors = gpu_majors(procfs) if majors is None else majors
        self._cache: dict[tuple[int, int], tuple[str, bool]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def is_gpu(self, pid: int, fd: int) -> bool | None:
        """True/False, or None when the link cannot be read (gone, or no ptrace access)."""
        path = f"{self._root}/{pid}/fd/{fd}"
        try:
            link = os.readlink(path)
        except OSError:
            self._cache.pop((pid, fd), None)
            return None
        cached = self._cache.get((pid, fd))
        if cached is not None and cached[0] == link:
            self.hits += 1
            return cached[1]
        self.misses += 1
        decision = self._decide(path, link)
        self._cache[(pid, fd)] = (link, decision)
        return decision

    def _decide(self, path: str, link: str) -> bool:
        if link.startswith(self._prefixes):
            return True
        if not link.startswith("/dev/") or not self._majors:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in self._majors

    def retain(self, pids: Collection[int]) -> None:
        """Forget the fds of processes no longer sampled."""
        for key in [k for k in self._cache if k[0] not in pids]:
            del self._cache[key]


def _classify_wchan(wchan: bytes, state: str) -> ThreadClass:
    if state == "R":
        return "running"
    sym = wchan.decode("ascii", "replace")
    if sym in ("", "0"):
        return "idle"
    if any(s in sym for s in _WCHAN_SYNC):
        return "sync_wait"
    if any(s in sym for s in _WCHAN_IO):
        return "io"
    return "other"


_T = "threads"
_B = "bool"


class SyscallSampler(Sampler):
    """Unprivileged backend: per-thread snapshot of /proc/PID/task/*/syscall at each tick."""

    name: ClassVar[str] = "syscalls"
    metrics: ClassVar[Mapping[str, Metric]] = {
        "threads_total": Metric(_T, "gauge", help="threads of the process (all, not capped)"),
        "threads_sampled": Metric(_T, "gauge", help="threads classified this tick (<= max_threads)"),
        "threads_running": Metric(_T, "gauge", help="sampled threads running or runnable (state R)"),
        "threads_gpu_ioctl": Metric(_T, "gauge", help="sampled threads blocked in ioctl on a GPU device fd"),
        "threads_sync_wait": Metric(
            _T, "gauge", help="sampled threads blocked in futex, poll/select/epoll or nanosleep"
        ),
        "threads_io": Metric(_T, "gauge", help="sampled threads blocked in read/write/send/recv-style I/O"),
        "threads_other": Metric(
            _T, "gauge", help="sampled threads blocked in another syscall (incl. non-GPU ioctl) or in D state"
        ),
        "threads_idle": Metric(_T, "gauge", help="sampled threads stopped/sleeping outside any syscall"),
        "thread_running": Metric(_B, "gauge", "thread", "the hinting thread is running (0/1)"),
        "thread_in_gpu_ioctl": Metric(_B, "gauge", "thread", "the hinting thread is in a GPU ioctl (0/1)"),
        "thread_in_sync_wait": Metric(_B, "gauge", "thread", "the hinting thread waits in futex/poll/sleep"),
        "thread_in_io": Metric(_B, "gauge", "thread", "the hinting thread is blocked in I/O (0/1)"),
    }
    _THREAD_METRICS: ClassVar[Mapping[str, ThreadClass]] = {
        "thread_running": "running",
        "thread_in_gpu_ioctl": "gpu_ioctl",
        "thread_in_sync_wait": "sync_wait",
        "thread_in_io": "io",
    }

    def __init__(
        self,
        procfs: Path = pfs.PROCFS,
        max_threads: int = 256,
        gpu_paths: Iterable[str] = DEFAULT_GPU_PATHS,
        table: SyscallTable | None = None,
    ) -> None:
        self.procfs = procfs
        self._root = str(procfs)
        self.max_threads = max_threads
        self.table = table if table is not None else table_for()
        self.fds = FdClassifier(procfs, gpu_paths)
        # Kernels without CONFIG_HAVE_ARCH_TRACEHOOK have no `syscall` file: use wchan.
        self._has_syscall_file = (procfs / "self" / "syscall").exists() or not (procfs / "self").exists()
        self._stats: dict[str, Any] = {
            "ticks": 0,
            "last_tick_ns": 0,
            "threads_sampled_last": 0,
            "processes_capped_last": 0,
            "processes_capped_total": 0,
            "processes_denied_last": 0,
            "parse_errors_total": 0,
        }

    def available(self) -> tuple[bool, str]:
        if not (self.procfs / "self" / "task").is_dir():
            return False, f"{self.procfs} has no per-thread task/ directories (not Linux procfs?)"
        if self.table is None:
            return False, "no syscall table for this architecture (only x86_64 and aarch64)"
        return True, ""

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        t0 = time.perf_counter_ns()
        out: dict[ProcKey, ProcSample] = {}
        capped = denied = sampled = 0
        for target in targets:
            got = self._sample_process(target)
            if got is None:
                continue
            ps, was_capped, was_denied = got
            out[target.key] = ps
            capped += was_capped
            denied += was_denied
            sampled += int(ps.values.get("threads_sampled") or 0)
        self.fds.retain({t.key.pid for t in targets})
        s = self._stats
        s["ticks"] += 1
        s["last_tick_ns"] = time.perf_counter_ns() - t0
        s["threads_sampled_last"] = sampled
        s["processes_capped_last"] = capped
        s["processes_capped_total"] += capped
        s["processes_denied_last"] = denied
        return out

    def _sample_process(self, target: Target) -> tuple[ProcSample, bool, bool] | None:
        pid = target.key.pid
        try:
            if int(pfs.read_stat(self.procfs, pid)["starttime"]) != target.key.start:
                return None  # the pid now names another process
        except (ProcessGone, AccessDenied):
            return None
        tids = pfs.list_tids(self.procfs, pid)
        if not tids:
            return None
        present = set(tids)
        hint = sorted(t for t in target.tids if t in present)
        order = hint + sorted(present.difference(hint))
        chosen = order[: max(self.max_threads, len(hint))]
        counts = dict.fromkeys(CLASSES, 0)
        unknown = 0
        denied = False
        ps = ProcSample()
        for tid in chosen:
            try:
                cls, denied = self._classify(pid, tid, denied)
            except ProcessGone:
                continue  # the thread exited between listing and reading
            if cls is None:
                unknown += 1
            else:
                counts[cls] += 1
            if tid in target.tids:
                ps.threads[tid] = {m: (None if cls is None else int(cls == c)) for m, c in self._THREAD_METRICS.items()}
        n = sum(counts.values()) + unknown
        v: dict[str, Value] = ps.values
        v["threads_total"] = len(tids)
        v["threads_sampled"] = n
        v["threads_running"] = counts["running"]
        for c in CLASSES[1:]:
            v[f"threads_{c}"] = None if denied else counts[c]
        return ps, len(tids) > len(chosen), denied

    def _classify(self, pid: int, tid: int, denied: bool) -> tuple[ThreadClass | None, bool]:
        """The thread's class (None if unknowable) and whether ptrace-read was denied."""
        root = self._root
        if not denied:
            try:
                if self._has_syscall_file:
                    return self._from_syscall(pid, tid, _read_task(root, pid, tid, "syscall")), False
                wchan = _read_task(root, pid, tid, "wchan")
                return _classify_wchan(wchan, _thread_state(root, pid, tid)), False
            except AccessDenied:
                pass
            except ValueError:
                self._stats["parse_errors_total"] += 1
                return None, False
        # No ptrace-read access: stat still tells running from not running.
        return ("running" if _thread_state(root, pid, tid) == "R" else None), True

    def _from_syscall(self, pid: int, tid: int, data: bytes) -> ThreadClass:
        f = parse_syscall(data)
        if f.running:
            return "running"
        table = self.table
        assert table is not None  # available() said so
        if f.nr < 0:
            # Blocked outside a syscall: stopped/traced (idle), or in D state, e.g. a
            # page fault waiting for a migration or swap-in (counted as other).
            return "other" if _thread_state(self._root, pid, tid) == "D" else "idle"
        if f.nr == table.ioctl:
            return "gpu_ioctl" if f.arg0 is not None and self.fds.is_gpu(pid, f.arg0) else "other"
        if f.nr in table.futex or f.nr in table.poll or f.nr in table.sleep:
            return "sync_wait"
        if f.nr in table.io:
            return "io"
        return "other"

    def health(self) -> dict[str, Any]:
        return {
            "backend": "proc-sampling",
            "source": "syscall" if self._has_syscall_file else "wchan",
            "max_threads": self.max_threads,
            "arch": self.table.arch if self.table else None,
            "fd_cache_entries": len(self.fds),
            "fd_cache_hits": self.fds.hits,
            "fd_cache_misses": self.fds.misses,
            **self._stats,
        }
