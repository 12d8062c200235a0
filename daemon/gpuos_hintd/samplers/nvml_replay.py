"""ReplayNVML: the subset of pynvml the NVML sampler calls, answered from a recording.

Why: this project's CI and dev machines have no NVIDIA driver, and hand-written
mocks of NVML encode what we *think* it returns.  A recording made on a real GPU
(benchmarks/gpu/record_nvml.py) encodes what it *does* return, errors included,
and the sampler runs unchanged against it (zeus's ReplayZeusMonitor idea).

Recording format (JSON, one object; ``version`` 1)::

    {
      "format": "gpuos-hint/nvml-recording", "version": 1,
      "synthetic": false,                 # true for hand-made fixtures - say so!
      "description": "...", "host": {...}, "workload": {"pids": [...], ...},
      "init_error": null,                 # or an error name, e.g. "LibraryNotFound"
      "nvmlSystemGetDriverVersion": "580.65.06",
      "nvmlDeviceGetCount": 1,
      "devices": [                        # static, per index
        {"nvmlDeviceGetUUID": "GPU-...", "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3"}
      ],
      "frames": [                         # one per sampling instant, in time order
        {"t_ns": 0,                       # CLOCK_MONOTONIC offset from the first frame
         "wall_ns": 1700000000000000000,
         "devices": [                     # per index; {"error": "GpuIsLost"} = every call fails
           {"nvmlDeviceGetUtilizationRates": {"gpu": 97, "memory": 41},
            "nvmlDeviceGetMemoryInfo": {"total": 85520809984, "free": ..., "used": ...},
            "nvmlDeviceGetPowerUsage": 412345,                # mW
            "nvmlDeviceGetTotalEnergyConsumption": 123456789,  # mJ
            "nvmlDeviceGetClockInfo": {"1": 1980},             # keyed by clock type (str)
            "nvmlDeviceGetCurrentClocksEventReasons": 0,
            "nvmlDeviceGetPcieThroughput": {"0": 1234, "1": 567},  # keyed by counter, KB/s
            "nvmlDeviceGetComputeRunningProcesses": [
              {"pid": 4242, "usedGpuMemory": 1234567, "gpuInstanceId": 4294967295,
               "computeInstanceId": 4294967295}],
            "nvmlDeviceGetProcessUtilization": [   # the samples that call returned
              {"pid": 4242, "timeStamp": 1700000000123456, "smUtil": 88, "memUtil": 30,
               "encUtil": 0, "decUtil": 0}]}]}
      ]
    }

Any value may instead be ``{"error": "<Name>"}``, where ``pynvml.NVMLError_<Name>``
is raised on replay (NotSupported, FunctionNotFound, GpuIsLost, NotFound, ...);
for keyed calls the error may sit under one key.  A function missing from a
frame raises NVMLError_FunctionNotFound (it was not recorded, as if the driver
lacked it).

nvmlDeviceGetProcessUtilization is replayed from the union of the samples
recorded up to the current frame, filtered by the caller's ``timeStamp``
("last seen", in microseconds): the sampler's own cursor works as it would on
hardware.  An empty answer raises NVMLError_NotFound, as the driver does.

nvmlDeviceGetSamples (power samples, ``NVML_TOTAL_POWER_SAMPLES`` only) is
recorded per frame as ``{"type": 1, "samples": [[t_ns, value], ...]}`` with the
samples' times converted to the recording's CLOCK_MONOTONIC, and replayed like
the process utilisation: the union up to the current frame, newer than the
caller's cursor.  The replay hands out timestamps in *this* host's wall-clock
microseconds (as the driver does), so the sampler's conversion back to
CLOCK_MONOTONIC lands on the recorded times.

Time is advanced by the caller: ``seek(i)`` / ``step()``, and ``t_ns`` is the
current frame's time, to pass to ``sample(targets, now_ns)``.
"""

from __future__ import annotations

import json
import time
import types
from pathlib import Path
from typing import Any, NoReturn

import pynvml

FORMAT = "gpuos-hint/nvml-recording"
VERSION = 1

