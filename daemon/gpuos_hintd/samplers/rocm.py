"""AMD GPU sampler: amdgpu sysfs (or pyamdgpuinfo) per card, attributed via DRM fdinfo.

Why sysfs first: the amdgpu driver publishes everything we need as small text
files (Documentation/gpu/amdgpu/thermal.rst and driver-misc): gpu_busy_percent,
mem_busy_percent, mem_info_vram_used/total, pp_dpm_sclk (the current level is
the line marked ``*``) and hwmon power1_average / power1_input (microwatts),
plus energy1_input (microjoules) where the hwmon exposes it.  Reading them
needs no library and works in tests against a recorded tree: the sysfs root
is a constructor argument.  pyamdgpuinfo, when it imports and finds GPUs on the
real /sys, supplies load/VRAM/power/sclk instead (it samples the busy register
itself); it is optional and untested here (no AMD GPU).

Per process: DRM fdinfo (drm.py) tells which card a process uses (drm-pdev) and
its engine busy time; energy deltas are split by each process's gfx+compute
busy fraction relative to the device's busy fraction (the rest is residual),
else evenly among the hinting processes on the card.  Processes whose driver
gives no fdinfo stats still get device figures if they hold /dev/dri/renderD*
or card* open (mapped to the card through sysfs).

Metric names carry an ``amdgpu_`` prefix so they never collide with NVML's
``gpu_*`` on a mixed host (the registry rejects duplicates).  Read-only: no
writes to power_dpm_force_performance_level, pp_od_clk_voltage or any other
control file, ever.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

from ..power_series import PowerSeries
from ..procfs import PROCFS
from ._energy import EnergyLedger
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value
from .drm import DrmClient, DrmScanner

log = logging.getLogger(__name__)

_CARD = re.compile(r"^card\d+$")
_SCLK = re.compile(rb"(\d+)\s*mhz", re.IGNORECASE)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_bytes().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _slot(device_dir: Path) -> str | None:
    """PCI slot (0000:03:00.0) from device/uevent, which works for symlinks and recorded trees alike."""
    try:
        for line in (device_dir / "uevent").read_text().splitlines():
            if line.startswith("PCI_SLOT_NAME="):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def parse_sclk(data: bytes) -> int | None:
    """Current level of pp_dpm_sclk ("1: 2100Mhz *") in MHz."""
    for line in data.splitlines():
        if line.rstrip().endswith(b"*"):
            m = _SCLK.search(line)
            if m:
                return int(m.group(1))
    return None


@dataclasses.dataclass(slots=True)
class _Card:
    name: str
    device: Path
    slot: str | None
    hwmon: Path | None
    read: dict[str, Value] = dataclasses.field(default_factory=dict)
    ledger: EnergyLedger = dataclasses.field(default_factory=EnergyLedger)
    split_method: str = "none"
    #: hwmon power read at each tick, as a power series (hwmon keeps no timestamped history of
    #: its own, so the resolution is the tick), calibrated against energy1_input where present.
    power: PowerSeries = dataclasses.field(default_factory=lambda: PowerSeries(4096))
    last_energy: float | None = None


class ROCmSampler(Sampler):
    """Per-process AMD GPU figures from amdgpu sysfs/hwmon and DRM fdinfo."""

    name: ClassVar[str] = "rocm"
    metrics: ClassVar[dict[str, Metric]] = {
        "amdgpu_devices": Metric("count", "gauge", help="AMD GPUs the process has open"),
        "amdgpu_util_pct": Metric("percent", "gauge", help="gpu_busy_percent of its GPUs (mean)"),
        "amdgpu_mem_busy_pct": Metric("percent", "gauge", help="mem_busy_percent of its GPUs (mean)"),
        "amdgpu_vram_bytes": Metric("bytes", "gauge", help="VRAM of the process's own clients (fdinfo)"),
        "amdgpu_power_mw": Metric("milliwatts", "gauge", help="hwmon power of its GPUs (sum)"),
        "amdgpu_energy_mj": Metric("millijoules", "counter", help="attributed share of its GPUs' energy"),
        "amdgpu_energy_estimated": Metric("bool", "gauge", help="1 if from power x time (no energy1_input)"),
        "amdgpu_sclk_mhz": Metric("MHz", "gauge", help="current shader clock of its GPUs (max)"),
    }

    def __init__(self, sysfs: Path = Path("/sys"), procfs: Path = PROCFS, use_pyamdgpuinfo: bool | None = None) -> None:
        self.sysfs = Path(sysfs)
        self.scanner = DrmScanner(procfs)
        self._cards: list[_Card] | None = None
        self._node_slot: dict[str, str | None] = {}  # "renderD128" -> PCI slot
        self._energy: dict[ProcKey, float] = {}
        self._last_busy_ns: dict[tuple[ProcKey, str], int] = {}
        self._pyamd: dict[str, Any] = {}  # slot -> pyamdgpuinfo GPUInfo
        self._want_pyamd = use_pyamdgpuinfo if use_pyamdgpuinfo is not None else self.sysfs == Path("/sys")
        self._last_t: int | None = None

    # -- discovery ------------------------------------------------------------
    def _discover(self) -> list[_Card]:
        if self._cards is not None:
            return self._cards
        cards = []
        drm = self.sysfs / "class" / "drm"
        for entry in sorted(drm.glob("card*")) if drm.is_dir() else []:
            if not _CARD.match(entry.name):
                continue  # connectors: card0-DP-1
            dev = entry / "device"
            try:
                driver = next(ln for ln in (dev / "uevent").read_text().splitlines() if ln.startswith("DRIVER="))
            except (OSError, StopIteration):
                continue
            if driver != "DRIVER=amdgpu":
                continue
            hwmons = sorted((dev / "hwmon").glob("hwmon*")) if (dev / "hwmon").is_dir() else []
            cards.append(_Card(entry.name, dev, _slot(dev), hwmons[0] if hwmons else None))
        self._cards = cards
        if cards and self._want_pyamd:
            self._open_pyamdgpuinfo()
        return cards

    def _open_pyamdgpuinfo(self) -> None:
        try:
            import pyamdgpuinfo  # type: ignore[import-not-found]

            for i in range(pyamdgpuinfo.detect_gpus()):
                gpu = pyamdgpuinfo.get_gpu(i)
                self._pyamd[str(gpu.pci_slot)] = gpu
        except Exception as exc:  # ImportError, FileNotFoundError without /dev/dri, ...
            log.info("rocm: pyamdgpuinfo not used (%s); reading sysfs", exc)
            self._pyamd = {}

    def available(self) -> tuple[bool, str]:
        try:
            cards = self._discover()
        except OSError as exc:
            return False, f"cannot read {self.sysfs}/class/drm: {exc}"
        if not cards:
            self._cards = None  # look again on the next probe (driver loaded later)
            return False, f"no amdgpu GPU under {self.sysfs}/class/drm"
        return True, ""

    # -- reading ----------------------------------------------------------------
    def _read_card(self, c: _Card) -> None:
        d = c.device
        r: dict[str, Value] = {
            "busy_pct": _read_int(d / "gpu_busy_percent"),
            "mem_busy_pct": _read_int(d / "mem_busy_percent"),
            "vram_used_bytes": _read_int(d / "mem_info_vram_used"),
            "vram_total_bytes": _read_int(d / "mem_info_vram_total"),
            "sclk_mhz": None,
            "power_mw": None,
            "energy_mj": None,
        }
        try:
            r["sclk_mhz"] = parse_sclk((d / "pp_dpm_sclk").read_bytes())
        except OSError:
            pass
        if c.hwmon is not None:
            uw = _read_int(c.hwmon / "power1_average")
            if uw is None:
                uw = _read_int(c.hwmon / "power1_input")
            uj = _read_int(c.hwmon / "energy1_input")
            r["power_mw"] = uw / 1000 if uw is not None else None
            r["energy_mj"] = uj / 1000 if uj is not None else None
        gpu = self._pyamd.get(c.slot or "")
        if gpu is not None:
            for field, fn, scale in (
                ("busy_pct", "query_load", 100.0),
                ("vram_used_bytes", "query_vram_usage", 1),
                ("power_mw", "query_power", 1000.0),
                ("sclk_mhz", "query_sclk", 1e-6),
            ):
                try:
                    r[field] = getattr(gpu, fn)() * scale
                except Exception:  # keep the sysfs value
                    pass
        c.read = r

    def _slot_of_node(self, link: str) -> str | None:
        node = link.rsplit("/", 1)[-1]
        if node not in self._node_slot:
            self._node_slot[node] = _slot(self.sysfs / "class" / "drm" / node / "device")
        return self._node_slot[node]

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        cards = self._discover()
        for c in cards:
            self._read_card(c)
        by_slot = {c.slot: c for c in cards}
        dt = now_ns - self._last_t if self._last_t is not None else 0
        self._last_t = now_ns
        # Which cards each process uses, its clients per card, its busy ns per card.
        uses: dict[ProcKey, dict[str, list[DrmClient]]] = {}
        for t in targets:
            try:
                dri = self.scanner.dri_fds(t.key)
            except OSError:
                continue  # gone or forbidden: nothing to attribute
            per: dict[str, list[DrmClient]] = {}
            for link in dri.values():
                slot = self._slot_of_node(link)
                if slot in by_slot:
                    per.setdefault(slot, [])
            for client in self.scanner.clients(t.key, dri) if dri else []:
                if client.pdev in by_slot:
                    per.setdefault(client.pdev, []).append(client)
            uses[t.key] = per
        series: dict[ProcKey, dict[str, list[tuple[int, float]]]] = {}
        for c in cards:
            shares = self._shares(c, uses, dt)
            got = c.ledger.update(now_ns, c.read.get("energy_mj"), c.read.get("power_mw"), shares)
            for key, mj in got.items():
                self._energy[key] = self._energy.get(key, 0.0) + mj  # type: ignore[index]
            pw, e = c.read.get("power_mw"), c.read.get("energy_mj")
            if pw is not None and c.power.add([(now_ns, float(pw))]):
                if e is not None and c.last_energy is not None and e != c.last_energy:
                    c.power.note_counter(now_ns, float(e))
                scale = c.power.scale or 1.0
                for key, frac in shares.items():
                    series.setdefault(key, {})[f"gpu_power_mw@amd:{c.name}"] = [(now_ns, float(pw) * frac * scale)]
            c.last_energy = e
        keys = {t.key for t in targets}
        for k in [k for k in self._energy if k not in keys]:
            del self._energy[k]  # bounded state: forget processes no longer watched
        for kb in [kb for kb in self._last_busy_ns if kb[0] not in keys]:
            del self._last_busy_ns[kb]
        self.scanner.forget_except(keys)
        return {
            key: ProcSample(values=self._values(key, uses.get(key, {}), by_slot), series=series.get(key, {}))
            for key in keys
        }

    def _shares(self, c: _Card, uses: dict[ProcKey, dict[str, list[DrmClient]]], dt: int) -> dict[ProcKey, float]:
        here = {k: per[c.slot] for k, per in uses.items() if c.slot in per}
        if not here:
            c.split_method = "none"
            return {}
        busy: dict[ProcKey, float] = {}
        for key, clients in here.items():
            ns = sum(v for cl in clients for e, v in cl.engine_ns.items() if e in ("gfx", "compute"))
            if not clients or not any(cl.engine_ns for cl in clients):
                continue
            prev = self._last_busy_ns.get((key, c.slot or ""))
            self._last_busy_ns[(key, c.slot or "")] = ns
            if prev is not None and dt > 0:
                busy[key] = max(ns - prev, 0) / dt
        if busy and len(busy) == len(here) and sum(busy.values()) > 0:
            device_busy = (c.read.get("busy_pct") or 0) / 100.0
            denom = max(device_busy, sum(busy.values()))
            c.split_method = "fdinfo_busy"
            return {k: b / denom for k, b in busy.items()}
        c.split_method = "even"
        return {k: 1.0 / len(here) for k in here}

    def _values(self, key: ProcKey, per: dict[str, list[DrmClient]], by_slot: dict[Any, _Card]) -> dict[str, Value]:
        out: dict[str, Value] = dict.fromkeys(self.metrics)
        cards = [by_slot[s] for s in per]
        out["amdgpu_devices"] = len(cards)
        out["amdgpu_energy_mj"] = round(self._energy.get(key, 0.0), 3)
        if not cards:
            return out

        def vals(field: str) -> list[Any]:
            return [c.read[field] for c in cards if c.read.get(field) is not None]

        busy, mem_busy, power, sclk = (
            vals("busy_pct"),
            vals("mem_busy_pct"),
            vals("power_mw"),
            vals("sclk_mhz"),
        )
        out["amdgpu_util_pct"] = sum(busy) / len(busy) if busy else None
        out["amdgpu_mem_busy_pct"] = sum(mem_busy) / len(mem_busy) if mem_busy else None
        out["amdgpu_power_mw"] = sum(power) if power else None
        out["amdgpu_sclk_mhz"] = max(sclk) if sclk else None
        vram = [m for cl in (c for cs in per.values() for c in cs) if (m := cl.mem_bytes(local_only=True)) is not None]
        out["amdgpu_vram_bytes"] = sum(vram) if vram else None
        out["amdgpu_energy_estimated"] = int(any(c.ledger.estimated for c in cards))
        return out

    def devices(self) -> list[dict[str, Any]]:
        return [
            {
                "card": c.name,
                "pci_slot": c.slot,
                **c.read,
                "energy_estimated": c.ledger.estimated,
                "energy_counter_update_interval_ms": c.ledger.update_interval_ms(),
                "energy_split_method": c.split_method,
                "energy_residual_mj": round(c.ledger.residual_mj, 3),
                "power_samples_scale": round(c.power.scale, 4) if c.power.scale else None,
                "source": "pyamdgpuinfo+sysfs" if c.slot in self._pyamd else "sysfs",
            }
            for c in self._cards or []
        ]

    def health(self) -> dict[str, Any]:
        return {
            "sysfs": str(self.sysfs),
            "cards": [c.name for c in self._cards or []],
            "pyamdgpuinfo": sorted(self._pyamd),
            "energy": {c.name: {"split_method": c.split_method, **c.ledger.summary()} for c in self._cards or []},
        }
