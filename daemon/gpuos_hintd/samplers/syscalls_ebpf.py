"""Privileged backend: exact syscall counts per target process, from eBPF via bpftrace.

Sampling /proc (syscalls.py) sees where threads *sit*; it cannot see a 5 us
ioctl issued 20 000 times a second, which is what GPU submission looks like.
Counting every syscall entry on the raw_syscalls:sys_enter tracepoint can.
(Tracepoints, not kprobes: kprobes are off on the hosts we know.)

How it runs:
* Debian's bpftrace is a long-lived child printing JSON.  Counts go to one of
  two maps, flipped every interval, so the map printed and cleared is never the
  one being written: no counts fall between print() and clear().
* Only target pids are counted.  The set lives in a BPF map that the daemon
  updates *through the tracepoint itself*: it calls prctl(MAGIC, pid, op), an
  option no kernel knows (EINVAL, no side effect), and the program, matching
  the daemon's pid and MAGIC, adds or deletes the pid and prints an ack.  This
  needs no bpftool and no restart when targets change; unacked adds are re-sent
  every tick, which also covers the child's start-up and restarts.
* ioctl is also counted per (pid, fd); the reader thread resolves each fd via
  /proc/PID/fd to split sys_ioctl_gpu_count off sys_ioctl_count.
* A reader thread owns the child: it parses output into cumulative per-pid
  counters and restarts a dead child with backoff.  The child gets
  PR_SET_PDEATHSIG (via setpriv, else preexec_fn) so it dies with the daemon.

Counts lag the kernel by up to one interval (100 ms by default), and pids are
root-namespace pids: the daemon must share the host's pid namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from .. import procfs as pfs
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value
from .syscall_table import SyscallTable, table_for
from .syscalls import DEFAULT_GPU_PATHS, FdClassifier

MAGIC = 0x67707530  # "gpu0": the prctl option the BPF program treats as a control message
_OP_DEL, _OP_ADD = 0, 1
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_TP = "events/raw_syscalls/sys_enter"

COUNTERS: tuple[str, ...] = (
    "sys_total_count",
    "sys_ioctl_count",
    "sys_ioctl_gpu_count",
    "sys_futex_count",
    "sys_poll_count",
    "sys_io_count",
    "sys_mmap_count",
    "sys_other_count",
)
_TOTAL, _IOCTL, _GPU, _FUTEX, _POLL, _IO, _MMAP, _OTHER = range(len(COUNTERS))


def bpftrace_program(table: SyscallTable, ctl_pid: int, interval_ms: int = 100) -> str:
    """The bpftrace script.  Syscall args are copied to locals first: bpftrace 0.17
    otherwise emits a ctx-pointer dereference the verifier rejects."""
    return f"""
