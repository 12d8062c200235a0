"""NVML sampler: per-GPU counters from the NVIDIA driver, attributed to hinting processes.

Why it looks the way it does:

* NVML is started lazily, under a lock, never at import (a daemon must start on
  a host without a driver), and shut down in close().  The backend is
  injectable: the real one is the ``pynvml`` module, tests pass a
  :class:`~gpuos_hintd.samplers.nvml_replay.ReplayNVML` built from a recording.
* Every NVML call goes through :meth:`NVMLSampler._query` (nvitop's nvmlQuery):
  NVMLError becomes None, NotSupported/FunctionNotFound/NoPermission are logged
  once per function, GpuIsLost marks the device lost - from then on every one
  of its fields is None, and the other GPUs carry on.
* House rule: this module only *reads*.  It never calls nvmlDeviceSet*, reset,
  persistence-mode or clock-setting functions, and never turns accounting on.
* Per-process energy: the device's total-energy counter (mJ) deltas are split
  among the processes on that GPU by their per-process SM utilisation when the
  driver gives it, else evenly among the hinting processes there; what is left
  is the device's residual (see _energy.EnergyLedger, which also copes with the
  counter's ~100 ms update cadence).  Without a counter, power x time is
  integrated and ``gpu_energy_estimated`` is 1.
* Per-span energy: the driver's timestamped power samples
  (``nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)``, ~20 ms apart on an
  H200) are read every tick, from the last timestamp seen, into a
  :class:`~._power.PowerSeries` per GPU, calibrated against the energy counter
  over long windows.  Each process gets them as the series
  ``gpu_power_mw@<index>`` (device power x its share), which the correlator
  integrates over each span's device interval (host interval otherwise).
* PIDs: NVML reports the pids of the pid namespace NVML is called from.  On a
  host, and for a daemon in the host pid namespace, that is the same pid as in
  /proc.  CUDA_VISIBLE_DEVICES does not apply: the daemon watches every GPU
  (indices here are NVML's, which follow PCI bus order, not CUDA's default).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import logging
import threading
import time
from collections.abc import Collection
from typing import Any, ClassVar

from ..errors import SamplerUnavailable
from ..power_model import sample_delay_ns
from ..power_series import PowerSeries
from ._energy import EnergyLedger
from .base import Metric, ProcKey, ProcSample, Sampler, Target, Value

log = logging.getLogger(__name__)

_PROC_UTIL_WINDOW_US = 1_000_000  # on the first call, only the last second of buffered samples counts


class _GpuLost(Exception):
    """Internal: an NVML call said GPU_IS_LOST."""


@dataclasses.dataclass(slots=True)
class _Dev:
    """One GPU: cached handle, last tick's readings and its energy ledger."""

    index: int
    handle: Any | None
    uuid: str | None = None
    name: str | None = None
    lost: bool = False
    read: dict[str, Value] = dataclasses.field(default_factory=dict)
    procs: dict[int, int | None] = dataclasses.field(default_factory=dict)  # pid -> used bytes
    proc_sm: dict[int, float] | None = dataclasses.field(default_factory=dict)  # None: unsupported
    proc_mem: dict[int, float] = dataclasses.field(default_factory=dict)
    util_last_seen_us: int = 0
    util_fresh_ns: int = 0
    util_first: bool = True
    ledger: EnergyLedger = dataclasses.field(default_factory=EnergyLedger)
    split_method: str = "none"
    pcie: tuple[int | None, int | None] = (None, None)  # last (tx, rx) KB/s
    pcie_read_ns: int = 0
    power: PowerSeries = dataclasses.field(default_factory=PowerSeries)
    power_last_us: int = 0
    power_new: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    power_delay_ns: int = 0  # how much earlier than its stamp a sample describes (power_model)
    power_delay_source: str | None = None
    last_counter: float | None = None


_DEVICE_FIELDS = (
    "util_gpu_pct",
    "util_mem_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "power_mw",
    "energy_mj",
    "sm_clock_mhz",
    "throttle_reasons",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
)


