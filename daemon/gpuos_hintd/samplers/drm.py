"""DRM fdinfo sampler: per-client GPU engine time and memory from /proc/PID/fdinfo.

Why: open-source GPU drivers (amdgpu, i915, xe, msm, panfrost/panthor, v3d,
nouveau/nvidia-open where present) publish per-client usage in the fdinfo of
each DRM file descriptor, in the common format of the kernel's
Documentation/gpu/drm-usage-stats.rst.  That is per-process GPU busy time with
no vendor library and no privilege beyond reading the process's /proc.  The
proprietary NVIDIA driver publishes none (DESIGN 10): there, this sampler
reports ``drm_clients`` = 0 and Nones.

Parsing (drm-usage-stats.rst): ``key:<whitespace>value[ unit]`` lines;
``drm-driver``, ``drm-client-id``, ``drm-pdev``; ``drm-engine-<e>: <n> ns``
(cumulative busy time), ``drm-cycles-<e>`` and ``drm-total-cycles-<e>`` (xe:
busy and total GPU cycles), ``drm-maxfreq-<e>``; memory as
``drm-{total,shared,resident,active,purgeable}-<region>`` or the older
``drm-memory-<region>``, with optional KiB/MiB/GiB units.  A client may sit
behind several fds (dup, fork): clients are de-duplicated by
(driver, pdev, client-id).

Engine names differ per driver; they are folded into five classes (gfx,
compute, copy, video, other) so metric names stay declared and bounded.

Cost: only fds whose link starts with /dev/dri/ have their fdinfo read.  The
fd -> is-DRM decision is cached per process and re-checked for fds that are new
since the last tick, and for all fds every ``refresh_ticks`` ticks (an fd
number closed and reused for a DRM file between two ticks is noticed then).
Counters stay monotone when a client closes: its last values are kept.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

from ..procfs import PROCFS
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value

ENGINE_CLASSES: tuple[str, ...] = ("gfx", "compute", "copy", "video", "other")

# Driver engine names -> class.  amdgpu: gfx compute dma dec enc jpeg vpe (+ _N);
# i915: render copy video video-enhance compute; xe: rcs bcs vcs vecs ccs other.
_ENGINE_MAP: dict[str, str] = {
    "gfx": "gfx",
    "render": "gfx",
    "rcs": "gfx",
    "3d": "gfx",
    "fragment": "gfx",
    "vertex-tiler": "gfx",
    "compute": "compute",
    "ccs": "compute",
    "copy": "copy",
    "dma": "copy",
    "bcs": "copy",
    "sdma": "copy",
    "blit": "copy",
    "video": "video",
    "video-enhance": "video",
    "vcs": "video",
    "vecs": "video",
    "dec": "video",
    "enc": "video",
    "jpeg": "video",
    "vcn": "video",
    "uvd": "video",
    "vce": "video",
}
_ENGINE_SUFFIX = re.compile(r"[-_]?\d+$")
_MEM_KINDS = ("total", "shared", "resident", "active", "purgeable")
_UNITS = {
    b"": 1,
    b"B": 1,
    b"KiB": 1 << 10,
    b"MiB": 1 << 20,
    b"GiB": 1 << 30,
    b"ns": 1,
    b"Hz": 1,
    b"MHz": 10**6,
}
_LOCAL_REGIONS = ("vram", "local")


def engine_class(name: str) -> str:
    """Fold a driver's engine name into one of ENGINE_CLASSES ("enc_1" -> video, "vcs0" -> video)."""
    name = name.lower()
    if name in _ENGINE_MAP:
        return _ENGINE_MAP[name]
    return _ENGINE_MAP.get(_ENGINE_SUFFIX.sub("", name), "other")


@dataclasses.dataclass(slots=True)
class DrmClient:
    """One DRM client (open DRM file description) as its fdinfo describes it."""

    driver: str
    client_id: str | None = None
    pdev: str | None = None
    engine_ns: dict[str, int] = dataclasses.field(default_factory=dict)
    cycles: dict[str, int] = dataclasses.field(default_factory=dict)
    total_cycles: dict[str, int] = dataclasses.field(default_factory=dict)
    maxfreq_hz: dict[str, int] = dataclasses.field(default_factory=dict)
    capacity: dict[str, int] = dataclasses.field(default_factory=dict)
    memory: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (kind, region) -> bytes

    @property
    def ident(self) -> tuple[str, str | None, str | None]:
        return (self.driver, self.pdev, self.client_id)

    def mem_bytes(self, local_only: bool = False) -> int | None:
        """Resident memory over regions; else total; else the older drm-memory-<region>."""
        for kind in ("resident", "total", "memory"):
            vals = [
                v
                for (k, region), v in self.memory.items()
                if k == kind and (not local_only or region.startswith(_LOCAL_REGIONS))
            ]
            if any(k == kind for k, _ in self.memory):
                return sum(vals)
        return None