tracepoint:raw_syscalls:sys_enter {{
  $id = args->id; $a0 = args->args[0];
  if (pid == {ctl_pid} && $id == {table.prctl} && $a0 == {MAGIC}) {{
    $p = args->args[1];
    if (args->args[2] == {_OP_ADD}) {{ @t[$p] = 1; printf("ack %d\\n", $p); }}
    else {{ delete(@t[$p]); }}
  }}
  if (@t[pid]) {{
    if (@gen == 0) {{ @a[pid, $id] = count(); }} else {{ @b[pid, $id] = count(); }}
    if ($id == {table.ioctl}) {{
      if (@gen == 0) {{ @ia[pid, $a0] = count(); }} else {{ @ib[pid, $a0] = count(); }}
    }}
  }}
}}
interval:ms:{interval_ms} {{
  if (@gen == 0) {{ @gen = 1; print(@a); clear(@a); print(@ia); clear(@ia); }}
  else {{ @gen = 0; print(@b); clear(@b); print(@ib); clear(@ib); }}
}}
END {{ clear(@t); clear(@gen); }}
"""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


# bpf(2) by architecture: the probe below calls it directly, so that it needs no bpftool.
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE, _BPF_MAP_TYPE_ARRAY = 0, 2


class _MapCreateAttr(ctypes.Structure):
    """The head of union bpf_attr for BPF_MAP_CREATE; the kernel zero-extends the rest."""

    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    )


def try_create_map(machine: str | None = None) -> str:
    """Create (and close) a one-entry BPF array map; "" on success, else why not.

    Being root with bpftrace on PATH is not enough: a container's seccomp filter
    (systemd-nspawn, docker) or kernel.unprivileged_bpf_disabled and a missing
    CAP_BPF make bpf(2) fail with EPERM, and bpftrace then cannot create its maps.
    Asking the kernel is the only reliable test.
    """
    nr = _BPF_SYSCALL.get(machine or platform.machine())
    if nr is None:
        return f"no bpf(2) syscall number known for {machine or platform.machine()}"
    attr = _MapCreateAttr(_BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_MAP_CREATE), ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return os.strerror(ctypes.get_errno())
    os.close(fd)
    return ""


def find_tracepoint(dirs: Iterable[Path] = TRACEFS_DIRS) -> Path | None:
    """The raw_syscalls:sys_enter directory under a mounted tracefs, or None."""
    for d in dirs:
        if (d / _TP).is_dir():
            return d / _TP
    return None


def mount_tracefs(where: Path = TRACEFS_DIRS[0]) -> str:
    """mount -t tracefs nodev WHERE; "" on success, else the reason it failed."""
    libc = _libc()
    if libc.mount(b"nodev", str(where).encode(), b"tracefs", ctypes.c_ulong(0), None) != 0:
        return os.strerror(ctypes.get_errno())
    return ""


class _Control:
    """The daemon-to-BPF channel: prctl(MAGIC, pid, op) seen on the tracepoint."""

    def __init__(self) -> None:
        self._prctl = _libc().prctl
        self.sent = 0

    def send(self, pid: int, op: int) -> None:
        self._prctl(ctypes.c_int(MAGIC), ctypes.c_ulong(pid), ctypes.c_ulong(op), ctypes.c_ulong(0), 0)
        self.sent += 1


def _pdeathsig_preexec() -> None:  # pragma: no cover - runs in the forked child
    _libc().prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SyscallEbpfSampler(Sampler):
    """Counts syscalls of target processes on raw_syscalls:sys_enter (needs root)."""

    name: ClassVar[str] = "syscalls_ebpf"
    metrics: ClassVar[Mapping[str, Metric]] = {
        "sys_total_count": Metric("calls", "counter", help="syscalls entered"),
        "sys_ioctl_count": Metric("calls", "counter", help="ioctl calls, any fd"),
        "sys_ioctl_gpu_count": Metric(
            "calls", "counter", help="ioctl calls on a GPU device fd (/dev/nvidia*, /dev/dri/*, /dev/kfd)"
        ),
        "sys_futex_count": Metric("calls", "counter", help="futex and futex_waitv calls"),
        "sys_poll_count": Metric(
            "calls", "counter", help="poll, ppoll, select, pselect6, epoll_wait, epoll_pwait(2) calls"
        ),
        "sys_io_count": Metric("calls", "counter", help="read/write, p/v variants, sendfile, send*/recv* calls"),
        "sys_mmap_count": Metric("calls", "counter", help="mmap, munmap and mremap calls"),
        "sys_other_count": Metric("calls", "counter", help="all other syscalls (incl. nanosleep)"),
    }

    def __init__(
        self,
        bpftrace: str = "bpftrace",
        interval_ms: int = 100,
        mount_tracefs: bool = True,
        gpu_paths: Iterable[str] = DEFAULT_GPU_PATHS,
        procfs: Path = pfs.PROCFS,
        tracefs_dirs: Iterable[Path] = TRACEFS_DIRS,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._bpftrace = bpftrace
        self.interval_ms = interval_ms
        self._may_mount = mount_tracefs
        self._gpu_paths = tuple(gpu_paths)
        self._procfs = procfs
        self._tracefs_dirs = tuple(tracefs_dirs)
        self._max_backoff = max_backoff_s
        self.table = table_for()
        self._avail: tuple[bool, str] | None = None
        self._mounted = False
        self._lock = threading.Lock()
        # Shared with the reader thread, under _lock:
        self._counts: dict[int, list[int]] = {}
        self._wanted: set[int] = set()
        self._acked: set[int] = set()
        self._stats: dict[str, Any] = {
            "child_pid": None,
            "restarts": 0,
            "events_lost": 0,
            "batches": 0,
            "attached": False,
            "last_exit": None,
            "startup_s": None,
        }
        self._errors: deque[str] = deque(maxlen=5)
        # Owned by the sampling thread:
        self._tracked: dict[int, ProcKey] = {}
        self._control: _Control | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._child: subprocess.Popen[str] | None = None

    # -- availability -------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        if self._avail is None:
            self._avail = self._probe()
        return self._avail

    def _probe(self) -> tuple[bool, str]:
        if not sys.platform.startswith("linux"):
            return False, "eBPF syscall counting needs Linux"
        if self.table is None:
            return False, "no syscall table for this architecture (only x86_64 and aarch64)"
        if shutil.which(self._bpftrace) is None:
            return False, f"{self._bpftrace} not found (apt-get install bpftrace)"
        if os.geteuid() != 0:
            return False, "bpftrace refuses to run as non-root (euid 0 needed, not just CAP_BPF)"
        if find_tracepoint(self._tracefs_dirs) is None:
            if not self._may_mount:
                return False, "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
            why = mount_tracefs(self._tracefs_dirs[0])
            if why:
                return False, f"tracefs is not mounted and mounting it failed: {why}"
            self._mounted = True
            if find_tracepoint(self._tracefs_dirs) is None:
                return False, "tracepoint raw_syscalls:sys_enter missing (CONFIG_FTRACE_SYSCALLS?)"
        why = try_create_map()
        if why:
            return False, f"the kernel refuses to create a BPF map here (bpf(2): {why}; a container's seccomp filter?)"
        return self._probe_bpftrace()

    def _probe_bpftrace(self, timeout_s: float = 20.0) -> tuple[bool, str]:
        """Run bpftrace once: it must start, and see its own pid as we see it.

        BPF's pid is the host's (root PID namespace) pid; in a container with its own PID
        namespace it differs from what this daemon knows, and every count would be
        attributed to the wrong process (or none).
        """
        prog = 'BEGIN { printf("pid=%d\\n", pid); exit(); }'
        try:
            child = subprocess.Popen(
                [self._bpftrace, "-f", "json", "-e", prog],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            out, _ = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return False, f"{self._bpftrace} did not run a one-probe program within {timeout_s:g} s"
        except OSError as exc:
            return False, f"cannot run {self._bpftrace}: {exc}"
        seen = None
        for line in out.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                msg = json.loads(line)
                if msg.get("type") == "printf" and str(msg["data"]).startswith("pid="):
                    seen = int(str(msg["data"])[4:])
        if seen is None:
            errors = [ln for ln in out.splitlines() if "ERROR" in ln and "RLIMIT_MEMLOCK" not in ln]
            return False, f"{self._bpftrace} failed: {(errors or out.splitlines() or ['no output'])[-1][:200]}"
        if seen != child.pid:
            return False, (
                f"not in the host's PID namespace (BPF sees bpftrace as pid {seen}, this daemon sees {child.pid}): "
                "counts would go to the wrong processes"
            )
        return True, ""

    # -- sampling -----------------------------------------------------------------
    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        if self._thread is None:
            self._start()
        keys = {t.key.pid: t.key for t in targets}
        control = self._control
        assert control is not None
        with self._lock:
            for pid, key in keys.items():
                if self._tracked.get(pid) != key:  # new, or the pid was reused
                    self._counts.pop(pid, None)
                    self._acked.discard(pid)
            for pid in set(self._tracked).difference(keys):
                self._counts.pop(pid, None)
                if pid in self._acked:
                    control.send(pid, _OP_DEL)
                    self._acked.discard(pid)
            self._tracked = keys
            self._wanted = set(keys)
            attached = self._stats["attached"]
            pending = [pid for pid in keys if pid not in self._acked]
            snapshot = {pid: list(self._counts.get(pid, [0] * len(COUNTERS))) for pid in self._acked}
        if attached:
            for pid in pending:
                control.send(pid, _OP_ADD)  # re-sent each tick until the program acks it
        out: dict[ProcKey, ProcSample] = {}
        for pid, key in keys.items():
            c = snapshot.get(pid)
            values: dict[str, Value] = dict.fromkeys(COUNTERS) if c is None else dict(zip(COUNTERS, c, strict=True))
            out[key] = ProcSample(values=values)
        return out

    def _start(self) -> None:
        self._control = _Control()
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="gpuos-bpftrace", daemon=True)
        self._thread.start()

    def _argv(self) -> list[str]:
        assert self.table is not None
        prog = bpftrace_program(self.table, os.getpid(), self.interval_ms)
        argv = [self._bpftrace, "-f", "json", "-e", prog]
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv

    def _supervise(self) -> None:
        """Reader thread: run the child, parse its output, restart it with backoff."""
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            argv = self._argv()
            env = {**os.environ, "BPFTRACE_MAP_KEYS_MAX": "16384"}
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    child = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        env=env,
                        start_new_session=True,  # no terminal SIGINT; PDEATHSIG covers daemon death
                        preexec_fn=None if argv[0] != self._bpftrace else _pdeathsig_preexec,
                    )
                except OSError as exc:
                    self._errors.append(f"spawn failed: {exc}")
                    child = None
                self._child = child
                self._stats["child_pid"] = child.pid if child else None
            if child is not None:
                assert child.stdout is not None
                fds = FdClassifier(self._procfs, self._gpu_paths)
                for line in child.stdout:
                    self._handle(line, fds, started)
                rc = child.wait()
                with self._lock:
                    self._stats.update(attached=False, child_pid=None, last_exit=rc)
                    self._acked.clear()
            if self._stop.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 0.5
            with self._lock:
                self._stats["restarts"] += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _handle(self, line: str, fds: FdClassifier, started: float) -> None:
        line = line.strip()
        if not line:
            return
        try:
            msg = json.loads(line)
            kind, data = msg["type"], msg["data"]
        except (ValueError, KeyError, TypeError):
            self._errors.append(line[:200])
            return
        if kind == "map":
            self._add_map(data, fds)
        elif kind == "printf" and isinstance(data, str) and data.startswith("ack "):
            with self._lock:
                self._acked.add(int(data.split()[1]))
        elif kind == "attached_probes":
            with self._lock:
                self._stats["attached"] = True
                self._stats["startup_s"] = round(time.monotonic() - started, 3)
        elif kind == "lost_events":
            with self._lock:
                self._stats["events_lost"] += int(data.get("events", 0))

    def _add_map(self, data: Mapping[str, Mapping[str, int]], fds: FdClassifier) -> None:
        table = self.table
        assert table is not None
        with self._lock:
            wanted = set(self._wanted) & self._acked
        gpu: dict[int, int] = {}
        per_pid: dict[int, list[int]] = {}
        for name, entries in data.items():
            is_ioctl = name in ("@ia", "@ib")
            if not is_ioctl and name not in ("@a", "@b"):
                continue
            for k, n in entries.items():
                pid_s, _, arg_s = k.partition(",")
                pid, arg = int(pid_s), int(arg_s)
                if pid not in wanted:
                    continue
                if is_ioctl:
                    if fds.is_gpu(pid, arg):
                        gpu[pid] = gpu.get(pid, 0) + n
                    continue
                c = per_pid.setdefault(pid, [0] * len(COUNTERS))
                c[_TOTAL] += n
                c[self._group(table, arg)] += n
        for pid, n in gpu.items():
            per_pid.setdefault(pid, [0] * len(COUNTERS))[_GPU] += n
        fds.retain(wanted)
        with self._lock:
            self._stats["batches"] += 1
            for pid, c in per_pid.items():
                if pid not in self._acked:
                    continue  # untracked while this batch was parsed
                acc = self._counts.setdefault(pid, [0] * len(COUNTERS))
                for i, n in enumerate(c):
                    acc[i] += n

    @staticmethod
    def _group(table: SyscallTable, nr: int) -> int:
        if nr == table.ioctl:
            return _IOCTL
        if nr in table.futex:
            return _FUTEX
        if nr in table.poll:
            return _POLL
        if nr in table.io:
            return _IO
        if nr in table.mmap:
            return _MMAP
        return _OTHER

    # -- health and shutdown --------------------------------------------------------
    def health(self) -> dict[str, Any]:
        with self._lock:
            h: dict[str, Any] = {"backend": "ebpf-bpftrace", **self._stats}
            h["tracked_pids"] = len(self._tracked)
            h["acked_pids"] = len(self._acked)
        h["interval_ms"] = self.interval_ms
        h["tracefs_mounted_by_sampler"] = self._mounted
        h["control_syscalls"] = self._control.sent if self._control else 0
        h["recent_errors"] = list(self._errors)
        return h

    def close(self) -> None:
        """Stop the reader thread and terminate the child (SIGTERM, then SIGKILL after 3 s)."""
        self._stop.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(3)
            except subprocess.TimeoutExpired:
                child.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(3)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
