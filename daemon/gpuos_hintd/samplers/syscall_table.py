"""Syscall numbers and the groups the syscall samplers report, for x86_64 and aarch64.

Both backends see raw numbers (/proc/PID/task/TID/syscall, the raw_syscalls
tracepoint), and numbers differ per architecture (aarch64 uses the generic
table and has no poll/select/epoll_wait, only their p* variants).  Keeping only
the syscalls we group, by name, makes a wrong number easy to spot against
<asm/unistd_64.h> and <asm-generic/unistd.h>, from which these were checked.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping

# name -> number, only for the syscalls the groups below use (plus prctl, the
# eBPF backend's control channel, and getppid, which the tests count).
_X86_64: Mapping[str, int] = {
    "read": 0, "write": 1, "poll": 7, "mmap": 9, "munmap": 11, "ioctl": 16,
    "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "select": 23, "mremap": 25,
    "nanosleep": 35, "sendfile": 40, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47,
    "getppid": 110, "prctl": 157, "futex": 202, "clock_nanosleep": 230, "epoll_wait": 232,
    "pselect6": 270, "ppoll": 271, "epoll_pwait": 281, "preadv": 295, "pwritev": 296,
    "preadv2": 327, "pwritev2": 328, "epoll_pwait2": 441, "futex_waitv": 449,
}  # fmt: skip
_AARCH64: Mapping[str, int] = {
    "epoll_pwait": 22, "ioctl": 29, "read": 63, "write": 64, "readv": 65, "writev": 66,
    "pread64": 67, "pwrite64": 68, "preadv": 69, "pwritev": 70, "sendfile": 71, "pselect6": 72,
    "ppoll": 73, "futex": 98, "nanosleep": 101, "clock_nanosleep": 115, "prctl": 167,
    "getppid": 173, "sendto": 206, "recvfrom": 207, "sendmsg": 211, "recvmsg": 212,
    "munmap": 215, "mremap": 216, "mmap": 222, "preadv2": 286, "pwritev2": 287,
    "epoll_pwait2": 441, "futex_waitv": 449,
}  # fmt: skip
_TABLES: Mapping[str, Mapping[str, int]] = {
    "x86_64": _X86_64,
    "amd64": _X86_64,
    "aarch64": _AARCH64,
    "arm64": _AARCH64,
}

# The groups, by name; a name missing on an architecture is skipped there.
FUTEX = ("futex", "futex_waitv")
POLL = ("poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2")
SLEEP = ("nanosleep", "clock_nanosleep")
IO = (
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
    "pwritev2", "sendfile", "sendto", "recvfrom", "sendmsg", "recvmsg",
)  # fmt: skip
MMAP = ("mmap", "munmap", "mremap")


@dataclasses.dataclass(frozen=True)
class SyscallTable:
    """The numbers one architecture uses for the groups both backends report."""

    arch: str
    numbers: Mapping[str, int]
    ioctl: int
    prctl: int
    futex: frozenset[int]
    poll: frozenset[int]
    sleep: frozenset[int]
    io: frozenset[int]
    mmap: frozenset[int]

    @property
    def sync(self) -> frozenset[int]:
        """Syscalls a thread sits in while it waits for another thread, an fd or a timer."""
        return self.futex | self.poll | self.sleep

    def name(self, nr: int) -> str:
        """The syscall's name where this table knows it, else "sys_<nr>"."""
        for name, n in self.numbers.items():
            if n == nr:
                return name
        return f"sys_{nr}"


def _group(numbers: Mapping[str, int], names: tuple[str, ...]) -> frozenset[int]:
    return frozenset(numbers[n] for n in names if n in numbers)


def table_for(machine: str | None = None) -> SyscallTable | None:
    """The table for `machine` (default: this host's uname -m), or None if unknown."""
    arch = (machine or platform.machine()).lower()
    numbers = _TABLES.get(arch)
    if numbers is None:
        return None
    return SyscallTable(
        arch=arch,
        numbers=numbers,
        ioctl=numbers["ioctl"],
        prctl=numbers["prctl"],
        futex=_group(numbers, FUTEX),
        poll=_group(numbers, POLL),
        sleep=_group(numbers, SLEEP),
        io=_group(numbers, IO),
        mmap=_group(numbers, MMAP),
    )
