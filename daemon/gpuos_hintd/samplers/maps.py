"""GPU device mappings and fds of a process, from /proc/PID/maps and /proc/PID/fd.

Why: it is the cheapest vendor-neutral sign that a process holds a GPU context.
A CUDA process maps /dev/nvidia0, /dev/nvidiactl and /dev/nvidia-uvm ~31-32
times and keeps ~31 of those fds open (measured on an H100 with torch; see
tests/data/maps/h100_torch); ROCm processes map /dev/kfd and /dev/dri/renderD*.
The counts change when a context or allocation pool is created, so they help
phase inference even where no vendor library is available, and need no
privilege beyond reading the process's /proc.

Only paths that *start* with a device prefix count (libnvidia-*.so mappings do
not).  The fd scan shares drm.DrmScanner's cache: links are re-read only for
fds that are new since the last tick, and for all fds every ``refresh_ticks``.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

from ..procfs import PROCFS
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value
from .drm import DrmScanner

GPU_DEVICE_PREFIXES: tuple[str, ...] = ("/dev/nvidia", "/dev/dri/", "/dev/kfd")


def parse_maps(data: bytes, prefixes: tuple[str, ...] = GPU_DEVICE_PREFIXES) -> tuple[int, int]:
    """(number of mappings, total bytes) of device files under ``prefixes`` in a maps file."""
    bprefixes = tuple(p.encode() for p in prefixes)
    count = size = 0
    for line in data.splitlines():
        parts = line.split(maxsplit=5)  # range perms offset dev inode [path]
        if len(parts) < 6 or not parts[5].startswith(bprefixes):
            continue
        start, _, end = parts[0].partition(b"-")
        try:
            size += int(end, 16) - int(start, 16)
        except ValueError:
            continue
        count += 1
    return count, size


class MapsSampler(Sampler):
    """Counts of GPU device mappings and fds per process."""

    name: ClassVar[str] = "maps"
    # Device mappings appear when a process opens the GPU and rarely change after; reading
    # /proc/PID/maps costs ~0.23 ms per process (benchmarks/bench_footprint.py): once a second.
    interval_s: ClassVar[float] = 1.0
    metrics: ClassVar[dict[str, Metric]] = {
        "gpu_dev_maps": Metric("count", "gauge", help="mappings of /dev/nvidia*, /dev/dri/*, /dev/kfd"),
        "gpu_dev_map_bytes": Metric("bytes", "gauge", help="total size of those mappings"),
        "gpu_dev_fds": Metric("count", "gauge", help="open fds on those devices"),
    }

    def __init__(self, procfs: Path = PROCFS, refresh_ticks: int = 50) -> None:
        self.procfs = Path(procfs)
        self.scanner = DrmScanner(self.procfs, refresh_ticks, prefixes=GPU_DEVICE_PREFIXES)
        self._denied = 0

    def available(self) -> tuple[bool, str]:
        if not (self.procfs / "self" / "maps").exists():
            return False, f"{self.procfs}/self/maps not found"
        return True, ""

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        out: dict[ProcKey, ProcSample] = {}
        keys = {t.key for t in targets}
        for key in keys:
            vals: dict[str, Value] = dict.fromkeys(self.metrics)
            try:
                with open(self.procfs / str(key.pid) / "maps", "rb") as f:
                    vals["gpu_dev_maps"], vals["gpu_dev_map_bytes"] = parse_maps(f.read())
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone: left out
            except PermissionError:
                self._denied += 1
            except OSError:
                continue
            try:
                vals["gpu_dev_fds"] = len(self.scanner.dri_fds(key))
            except (FileNotFoundError, ProcessLookupError):
                continue
            except OSError:
                self._denied += 1
            out[key] = ProcSample(values=vals)
        self.scanner.forget_except(keys)
        return out

    def health(self) -> dict[str, Any]:
        return {"processes_denied": self._denied, "readlinks": self.scanner.readlinks}