# Every per-tick device function the sampler calls and the recorder records.
FRAME_FUNCTIONS: tuple[str, ...] = (
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetSamples",
)
STATIC_FUNCTIONS: tuple[str, ...] = ("nvmlDeviceGetUUID", "nvmlDeviceGetName")

_MISSING = object()


def error_class(name: str) -> type[pynvml.NVMLError]:
    """pynvml's exception class for an error name ("NotSupported" -> NVMLError_NotSupported)."""
    cls = getattr(pynvml, f"NVMLError_{name}", None)
    if not (isinstance(cls, type) and issubclass(cls, pynvml.NVMLError)):
        raise ValueError(f"unknown NVML error name {name!r} in recording")
    return cls


def _raise(name: str) -> NoReturn:
    cls = error_class(name)
    raise cls(_code_of(cls))


def _code_of(cls: type) -> int:
    for code, klass in pynvml.NVMLError._valClassMapping.items():
        if klass is cls:
            return int(code)
    return pynvml.NVML_ERROR_UNKNOWN


class _Handle:
    """Opaque device handle, like pynvml's c_nvmlDevice_t pointer."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<ReplayNVML handle {self.index}>"


class ReplayNVML:
    """Answers pynvml calls from a recording; same names, arguments and exceptions."""

    # Error classes and constants the sampler reads from its backend, as pynvml has them.
    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_PCIE_UTIL_TX_BYTES = pynvml.NVML_PCIE_UTIL_TX_BYTES
    NVML_PCIE_UTIL_RX_BYTES = pynvml.NVML_PCIE_UTIL_RX_BYTES
    NVML_TOTAL_POWER_SAMPLES = pynvml.NVML_TOTAL_POWER_SAMPLES

    def __init__(self, path: Path | str) -> None:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} recording")
        self.path = Path(path)
        self.data: dict[str, Any] = data
        self.frames: list[dict[str, Any]] = data["frames"]
        if not self.frames:
            raise ValueError(f"{path}: recording has no frames")
        self.synthetic: bool = bool(data.get("synthetic"))
        self._i = 0
        self._initialised = False
        #: Fixed once, so a sample keeps one wall-clock stamp across calls (the driver's do).
        self._wall_offset_us = (time.time_ns() - time.monotonic_ns()) // 1000

    # -- replay clock -------------------------------------------------------
    @property
    def index(self) -> int:
        return self._i

    @property
    def t_ns(self) -> int:
        return int(self.frames[self._i]["t_ns"])

    def seek(self, i: int) -> int:
        if not 0 <= i < len(self.frames):
            raise IndexError(i)
        self._i = i
        return self.t_ns

    def step(self) -> bool:
        """Advance one frame; False at the end."""
        if self._i + 1 >= len(self.frames):
            return False
        self._i += 1
        return True

    # -- helpers ------------------------------------------------------------
    def _check_init(self) -> None:
        if not self._initialised:
            _raise("Uninitialized")

    def _dev_frame(self, handle: _Handle) -> dict[str, Any]:
        self._check_init()
        devs = self.frames[self._i]["devices"]
        if not isinstance(handle, _Handle) or handle.index >= len(devs):
            _raise("InvalidArgument")
        dev = devs[handle.index]
        if "error" in dev:
            _raise(dev["error"])
        return dev

    def _value(self, handle: _Handle, fname: str, key: str | None = None) -> Any:
        val = self._dev_frame(handle).get(fname, _MISSING)
        if val is not _MISSING and key is not None and isinstance(val, dict) and "error" not in val:
            val = val.get(key, _MISSING)
        if val is _MISSING:
            _raise("FunctionNotFound")
        if isinstance(val, dict) and set(val) == {"error"}:
            _raise(val["error"])
        return val

    # -- the pynvml subset --------------------------------------------------
    def nvmlInit(self) -> None:
        if self.data.get("init_error"):
            _raise(self.data["init_error"])
        self._initialised = True

    def nvmlShutdown(self) -> None:
        self._check_init()
        self._initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return str(self.data.get("nvmlSystemGetDriverVersion", ""))

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return int(self.data["nvmlDeviceGetCount"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_init()
        if not 0 <= index < int(self.data["nvmlDeviceGetCount"]):
            _raise("InvalidArgument")
        static = self.data["devices"][index]
        if isinstance(static, dict) and "error" in static:
            _raise(static["error"])
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        self._check_init()
        return str(self.data["devices"][handle.index]["nvmlDeviceGetUUID"])

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        self._check_init()
        return str(self.data["devices"][handle.index]["nvmlDeviceGetName"])

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> types.SimpleNamespace:
        return types.SimpleNamespace(**self._value(handle, "nvmlDeviceGetUtilizationRates"))

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> types.SimpleNamespace:
        return types.SimpleNamespace(**self._value(handle, "nvmlDeviceGetMemoryInfo"))

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return int(self._value(handle, "nvmlDeviceGetPowerUsage"))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return int(self._value(handle, "nvmlDeviceGetTotalEnergyConsumption"))

    def nvmlDeviceGetClockInfo(self, handle: _Handle, type: int) -> int:
        return int(self._value(handle, "nvmlDeviceGetClockInfo", str(type)))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return int(self._value(handle, "nvmlDeviceGetCurrentClocksEventReasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:
        return int(self._value(handle, "nvmlDeviceGetCurrentClocksThrottleReasons"))

    def nvmlDeviceGetPcieThroughput(self, device: _Handle, counter: int) -> int:
        return int(self._value(device, "nvmlDeviceGetPcieThroughput", str(counter)))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[types.SimpleNamespace]:
        return [types.SimpleNamespace(**p) for p in self._value(handle, "nvmlDeviceGetComputeRunningProcesses")]

    def nvmlDeviceGetProcessUtilization(self, handle: _Handle, timeStamp: int) -> list[types.SimpleNamespace]:
        self._value(handle, "nvmlDeviceGetProcessUtilization")  # raises the recorded error, if any
        out: list[types.SimpleNamespace] = []
        seen: set[tuple[int, int]] = set()
        for frame in self.frames[: self._i + 1]:
            dev = frame["devices"][handle.index]
            samples = dev.get("nvmlDeviceGetProcessUtilization")
            if not isinstance(samples, list):
                continue
            for s in samples:
                ident = (int(s["pid"]), int(s["timeStamp"]))
                if s["timeStamp"] > timeStamp and ident not in seen:
                    seen.add(ident)
                    out.append(types.SimpleNamespace(**s))
        if not out:
            _raise("NotFound")
        return out

    def nvmlDeviceGetSamples(
        self, device: _Handle, sampling_type: int, timeStamp: int
    ) -> tuple[int, list[types.SimpleNamespace]]:
        self._value(device, "nvmlDeviceGetSamples")  # raises the recorded error, if any
        if sampling_type != pynvml.NVML_TOTAL_POWER_SAMPLES:
            _raise("NotSupported")
        offset_us = self._wall_offset_us
        vtype = 1
        out: dict[int, types.SimpleNamespace] = {}
        for frame in self.frames[: self._i + 1]:
            rec = frame["devices"][handle_index(device)].get("nvmlDeviceGetSamples")
            if not isinstance(rec, dict) or "samples" not in rec:
                continue
            vtype = int(rec.get("type", 1))
            for t_ns, value in rec["samples"]:
                ts = int(t_ns) // 1000 + offset_us
                if ts > timeStamp and ts not in out:
                    out[ts] = types.SimpleNamespace(timeStamp=ts, sampleValue=_sample_value(vtype, value))
        if not out:
            _raise("NotFound")
        return vtype, [out[k] for k in sorted(out)]


def handle_index(handle: _Handle) -> int:
    return handle.index


def _sample_value(vtype: int, value: float) -> types.SimpleNamespace:
    """A c_nvmlValue_t look-alike: the member named by the value type holds it."""
    field = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(vtype, "uiVal")
    return types.SimpleNamespace(**{field: value if vtype == 0 else int(value)})