def _number(raw: bytes) -> int | None:
    parts = raw.split()
    if not parts or not parts[0].isdigit():
        return None
    unit = parts[1] if len(parts) > 1 else b""
    mult = _UNITS.get(unit)
    return int(parts[0]) * mult if mult is not None else None


def parse_fdinfo(data: bytes) -> DrmClient | None:
    """Parse one /proc/PID/fdinfo/N; None if it is not a DRM client with usage stats."""
    fields: dict[str, bytes] = {}
    for line in data.splitlines():
        key, sep, val = line.partition(b":")
        if sep and key.startswith(b"drm-"):
            fields[key.decode("ascii", "replace")] = val.strip()
    if "drm-driver" not in fields:
        return None
    c = DrmClient(driver=fields.pop("drm-driver").decode("utf-8", "replace"))
    if "drm-client-id" in fields:
        c.client_id = fields.pop("drm-client-id").decode("ascii", "replace")
    if "drm-pdev" in fields:
        c.pdev = fields.pop("drm-pdev").decode("ascii", "replace")
    for key, raw in fields.items():
        rest = key[4:]
        n = _number(raw)
        if n is None:
            continue
        if rest.startswith("engine-capacity-"):
            c.capacity[rest[16:]] = n
        elif rest.startswith("engine-"):
            c.engine_ns[rest[7:]] = n
        elif rest.startswith("total-cycles-"):
            c.total_cycles[rest[13:]] = n
        elif rest.startswith("cycles-"):
            c.cycles[rest[7:]] = n
        elif rest.startswith("maxfreq-"):
            c.maxfreq_hz[rest[8:]] = n
        elif rest.startswith("memory-"):
            c.memory[("memory", rest[7:])] = n
        else:
            kind, _, region = rest.partition("-")
            if kind in _MEM_KINDS and region:
                c.memory[(kind, region)] = n
    return c


@dataclasses.dataclass(slots=True)
class _FdState:
    fds: frozenset[str] = frozenset()
    dri: dict[str, str] = dataclasses.field(default_factory=dict)  # fd -> /dev/dri/... link
    ticks: int = 0


class DrmScanner:
    """Finds a process's DRM fds (cached) and parses their fdinfo.  Shared with the ROCm and
    maps samplers (``prefixes`` picks which fd links count: /dev/dri/ by default)."""

    def __init__(
        self, procfs: Path = PROCFS, refresh_ticks: int = 50, prefixes: tuple[str, ...] = ("/dev/dri/",)
    ) -> None:
        self.procfs = Path(procfs)
        self.prefixes = prefixes
        self.refresh_ticks = refresh_ticks
        self._state: dict[ProcKey, _FdState] = {}
        self.readlinks = 0  # for tests and health: how much work the cache saved
        self.fdinfo_reads = 0

    def dri_fds(self, key: ProcKey) -> dict[str, str]:
        """fd -> link for fds under ``prefixes``; OSError if /proc/PID/fd is unreadable."""
        fd_dir = self.procfs / str(key.pid) / "fd"
        names = frozenset(os.listdir(fd_dir))
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = _FdState()
        full = st.ticks % self.refresh_ticks == 0
        st.ticks += 1
        if not full and names == st.fds:
            return st.dri
        check = names if full else names - st.fds
        dri = {fd: link for fd, link in st.dri.items() if fd in names and not full}
        for fd in check:
            try:
                link = os.readlink(fd_dir / fd)
            except OSError:
                continue  # closed meanwhile
            self.readlinks += 1
            if link.startswith(self.prefixes):
                dri[fd] = link
        st.fds, st.dri = names, dri
        return dri

    def clients(self, key: ProcKey, dri: dict[str, str]) -> list[DrmClient]:
        """De-duplicated DRM clients behind the given fds."""
        out: dict[tuple[str, str | None, str | None], DrmClient] = {}
        base = self.procfs / str(key.pid) / "fdinfo"
        for fd in sorted(dri, key=lambda s: int(s) if s.isdigit() else 0):
            try:
                with open(base / fd, "rb", buffering=0) as f:
                    data = f.read(65536)
            except OSError:
                continue
            self.fdinfo_reads += 1
            c = parse_fdinfo(data)
            if c is not None:
                ident = c.ident if c.client_id is not None else (c.driver, c.pdev, f"fd{fd}")
                out.setdefault(ident, c)
        return list(out.values())

    def forget_except(self, keys: Collection[ProcKey]) -> None:
        for k in [k for k in self._state if k not in keys]:
            del self._state[k]


