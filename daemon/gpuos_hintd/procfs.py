"""Raw, defensive /proc readers (psutil's _pslinux style).

Every reader takes the procfs root as a Path so tests can point it at a
tree they build (tests/test_sampler_maps.py, test_sampler_drm.py: a tmp_path).  Each file is read once, in binary.
OS errors are translated here, at the edge, into ProcessGone / AccessDenied.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from .errors import AccessDenied, ProcessGone

PROCFS = Path("/proc")
CLK_TCK: int = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
NS_PER_TICK: int = 1_000_000_000 // CLK_TCK

P = ParamSpec("P")
R = TypeVar("R")


def wrap_os_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map OS errors to ProcessGone / AccessDenied; the pid is the 2nd argument."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise ProcessGone(int(args[1])) from exc  # type: ignore[call-overload]
        except PermissionError as exc:
            raise AccessDenied(int(args[1])) from exc  # type: ignore[call-overload]
        except OSError as exc:  # ESRCH surfaces as plain OSError on some files
            raise ProcessGone(int(args[1]), str(exc)) from exc  # type: ignore[call-overload]

    return wrapper


def _read(path: Path | str) -> bytes:
    # os.open/os.read and string paths, not open() and pathlib: this runs ~100 times per tick,
    # and pathlib's joins and file objects were half of the proc sampler's time.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _base(procfs: Path, pid: int, tid: int | None) -> str:
    return f"{procfs}/{pid}/task/{tid}" if tid else f"{procfs}/{pid}"


# Fields of /proc/PID/stat after "(comm)", by position (man 5 proc, 1-based
# field numbers minus 3).  Only those we use are named.
_STAT_FIELDS = {
    "state": 0,
    "ppid": 1,
    "minflt": 7,
    "majflt": 9,
    "utime": 11,
    "stime": 12,
    "num_threads": 17,
    "starttime": 19,
    "rss": 21,
    "processor": 36,
}


def parse_stat(data: bytes) -> dict[str, int | str]:
    """Parse a stat line.  The comm may contain ')' and spaces: split at the last ')'."""
    rpar = data.rfind(b")")
    comm = data[data.find(b"(") + 1 : rpar].decode("utf-8", "replace")
    fields = data[rpar + 2 :].split()
    out: dict[str, int | str] = {"comm": comm, "state": fields[0].decode()}
    for name, idx in _STAT_FIELDS.items():
        if name != "state":
            out[name] = int(fields[idx]) if idx < len(fields) else 0
    return out


@wrap_os_errors
def read_stat(procfs: Path, pid: int, tid: int | None = None) -> dict[str, int | str]:
    """/proc/PID/stat, or /proc/PID/task/TID/stat when tid is given."""
    return parse_stat(_read(_base(procfs, pid, tid) + "/stat"))


def start_ticks(pid: int, procfs: Path = PROCFS) -> int:
    """The process's start time in clock ticks since boot (its identity with pid)."""
    return int(read_stat(procfs, pid)["starttime"])


@wrap_os_errors
def read_kv(
    procfs: Path, pid: int, name: str, tid: int | None = None, keys: tuple[bytes, ...] | None = None
) -> dict[str, int]:
    """Parse "key: value" files (io, status's numeric lines); non-numeric lines skipped.

    With ``keys``, only those are looked up (bytes.find on the raw text): /proc/PID/status
    has ~55 lines and the sampler wants two of them, every tick.
    """
    data = _read(f"{_base(procfs, pid, tid)}/{name}")
    out: dict[str, int] = {}
    if keys is not None:
        for key in keys:
            i = data.find(b"\n" + key + b":")
            if i < 0 and data.startswith(key + b":"):
                i = -1
            elif i < 0:
                continue
            start = i + len(key) + 2
            end = data.find(b"\n", start)
            value = data[start : end if end >= 0 else None].split()
            if value and value[0].isdigit():
                out[key.decode()] = int(value[0])
        return out
    for line in data.splitlines():
        key, sep, rest = line.partition(b":")
        if not sep:
            continue
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.decode()] = int(parts[0])
    return out


@wrap_os_errors
def read_schedstat(procfs: Path, pid: int, tid: int | None = None) -> tuple[int, int, int]:
    """(run ns, run-queue wait ns, timeslices) from schedstat; zeros if the kernel lacks it."""
    parts = _read(_base(procfs, pid, tid) + "/schedstat").split()
    if len(parts) < 3:
        return 0, 0, 0
    return int(parts[0]), int(parts[1]), int(parts[2])


@wrap_os_errors
def read_cmdline(procfs: Path, pid: int) -> list[str]:
    raw = _read(procfs / str(pid) / "cmdline")
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


@wrap_os_errors
def read_cgroup(procfs: Path, pid: int) -> str:
    """The process's cgroup path: the v2 ("0::") line, else the name=systemd v1 line."""
    text = _read(procfs / str(pid) / "cgroup").decode("utf-8", "replace")
    v1 = ""
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            return path
        if controllers == "name=systemd":
            v1 = path
    return v1


def systemd_unit(cgroup: str) -> str | None:
    """The innermost systemd unit in a cgroup path (…/foo.service, …/run-x.scope)."""
    for part in reversed(cgroup.split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


def list_tids(procfs: Path, pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(procfs / str(pid) / "task")]
    except OSError:
        return []


def boot_id(procfs: Path = PROCFS) -> str:
    """This boot's id: with (pid, start) it makes a process identity unique across reboots."""
    try:
        return (procfs / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