#: nvmlValueType_t -> the c_nvmlValue_t member holding it.
_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _wall_minus_mono_ns() -> int:
    return time.time_ns() - time.monotonic_ns()


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class NVMLSampler(Sampler):
    """Per-process GPU figures from NVML (utilisation, memory, power, energy, clocks)."""

    name: ClassVar[str] = "nvml"
    metrics: ClassVar[dict[str, Metric]] = {
        "gpu_devices": Metric("count", "gauge", help="GPUs the process has a compute context on"),
        "gpu_util_pct": Metric("percent", "gauge", help="device GPU utilisation of its GPUs (mean)"),
        "gpu_mem_util_pct": Metric("percent", "gauge", help="device memory-controller utilisation (mean)"),
        "gpu_proc_sm_util_pct": Metric(
            "percent", "gauge", help="the process's own SM utilisation (NVML per-process samples, mean)"
        ),
        "gpu_proc_mem_util_pct": Metric(
            "percent", "gauge", help="the process's own memory-controller utilisation (per-process samples)"
        ),
        "gpu_mem_bytes": Metric("bytes", "gauge", help="GPU memory the process itself uses (sum)"),
        "gpu_power_mw": Metric("milliwatts", "gauge", help="device power draw of its GPUs (sum)"),
        "gpu_energy_mj": Metric(
            "millijoules", "counter", help="the process's attributed share of its GPUs' energy, cumulative"
        ),
        "gpu_energy_estimated": Metric(
            "bool", "gauge", help="1 if energy came from power x time (no energy counter), else 0"
        ),
        "gpu_sm_clock_mhz": Metric("MHz", "gauge", help="SM clock of its GPUs (max)"),
        "gpu_throttle_reasons": Metric(
            "bitmask",
            "gauge",
            help="clock event/throttle reasons of its GPUs, OR-ed (nvmlClocksEventReason*)",
        ),
        "gpu_pcie_tx_bytes_per_s": Metric("bytes/s", "gauge", help="device PCIe TX throughput (sum)"),
        "gpu_pcie_rx_bytes_per_s": Metric("bytes/s", "gauge", help="device PCIe RX throughput (sum)"),
    }

    def __init__(self, backend: Any | None = None, proc_util_hold_s: float = 1.0, pcie_interval_s: float = 5.0) -> None:
        """``backend``: the pynvml module (default, imported lazily) or a ReplayNVML.

        ``pcie_interval_s``: nvmlDeviceGetPcieThroughput measures over a 20 ms
        window inside the call (21 ms each on an H100, two per GPU: measured by
        benchmarks/gpu/nvml_call_cost.py), so it is read at most this often and
        the last value held in between; 0 reads it every tick.
        """
        self._pcie_ns = int(pcie_interval_s * 1e9)
        self._nv: Any | None = backend
        self._lock = threading.Lock()
        self._inited = False
        self._devs: list[_Dev] = []
        self._driver: str | None = None
        self._unsupported: dict[str, str] = {}  # function -> error name, logged once
        self._errors: dict[str, int] = {}  # function -> count of other NVML errors
        self._energy: dict[ProcKey, float] = {}  # cumulative attributed mJ per process
        self._hold_ns = int(proc_util_hold_s * 1e9)
        self._atexit = False

    # -- lifecycle -----------------------------------------------------------
    def _backend(self) -> Any:
        if self._nv is None:
            self._nv = importlib.import_module("pynvml")
        return self._nv

    def _ensure_init(self) -> tuple[bool, str]:
        with self._lock:
            if self._inited:
                return True, ""
            try:
                nv = self._backend()
            except ImportError:
                return False, (
                    "nvidia-ml-py (pynvml) is not installed: install gpuos-hint's nvidia extra "
                    "(in the checkout: pip install -e '.[nvidia]')"
                )
            try:
                nv.nvmlInit()
            except nv.NVMLError_LibraryNotFound:
                return False, "NVML library libnvidia-ml.so.1 not found (no NVIDIA driver installed)"
            except nv.NVMLError_DriverNotLoaded:
                return False, "NVIDIA driver is installed but not loaded (nvmlInit: Driver Not Loaded)"
            except nv.NVMLError_NoPermission:
                return False, "no permission to open the NVIDIA devices (nvmlInit: Insufficient Permissions)"
            except nv.NVMLError as exc:
                return False, f"nvmlInit failed: {exc}"
            try:
                count = int(nv.nvmlDeviceGetCount())
            except nv.NVMLError as exc:
                nv.nvmlShutdown()
                return False, f"nvmlDeviceGetCount failed: {exc}"
            if count == 0:
                nv.nvmlShutdown()
                return False, "NVML is loaded but sees no NVIDIA GPUs"
            self._devs = [self._open_device(i) for i in range(count)]
            try:
                self._driver = str(nv.nvmlSystemGetDriverVersion())
            except nv.NVMLError:
                self._driver = None
            self._inited = True
            if not self._atexit:
                atexit.register(self.close)
                self._atexit = True
            return True, ""

    def _open_device(self, index: int) -> _Dev:
        nv = self._nv
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except nv.NVMLError as exc:
            log.warning("nvml: GPU %d unusable: %s", index, exc)
            return _Dev(index, None, lost=True)
        dev = _Dev(index, handle)
        try:
            dev.uuid = self._query(dev, "nvmlDeviceGetUUID", handle)
            dev.name = self._query(dev, "nvmlDeviceGetName", handle)
        except _GpuLost:
            self._mark_lost(dev)
        dev.power_delay_ns, dev.power_delay_source = sample_delay_ns(dev.name if isinstance(dev.name, str) else None)
        return dev

    def available(self) -> tuple[bool, str]:
        try:
            return self._ensure_init()
        except Exception as exc:  # available() must never raise
            return False, f"NVML probe failed: {exc!r}"

    def close(self) -> None:
        with self._lock:
            if not self._inited:
                return
            self._inited = False
            self._devs = []
            try:
                self._nv.nvmlShutdown()
            except Exception as exc:  # shutting down; nothing to do about it
                log.debug("nvmlShutdown: %s", exc)

    # -- the one wrapper ----------------------------------------------------
    def _query(self, dev: _Dev | None, fname: str, *args: Any, not_found: Any = None) -> Any:
        """Call one NVML function; NVMLError -> None (or ``not_found`` for NotFound)."""
        nv = self._nv
        fn = getattr(nv, fname, None)
        if fn is None:
            self._note_unsupported(fname, "FunctionNotFound", "the pynvml binding lacks it")
            return None
        try:
            return fn(*args)
        except nv.NVMLError_GpuIsLost as exc:
            raise _GpuLost(fname) from exc
        except nv.NVMLError_NotFound:
            return not_found
        except nv.NVMLError_FunctionNotFound:
            self._note_unsupported(fname, "FunctionNotFound", "driver and nvidia-ml-py versions mismatch?")
            return None
        except nv.NVMLError_NotSupported:
            self._note_unsupported(fname, "NotSupported", "this GPU or driver does not support it")
            return None
        except nv.NVMLError_NoPermission:
            self._note_unsupported(fname, "NoPermission", "the daemon may not read it")
            return None
        except nv.NVMLError as exc:
            self._errors[fname] = self._errors.get(fname, 0) + 1
            log.debug("nvml: %s on GPU %s: %s", fname, dev.index if dev else "-", exc)
            return None

    def _note_unsupported(self, fname: str, err: str, why: str) -> None:
        if fname not in self._unsupported:
            self._unsupported[fname] = err
            log.info("nvml: %s unavailable (%s: %s); its fields will be None", fname, err, why)

    def _mark_lost(self, dev: _Dev) -> None:
        if not dev.lost:
            log.warning("nvml: GPU %d (%s) is lost; its fields are None from now on", dev.index, dev.uuid)
        dev.lost, dev.handle = True, None
        dev.read = dict.fromkeys(_DEVICE_FIELDS)
        dev.procs, dev.proc_sm, dev.proc_mem = {}, None, {}
        dev.split_method = "none"

    # -- reading --------------------------------------------------------------
    def _read_device(self, dev: _Dev, now_ns: int) -> None:
        """One tick of one GPU; each NVML call once."""
        if dev.lost or dev.handle is None:
            self._mark_lost(dev)
            return
        nv, h, q = self._nv, dev.handle, self._query
        try:
            util = q(dev, "nvmlDeviceGetUtilizationRates", h)
            mem = q(dev, "nvmlDeviceGetMemoryInfo", h)
            ev = "nvmlDeviceGetCurrentClocksEventReasons"
            reasons = q(dev, ev, h)
            if reasons is None and self._unsupported.get(ev) == "FunctionNotFound":
                reasons = q(dev, "nvmlDeviceGetCurrentClocksThrottleReasons", h)  # drivers < 535
            if now_ns - dev.pcie_read_ns >= self._pcie_ns or dev.pcie_read_ns == 0:
                dev.pcie = (
                    q(dev, "nvmlDeviceGetPcieThroughput", h, nv.NVML_PCIE_UTIL_TX_BYTES),
                    q(dev, "nvmlDeviceGetPcieThroughput", h, nv.NVML_PCIE_UTIL_RX_BYTES),
                )
                dev.pcie_read_ns = now_ns
            tx, rx = dev.pcie
            dev.read = {
                "util_gpu_pct": util.gpu if util is not None else None,
                "util_mem_pct": util.memory if util is not None else None,
                "mem_used_bytes": mem.used if mem is not None else None,
                "mem_total_bytes": mem.total if mem is not None else None,
                "power_mw": q(dev, "nvmlDeviceGetPowerUsage", h),
                "energy_mj": q(dev, "nvmlDeviceGetTotalEnergyConsumption", h),
                "sm_clock_mhz": q(dev, "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM),
                "throttle_reasons": reasons,
                "pcie_tx_bytes_per_s": tx * 1024 if tx is not None else None,  # NVML gives KB/s
                "pcie_rx_bytes_per_s": rx * 1024 if rx is not None else None,
            }
            self._read_power_samples(dev)
            plist = q(dev, "nvmlDeviceGetComputeRunningProcesses", h, not_found=[])
            dev.procs = {int(p.pid): p.usedGpuMemory for p in plist} if plist is not None else {}
            self._read_proc_util(dev, now_ns)
        except _GpuLost:
            self._mark_lost(dev)

    def _read_power_samples(self, dev: _Dev) -> None:
        """New driver power samples since the last one seen, onto the device's series (mono ns, mW)."""
        nv = self._nv
        kind = getattr(nv, "NVML_TOTAL_POWER_SAMPLES", None)
        dev.power_new = []
        if kind is None:
            return
        got = self._query(dev, "nvmlDeviceGetSamples", dev.handle, kind, dev.power_last_us, not_found=None)
        if not got:
            return
        vtype, samples = got
        field = _VALUE_FIELDS.get(int(vtype), "uiVal")
        offset = _wall_minus_mono_ns()
        pts = []
        for smp in samples:
            ts = int(smp.timeStamp)
            if ts <= dev.power_last_us:
                continue
            val = smp.sampleValue
            w = getattr(val, field, None) if not isinstance(val, int | float) else val
            if w is None:
                continue
            # NVML's sample timestamps are CPU wall-clock microseconds; spans are CLOCK_MONOTONIC.
            # A sample stamped before this host booted (a replayed recording's history, or a
            # clock step) has no monotonic time: skip it rather than keep a wall-clock value,
            # which would put every later sample out of order.
            if ts * 1000 <= offset:
                continue
            # Stamped when the driver took it, a sample describes power a little earlier on some
            # GPUs (measured per model: power_model.SAMPLE_DELAY_NS); put it where it belongs.
            pts.append((ts * 1000 - offset - dev.power_delay_ns, float(w)))
            dev.power_last_us = max(dev.power_last_us, ts)
        dev.power_new = dev.power.add(pts)

    def _read_proc_util(self, dev: _Dev, now_ns: int) -> None:
        """Per-process SM/memory utilisation since the last seen sample (NVML timestamps, us)."""
        samples = self._query(dev, "nvmlDeviceGetProcessUtilization", dev.handle, dev.util_last_seen_us, not_found=[])
        first, dev.util_first = dev.util_first, False
        if samples is None:
            dev.proc_sm, dev.proc_mem = None, {}
            return
        if dev.proc_sm is None:
            dev.proc_sm = {}
        if not samples:
            # No sample newer than the last: NVML samples at its own period (~1/6 s);
            # hold the last values for a while, then read it as "nobody busy"
            # (NVML lists only processes with non-zero utilisation).
            if now_ns - dev.util_fresh_ns > self._hold_ns:
                dev.proc_sm, dev.proc_mem = {}, {}
            return
        newest = max(int(s.timeStamp) for s in samples)
        if first:
            samples = [s for s in samples if int(s.timeStamp) >= newest - _PROC_UTIL_WINDOW_US]
        sm: dict[int, list[float]] = {}
        mu: dict[int, list[float]] = {}
        for s in samples:
            sm.setdefault(int(s.pid), []).append(float(s.smUtil))
            mu.setdefault(int(s.pid), []).append(float(s.memUtil))
        dev.proc_sm = {pid: sum(v) / len(v) for pid, v in sm.items()}
        dev.proc_mem = {pid: sum(v) / len(v) for pid, v in mu.items()}
        dev.util_last_seen_us = newest
        dev.util_fresh_ns = now_ns

    @staticmethod
    def _on(dev: _Dev, pid: int) -> bool:
        return not dev.lost and (pid in dev.procs or (dev.proc_sm is not None and pid in dev.proc_sm))

    def _shares(self, dev: _Dev, by_pid: dict[int, ProcKey]) -> dict[ProcKey, float]:
        """This tick's fraction of the device's energy per watched process on it."""
        here = [key for pid, key in by_pid.items() if self._on(dev, pid)]
        if not here:
            dev.split_method = "none"
            return {}
        if dev.proc_sm is not None:
            total = sum(dev.proc_sm.values())  # includes processes we don't watch -> residual
            if total > 0:
                dev.split_method = "sm_util"
                return {k: dev.proc_sm.get(k.pid, 0.0) / total for k in here}
        dev.split_method = "even"
        return {k: 1.0 / len(here) for k in here}

    def sample(self, targets: Collection[Target], now_ns: int) -> dict[ProcKey, ProcSample]:
        if not self._inited:
            ok, why = self._ensure_init()
            if not ok:
                raise SamplerUnavailable(why)
        for dev in self._devs:
            self._read_device(dev, now_ns)
        by_pid = {t.key.pid: t.key for t in targets}
        series: dict[ProcKey, dict[str, list[tuple[int, float]]]] = {}
        for dev in self._devs:
            if dev.lost:
                continue
            shares = self._shares(dev, by_pid)
            counter = dev.read.get("energy_mj")
            if counter is not None and dev.last_counter is not None and counter != dev.last_counter:
                dev.power.note_counter(now_ns, float(counter))
            dev.last_counter = counter
            got = dev.ledger.update(now_ns, counter, dev.read.get("power_mw"), shares)
            for key, mj in got.items():
                self._energy[key] = self._energy.get(key, 0.0) + mj  # type: ignore[index]
            if dev.power_new:
                scale = dev.power.scale or 1.0
                for key, frac in shares.items():
                    pts = [(t, w * frac * scale) for t, w in dev.power_new]
                    series.setdefault(key, {})[f"gpu_power_mw@{dev.index}"] = pts  # type: ignore[index]
        wanted = set(by_pid.values())
        for key in [k for k in self._energy if k not in wanted]:
            del self._energy[key]  # bounded state: forget processes no longer watched
        return {key: ProcSample(values=self._values(key), series=series.get(key, {})) for key in wanted}

    def _values(self, key: ProcKey) -> dict[str, Value]:
        devs = [d for d in self._devs if self._on(d, key.pid)]
        out: dict[str, Value] = dict.fromkeys(self.metrics)
        out["gpu_devices"] = len(devs)
        out["gpu_energy_mj"] = round(self._energy.get(key, 0.0), 3)
        if not devs:
            return out

        def vals(field: str) -> list[Any]:
            return [d.read[field] for d in devs if d.read.get(field) is not None]

        out["gpu_util_pct"] = _mean(vals("util_gpu_pct"))
        out["gpu_mem_util_pct"] = _mean(vals("util_mem_pct"))
        sm = [d.proc_sm.get(key.pid, 0.0) for d in devs if d.proc_sm is not None]
        out["gpu_proc_sm_util_pct"] = _mean(sm)
        out["gpu_proc_mem_util_pct"] = _mean([d.proc_mem.get(key.pid, 0.0) for d in devs if d.proc_sm is not None])
        mem = [d.procs[key.pid] for d in devs if d.procs.get(key.pid) is not None]
        out["gpu_mem_bytes"] = sum(mem) if mem else None
        for metric, field in (
            ("gpu_power_mw", "power_mw"),
            ("gpu_pcie_tx_bytes_per_s", "pcie_tx_bytes_per_s"),
            ("gpu_pcie_rx_bytes_per_s", "pcie_rx_bytes_per_s"),
        ):
            xs = vals(field)
            out[metric] = sum(xs) if xs else None
        clocks = vals("sm_clock_mhz")
        out["gpu_sm_clock_mhz"] = max(clocks) if clocks else None
        reasons = vals("throttle_reasons")
        acc = 0
        for r in reasons:
            acc |= int(r)
        out["gpu_throttle_reasons"] = acc if reasons else None
        out["gpu_energy_estimated"] = int(any(d.ledger.estimated for d in devs))
        return out

    # -- status -------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        out = []
        for d in list(self._devs):
            row: dict[str, Any] = {"index": d.index, "uuid": d.uuid, "name": d.name, "lost": d.lost}
            row.update({f: d.read.get(f) for f in _DEVICE_FIELDS})
            row["energy_estimated"] = d.ledger.estimated
            row["energy_counter_update_interval_ms"] = d.ledger.update_interval_ms()
            row["energy_split_method"] = d.split_method
            row["energy_residual_mj"] = round(d.ledger.residual_mj, 3)
            row["power_samples_period_ms"] = d.power.period_ns / 1e6 if d.power.period_ns else None
            row["power_samples_scale"] = round(d.power.scale, 4) if d.power.scale else None
            row["power_samples_scale_window_s"] = round(d.power.scale_window_ns / 1e9, 1)
            row["power_samples_delay_ms"] = d.power_delay_ns / 1e6
            row["power_samples_delay_source"] = d.power_delay_source
            row["processes"] = [
                {"pid": pid, "used_bytes": used, "sm_util_pct": (d.proc_sm or {}).get(pid)}
                for pid, used in sorted(d.procs.items())
            ]
            out.append(row)
        return out

    def health(self) -> dict[str, Any]:
        return {
            "initialised": self._inited,
            "driver_version": self._driver,
            "device_count": len(self._devs),
            "lost_devices": [d.index for d in self._devs if d.lost],
            "unsupported": dict(self._unsupported),
            "errors": dict(self._errors),
            "energy": {
                d.index: {
                    "split_method": d.split_method,
                    **d.ledger.summary(),
                    "power_samples_period_ms": d.power.period_ns / 1e6 if d.power.period_ns else None,
                    "power_samples_scale": round(d.power.scale, 4) if d.power.scale else None,
                    "power_samples_scale_window_s": round(d.power.scale_window_ns / 1e9, 1),
                    "power_samples_delay_ms": d.power_delay_ns / 1e6,
                }
                for d in self._devs
                if not d.lost
            },
        }
