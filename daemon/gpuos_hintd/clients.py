"""Who is hinting: peer-credential identity, per-client state, admission limits.

A client's identity is what the kernel says about the socket's peer
(SO_PEERCRED, which libzmq exposes as the "Peer-Address" message property),
paired with the process start time so a reused pid is never mistaken for the
old process.  The pid a message *claims* is only accepted if it matches.
Clients in another pid namespace (containers) claim their namespace's pid;
we accept that when the peer's /proc/PID/status NSpid line ends with it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from . import procfs
from .errors import AccessDenied, ProcessGone, Refused
from .model import ProcKey

#: What this module (and the service) raise for a refused message: errors.Refused, a subclass of
#: the protocol's ProtocolError, so one ``except P.ProtocolError`` catches every refusal.
Rejected = Refused


@dataclasses.dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, n: int, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclasses.dataclass(slots=True)
class Client:
    key: ProcKey
    uid: int
    gid: int
    comm: str
    cmdline: list[str]
    cgroup: str
    unit: str | None
    first_seen_wall_ns: int
    last_seen_mono_ns: int
    bucket: TokenBucket
    routing_id: bytes = b""
    workload_class: str | None = None
    hello: dict[str, Any] | None = None
    tids: set[int] = dataclasses.field(default_factory=set)
    #: Each thread's last edge reading (ru): a phase edge with a nil reading from a thread that
    #: sent one before means "that reading still stands" (the client reads at most every 20 us).
    last_ru: dict[int, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    events: int = 0
    batches: int = 0
    last_seq: int = 0
    seq_gaps: int = 0
    client_dropped: int = 0
    client_buffered: int = 0
    said_bye: bool = False
    ns_pid: int | None = None  # the pid the client sees, when in another pid namespace
    ns_tids: dict[int, int] = dataclasses.field(default_factory=dict)  # namespace tid -> host tid
    dead_since_ns: int = 0  # when the reaper first found the process gone (0: alive)


def _ns_pid_chain(pid: int, root: Path) -> list[int]:
    return _ns_pid_chain_path(root / str(pid) / "status")


def _proc_uid(pid: int, root: Path) -> int | None:
    """The effective uid of a live process (from /proc/PID/status), None if unreadable."""
    try:
        status = (root / str(pid) / "status").read_bytes()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            return int(fields[2]) if len(fields) > 2 else None
    return None


def ns_to_host_tid(host_pid: int, ns_tid: int, root: Path = procfs.PROCFS) -> int:
    """The host tid of the thread a container client calls ``ns_tid`` (the tid itself if unknown).

    Each thread's /proc/PID/task/TID/status has an NSpid line, host first, innermost
    last; the thread whose innermost id is ``ns_tid`` is the one.  Called once per new
    thread of a namespaced client (the daemon caches the answer).
    """
    try:
        tasks = list((root / str(host_pid) / "task").iterdir())[:4096]
    except OSError:
        return ns_tid
    for task in tasks:
        chain = _ns_pid_chain_path(task / "status")
        if len(chain) > 1 and chain[-1] == ns_tid:
            return chain[0]
    return ns_tid


def _ns_pid_chain_path(path: Path) -> list[int]:
    try:
        status = path.read_bytes()
    except OSError:
        return []
    for line in status.splitlines():
        if line.startswith(b"NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def verify_peer(
    peer_pid: int,
    claimed_pid: int,
    claimed_start: int,
    root: Path = procfs.PROCFS,
    peer_uid: int | None = None,
) -> tuple[int, int | None]:
    """Check a message's claim against the live socket peer; return (host pid, ns pid or None).

    Raises Rejected("pid_mismatch") for a claim about another process,
    Rejected("pid_start_mismatch") for a recycled or forged start time,
    Rejected("peer_gone") when the peer no longer runs (its pid may already
    belong to someone else: acceptance needs the live process), and
    Rejected("uid_mismatch") when the live process is not the peer's uid.
    """
    ns_pid = None
    if claimed_pid != peer_pid:
        chain = _ns_pid_chain(peer_pid, root)
        if len(chain) > 1 and chain[-1] == claimed_pid:
            ns_pid = claimed_pid
        else:
            raise Rejected("pid_mismatch", f"message claims pid {claimed_pid}, socket peer is {peer_pid}")
    try:
        start = procfs.start_ticks(peer_pid, root)
    except AccessDenied as exc:
        raise Rejected("peer_unreadable", f"pid {peer_pid}: {exc}") from None
    except ProcessGone:
        # A first batch read after its sender exited cannot be tied to a live process:
        # SO_PEERCRED vouched for the pid at connect time only.  (A client already
        # admitted keeps being served by its connection until it is reaped.)
        raise Rejected("peer_gone", f"pid {peer_pid} exited before its first batch was read") from None
    if start != claimed_start:
        raise Rejected("pid_start_mismatch", f"pid {peer_pid} started at tick {start}, message claims {claimed_start}")
    if peer_uid is not None and peer_uid >= 0:
        live_uid = _proc_uid(peer_pid, root)
        if live_uid is not None and live_uid != peer_uid:
            raise Rejected("uid_mismatch", f"pid {peer_pid} runs as uid {live_uid}, the socket peer was uid {peer_uid}")
    return peer_pid, ns_pid


def describe_process(pid: int, root: Path = procfs.PROCFS) -> tuple[str, list[str], str, str | None]:
    """(comm, cmdline, cgroup, systemd unit) of a new client; blanks where unreadable.

    Raw files under ``root``, the same reads for the live /proc and a recorded
    or fake tree.  The kernel cuts comm to 15 bytes; like psutil's name(), a
    cut comm is completed from argv[0] when that starts with it.
    """
    comm, cmdline = "", []
    try:
        comm = str(procfs.read_stat(root, pid)["comm"])
        cmdline = procfs.read_cmdline(root, pid)
    except (ProcessGone, AccessDenied):
        pass
    if len(comm) >= 15 and cmdline:
        exe = cmdline[0].rsplit("/", 1)[-1]
        if exe.startswith(comm):
            comm = exe
    try:
        cgroup = procfs.read_cgroup(root, pid)
    except (ProcessGone, AccessDenied):
        cgroup = ""
    return comm, cmdline, cgroup, procfs.systemd_unit(cgroup)


def is_alive(key: ProcKey, root: Path = procfs.PROCFS) -> bool:
    """Same pid, same start time, and not a zombie (exited, not yet reaped by its parent)."""
    try:
        stat = procfs.read_stat(root, key.pid)
    except (ProcessGone, AccessDenied):
        return False
    return int(stat["starttime"]) == key.start and stat["state"] not in ("Z", "X")
