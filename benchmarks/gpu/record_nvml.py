#!/usr/bin/env python3
"""Record real NVML readings for the NVML sampler's replay tests.

Run on a machine with an NVIDIA GPU and driver.  Needs only the standard
library, nvidia-ml-py (``import pynvml``) and, for the built-in workload, torch
or cupy.  It does not import gpuos_hintd, so it runs from a bare checkout:

    python3 benchmarks/gpu/record_nvml.py --seconds 20 --out tests/data/nvml/h100_recording.json

What it does: starts two workload child processes on GPU 0 (both share it:
"A" runs 8192^2 fp32 matmul bursts of 1.5 s with 1.0 s idle, "B" runs 4096^2
bursts of 0.5 s with 0.5 s idle), then calls, for every GPU at ~20 Hz, exactly
the NVML functions the sampler calls (FRAME_FUNCTIONS below; the same list as
gpuos_hintd/samplers/nvml_replay.py, checked by a test) and stores each answer,
or the NVML error it raised, in the JSON format documented at the top of
nvml_replay.py.  The children's burst/idle transitions (CLOCK_MONOTONIC, the
same clock as the frames) go into "workload.events", so tests can check that
attribution follows the bursts.

It only reads: no nvmlDeviceSet*, no reset, no persistence or clock changes,
no accounting mode.  Each child bounds its queue (it synchronises after every
few launches), so the GPU goes idle when the child says it does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FORMAT = "gpuos-hint/nvml-recording"
VERSION = 1
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

CHILDREN = {  # name: (matrix size, burst s, idle s, start delay s)
    "A": (8192, 1.5, 1.0, 0.5),
    "B": (4096, 0.5, 0.5, 1.0),
}


# --------------------------------------------------------------------------- child
def child_main(name: str, seconds: float, lib: str) -> None:
    """A GPU workload: matmul bursts then idle, printing its transitions."""
    size, burst, idle, delay = CHILDREN[name]

    def say(event: str) -> None:
        print(
            json.dumps({"child": name, "pid": os.getpid(), "event": event, "t": time.monotonic_ns()}),
            flush=True,
        )

    if lib in ("auto", "torch"):
        try:
            import torch

            a = torch.randn(size, size, device="cuda")
            b = torch.randn(size, size, device="cuda")

            def mm() -> None:
                torch.matmul(a, b)

            sync = torch.cuda.synchronize
            lib = "torch"
        except Exception:
            if lib == "torch":
                raise
    if lib in ("auto", "cupy"):
        import cupy

        a = cupy.random.rand(size, size, dtype=cupy.float32)
        b = cupy.random.rand(size, size, dtype=cupy.float32)

        def mm() -> None:
            a @ b

        sync = cupy.cuda.runtime.deviceSynchronize
        lib = "cupy"
    mm()
    sync()
    say(f"ready:{lib}")
    time.sleep(delay)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        say("burst")
        stop = time.monotonic() + burst
        while time.monotonic() < stop:
            for _ in range(4):
                mm()
            sync()  # bound the queue: host time ~ device time
        say("idle")
        time.sleep(idle)
    say("exit")


# --------------------------------------------------------------------------- recorder
def _err(exc: Exception) -> dict[str, str]:
    name = type(exc).__name__
    return {"error": name[len("NVMLError_") :] if name.startswith("NVMLError_") else "Unknown"}


def _obj(o: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: getattr(o, f, None) for f in fields}


_PROC_FIELDS = ("pid", "usedGpuMemory", "gpuInstanceId", "computeInstanceId")
_UTIL_FIELDS = ("pid", "timeStamp", "smUtil", "memUtil", "encUtil", "decUtil")


def record_device(
    nv: Any, h: Any, last_seen: dict[int, int], idx: int, t0_mono_ns: int = 0, last_power: dict[int, int] | None = None
) -> dict[str, Any]:
    """One frame of one GPU: every FRAME_FUNCTIONS call, value or error.

    Power samples (nvmlDeviceGetSamples, NVML_TOTAL_POWER_SAMPLES) are stored with their
    wall-clock microsecond stamps converted to the frames' timeline (CLOCK_MONOTONIC - t0).
    """
    out: dict[str, Any] = {}

    def call(fname: str, conv: Any, *args: Any) -> Any:
        try:
            return conv(getattr(nv, fname)(h, *args))
        except nv.NVMLError as exc:
            if isinstance(exc, nv.NVMLError_GpuIsLost):
                raise
            return _err(exc)
        except AttributeError:
            return {"error": "FunctionNotFound"}

    try:
        out["nvmlDeviceGetUtilizationRates"] = call(
            "nvmlDeviceGetUtilizationRates", lambda u: {"gpu": u.gpu, "memory": u.memory}
        )
        out["nvmlDeviceGetMemoryInfo"] = call(
            "nvmlDeviceGetMemoryInfo", lambda m: {"total": m.total, "free": m.free, "used": m.used}
        )
        out["nvmlDeviceGetPowerUsage"] = call("nvmlDeviceGetPowerUsage", int)
        out["nvmlDeviceGetTotalEnergyConsumption"] = call("nvmlDeviceGetTotalEnergyConsumption", int)
        out["nvmlDeviceGetClockInfo"] = {str(nv.NVML_CLOCK_SM): call("nvmlDeviceGetClockInfo", int, nv.NVML_CLOCK_SM)}
        ev = call("nvmlDeviceGetCurrentClocksEventReasons", int)
        out["nvmlDeviceGetCurrentClocksEventReasons"] = ev
        if isinstance(ev, dict) and ev.get("error") == "FunctionNotFound":  # drivers < 535
            out["nvmlDeviceGetCurrentClocksThrottleReasons"] = call("nvmlDeviceGetCurrentClocksThrottleReasons", int)
        out["nvmlDeviceGetPcieThroughput"] = {
            str(c): call("nvmlDeviceGetPcieThroughput", int, c)
            for c in (nv.NVML_PCIE_UTIL_TX_BYTES, nv.NVML_PCIE_UTIL_RX_BYTES)
        }
        out["nvmlDeviceGetComputeRunningProcesses"] = call(
            "nvmlDeviceGetComputeRunningProcesses", lambda ps: [_obj(p, _PROC_FIELDS) for p in ps]
        )
        util = call(
            "nvmlDeviceGetProcessUtilization",
            lambda ss: [_obj(s, _UTIL_FIELDS) for s in ss],
            last_seen.get(idx, 0),
        )
        if isinstance(util, list) and util:
            last_seen[idx] = max(s["timeStamp"] for s in util)
        out["nvmlDeviceGetProcessUtilization"] = util
        lp = last_power if last_power is not None else {}
        got = call("nvmlDeviceGetSamples", lambda r: r, nv.NVML_TOTAL_POWER_SAMPLES, lp.get(idx, 0))
        if isinstance(got, tuple):
            vtype, samples = got
            field = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(int(vtype), "uiVal")
            off = time.time_ns() - time.monotonic_ns() + t0_mono_ns
            pts = [[int(x.timeStamp) * 1000 - off, getattr(x.sampleValue, field)] for x in samples]
            if samples:
                lp[idx] = max(int(x.timeStamp) for x in samples)
            out["nvmlDeviceGetSamples"] = {"type": int(vtype), "samples": pts}
        else:
            out["nvmlDeviceGetSamples"] = got
    except nv.NVMLError_GpuIsLost:
        return {"error": "GpuIsLost"}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="recording length (default 20)")
    ap.add_argument("--hz", type=float, default=20.0, help="frames per second (default 20)")
    ap.add_argument("--out", type=Path, default=Path("tests/data/nvml/h100_recording.json"))
    ap.add_argument("--lib", choices=("auto", "torch", "cupy"), default="auto", help="workload library")
    ap.add_argument("--no-workload", action="store_true", help="record an idle machine")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args.seconds, args.lib)
        return 0

    import pynvml as nv

    nv.nvmlInit()
    try:
        count = nv.nvmlDeviceGetCount()
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        static = []
        for h in handles:
            row = {}
            for f in STATIC_FUNCTIONS:
                try:
                    row[f] = str(getattr(nv, f)(h))
                except nv.NVMLError as exc:
                    row[f] = _err(exc)
            static.append(row)

        children: list[subprocess.Popen[str]] = []
        if not args.no_workload:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="0", CUDA_DEVICE_ORDER="PCI_BUS_ID")
            for name in sorted(CHILDREN):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--seconds",
                    str(args.seconds),
                    "--lib",
                    args.lib,
                ]
                children.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))

        period = 1.0 / args.hz
        last_seen: dict[int, int] = {}
        last_power: dict[int, int] = {}
        frames = []
        t0 = time.monotonic_ns()
        deadline = time.monotonic()
        # Without a workload: record --seconds.  With one: until the children have exited (they
        # start after importing torch/cupy, which takes seconds) plus 1 s of idle tail.
        stop = deadline + (args.seconds if not children else args.seconds + 120.0)
        while time.monotonic() < stop:
            if children and all(c.poll() is not None for c in children):
                stop = min(stop, time.monotonic() + 1.0)
            t = time.monotonic_ns()
            frames.append(
                {
                    "t_ns": t - t0,
                    "wall_ns": time.time_ns(),
                    "devices": [record_device(nv, h, last_seen, i, t0, last_power) for i, h in enumerate(handles)],
                }
            )
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                deadline = time.monotonic()  # overrun: skip, don't burst
        events = []
        for c in children:
            try:
                out, _ = c.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
                out, _ = c.communicate()
            for line in out.splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                ev["t_ns"] = ev.pop("t") - t0
                events.append(ev)
        driver = nv.nvmlSystemGetDriverVersion()
    finally:
        nv.nvmlShutdown()

    doc = {
        "format": FORMAT,
        "version": VERSION,
        "synthetic": False,
        "description": (
            f"Recorded by benchmarks/gpu/record_nvml.py: {count} GPU(s), {len(frames)} frames at "
            f"{args.hz:g} Hz; workload children {sorted(CHILDREN) if children else 'none'} on GPU 0 "
            f"(sizes/burst/idle/delay: {CHILDREN})."
        ),
        "host": {
            "hostname": socket.gethostname(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "pynvml": getattr(nv, "__version__", None),
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "workload": {"pids": [c.pid for c in children], "children": CHILDREN, "events": events},
        "init_error": None,
        "nvmlSystemGetDriverVersion": str(driver),
        "nvmlDeviceGetCount": count,
        "devices": static,
        "frames": frames,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(frames)} frames, {count} GPU(s), {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