def _engine_metrics() -> dict[str, Metric]:
    m: dict[str, Metric] = {}
    for cls in ENGINE_CLASSES:
        m[f"drm_engine_{cls}_ns"] = Metric("ns", "counter", help=f"busy time on {cls} engines (fdinfo)")
        m[f"drm_engine_{cls}_cycles"] = Metric("cycles", "counter", help=f"busy cycles on {cls} engines")
        m[f"drm_engine_{cls}_total_cycles"] = Metric(
            "cycles", "counter", help=f"total GPU cycles of {cls} engines (busy share = cycles/total)"
        )
    return m


class DRMSampler(Sampler):
    """Per-process GPU engine time and memory from DRM fdinfo."""

    name: ClassVar[str] = "drm"
    metrics: ClassVar[dict[str, Metric]] = {
        "drm_clients": Metric("count", "gauge", help="distinct DRM clients (de-duplicated fds)"),
        "drm_mem_bytes": Metric("bytes", "gauge", help="GPU buffer memory of its clients, all regions"),
        "drm_mem_vram_bytes": Metric("bytes", "gauge", help="same, device-local regions only (vram*, local*)"),
        **_engine_metrics(),
    }

    def __init__(self, procfs: Path = PROCFS, refresh_ticks: int = 50) -> None:
        self.scanner = DrmScanner(procfs, refresh_ticks)
        self._last: dict[ProcKey, dict[tuple[Any, ...], DrmClient]] = {}
        self._retired: dict[ProcKey, dict[str, int]] = {}  # counters of closed clients
        self._denied = 0
        self._drivers: set[str] = set()

    def available(self) -> tuple[bool, str]:
        if not (self.scanner.procfs / "self" / "fdinfo").is_dir():
            return False, f"{self.scanner.procfs}/self/fdinfo not readable"
        return True, ""

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        out: dict[ProcKey, ProcSample] = {}
        keys = {t.key for t in targets}
        for key in keys:
            try:
                dri = self.scanner.dri_fds(key)
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone: left out of this tick
            except PermissionError:
                self._denied += 1
                out[key] = ProcSample(values=dict.fromkeys(self.metrics))
                continue
            except OSError:
                continue
            clients = self.scanner.clients(key, dri) if dri else []
            out[key] = ProcSample(values=self._values(key, clients))
        self.scanner.forget_except(keys)
        for store in (self._last, self._retired):
            for k in [k for k in store if k not in keys]:
                del store[k]
        return out

    def _values(self, key: ProcKey, clients: list[DrmClient]) -> dict[str, Value]:
        vals: dict[str, Value] = dict.fromkeys(self.metrics)
        vals["drm_clients"] = len(clients)
        current = {c.ident: c for c in clients}
        # A client that closed keeps its last counts, so the process's counters never go back.
        retired = self._retired.setdefault(key, {})
        for ident, old in self._last.get(key, {}).items():
            if ident not in current:
                for metric, v in _client_counters(old).items():
                    retired[metric] = retired.get(metric, 0) + v
        self._last[key] = current
        totals: dict[str, int] = dict(retired)
        for c in clients:
            self._drivers.add(c.driver)
            for metric, v in _client_counters(c).items():
                totals[metric] = totals.get(metric, 0) + v
        vals.update(totals)
        mem = [m for m in (c.mem_bytes() for c in clients) if m is not None]
        vram = [m for m in (c.mem_bytes(local_only=True) for c in clients) if m is not None]
        vals["drm_mem_bytes"] = sum(mem) if mem else None
        vals["drm_mem_vram_bytes"] = sum(vram) if vram else None
        return vals

    def health(self) -> dict[str, Any]:
        return {
            "drivers_seen": sorted(self._drivers),
            "processes_denied": self._denied,
            "readlinks": self.scanner.readlinks,
            "fdinfo_reads": self.scanner.fdinfo_reads,
        }


def _client_counters(c: DrmClient) -> dict[str, int]:
    out: dict[str, int] = {}
    for table, suffix in ((c.engine_ns, "ns"), (c.cycles, "cycles"), (c.total_cycles, "total_cycles")):
        for engine, v in table.items():
            metric = f"drm_engine_{engine_class(engine)}_{suffix}"
            out[metric] = out.get(metric, 0) + v
    return out
