"""Contract over the GPU-side samplers (psutil's test_process_all idea): every key a sampler
returns is a declared metric, every value is int, float or None, and metric names are unique
across these samplers.  Runs each sampler on the recorded data it is tested with, and on this
host's real /proc where it can."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from gpuos_hintd.model import Metric, ProcKey, Target
from gpuos_hintd.procfs import start_ticks
from gpuos_hintd.samplers.base import Sampler
from gpuos_hintd.samplers.drm import DRMSampler
from gpuos_hintd.samplers.maps import MapsSampler
from gpuos_hintd.samplers.nvml import NVMLSampler
from gpuos_hintd.samplers.rocm import ROCmSampler

DATA = Path(__file__).resolve().parent / "data"
SELF = ProcKey(os.getpid(), start_ticks(os.getpid()))
CLASSES = (NVMLSampler, ROCmSampler, DRMSampler, MapsSampler)


def check(sampler: Sampler, targets: list[Target], now_ns: int) -> int:
    out = sampler.sample(targets, now_ns)
    assert set(out) <= {t.key for t in targets}
    n = 0
    for sample in out.values():
        for name, value in sample.values.items():
            assert name in sampler.metrics, f"{sampler.name}: undeclared metric {name}"
            assert value is None or (isinstance(value, int | float) and not isinstance(value, bool)), (
                f"{sampler.name}.{name} = {value!r}"
            )
            n += 1
        assert not sample.threads  # all GPU-side metrics are process-scope
    return n


def test_declarations():
    seen: dict[str, str] = {}
    for cls in CLASSES:
        assert cls.name and cls.metrics
        for name, m in cls.metrics.items():
            assert isinstance(m, Metric) and m.kind in ("counter", "gauge") and m.scope == "process"
            assert name not in seen, f"{name} declared by {seen.get(name)} and {cls.name}"
            seen[name] = cls.name
            assert name == name.lower() and " " not in name


def test_nvml_on_synthetic_recording():
    from gpuos_hintd.samplers.nvml_replay import ReplayNVML

    replay = ReplayNVML(DATA / "nvml" / "synthetic_two_gpus.json")
    s = NVMLSampler(backend=replay)
    targets = [Target(ProcKey(p, 1)) for p in (1001, 1002, 2001, 2002, 9999)]
    n = 0
    while True:
        n += check(s, targets, replay.t_ns)
        if not replay.step():
            break
    assert n > 0
    s.close()


def test_rocm_on_recorded_tree(tmp_path):
    sysfs = tmp_path / "sys"
    shutil.copytree(DATA / "sysfs_amdgpu", sysfs)
    s = ROCmSampler(sysfs=sysfs, use_pyamdgpuinfo=False)  # real /proc for the processes
    assert check(s, [Target(SELF)], 0) > 0
    assert check(s, [Target(SELF)], 10**8) > 0


@pytest.mark.parametrize("cls", [DRMSampler, MapsSampler])
def test_proc_samplers_on_real_proc(cls):
    s = cls()
    assert s.available() == (True, "")
    assert check(s, [Target(SELF), Target(ProcKey(1, start_ticks(1)))], 0) > 0
