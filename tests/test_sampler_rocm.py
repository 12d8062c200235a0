"""ROCm sampler against a hand-assembled amdgpu sysfs tree (documented formats; see its README)
and a fake procfs with documented fdinfo; plus this host's real /sys, which has no AMD GPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from gpuos_hintd.model import ProcKey, Target
from gpuos_hintd.samplers.rocm import ROCmSampler, parse_sclk

DATA = Path(__file__).resolve().parent / "data"
P_FDINFO, P_NODE, P_NONE = ProcKey(500, 1), ProcKey(501, 1), ProcKey(502, 1)


@pytest.fixture
def trees(tmp_path):
    sysfs = tmp_path / "sys"
    shutil.copytree(DATA / "sysfs_amdgpu", sysfs)
    proc = tmp_path / "proc"
    for pid, link, fdinfo in (
        (500, "/dev/dri/renderD128", "amdgpu.txt"),  # fdinfo names the card (drm-pdev 0000:03:00.0)
        (501, "/dev/dri/renderD129", "not_drm.txt"),  # no usage stats: mapped by render node
        (502, "/dev/null", "not_drm.txt"),
    ):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "fdinfo").mkdir()
        os.symlink(link, proc / str(pid) / "fd" / "3")
        shutil.copy(DATA / "fdinfo" / fdinfo, proc / str(pid) / "fdinfo" / "3")
    return sysfs, proc


def sample(s: ROCmSampler, t_ns: int) -> dict:
    out = s.sample([Target(k) for k in (P_FDINFO, P_NODE, P_NONE)], t_ns)
    return {k: v.values for k, v in out.items()}


def test_parse_sclk():
    assert parse_sclk(b"0: 500Mhz \n1: 2482Mhz *\n2: 2526Mhz \n") == 2482
    assert parse_sclk(b"S: 19Mhz *\n0: 500Mhz \n") == 19
    assert parse_sclk(b"0: 500Mhz \n") is None


def test_unavailable_on_this_host():
    ok, why = ROCmSampler(use_pyamdgpuinfo=False).available()
    if ok:
        pytest.skip("this host has an amdgpu GPU")
    assert why.startswith("no amdgpu GPU under /sys/class/drm")


def test_devices_from_recorded_tree(trees):
    sysfs, proc = trees
    s = ROCmSampler(sysfs=sysfs, procfs=proc)
    assert s.available() == (True, "")
    sample(s, 0)
    devs = {d["card"]: d for d in s.devices()}
    assert set(devs) == {"card0", "card1"}  # i915 card2 and the connector are ignored
    c0, c1 = devs["card0"], devs["card1"]
    assert c0["pci_slot"] == "0000:03:00.0" and c0["source"] == "sysfs"
    assert (c0["busy_pct"], c0["mem_busy_pct"], c0["sclk_mhz"]) == (87, 35, 2482)
    assert c0["vram_used_bytes"] == 8 << 30 and c0["vram_total_bytes"] == 25753026560
    assert c0["power_mw"] == 287_000 and c0["energy_mj"] is None
    assert c1["power_mw"] == 95_000 and c1["energy_mj"] == 123456789 and c1["sclk_mhz"] == 1700


def test_per_process_mapping_and_energy(trees):
    sysfs, proc = trees
    s = ROCmSampler(sysfs=sysfs, procfs=proc)
    v0 = sample(s, 0)
    assert v0[P_FDINFO]["amdgpu_devices"] == 1 and v0[P_FDINFO]["amdgpu_util_pct"] == 87
    assert v0[P_FDINFO]["amdgpu_vram_bytes"] == 1052144 * 1024  # its own VRAM, from fdinfo
    assert v0[P_NODE]["amdgpu_devices"] == 1 and v0[P_NODE]["amdgpu_util_pct"] == 12
    assert v0[P_NODE]["amdgpu_vram_bytes"] is None  # no fdinfo stats: unknown, not 0
    assert v0[P_NONE]["amdgpu_devices"] == 0 and v0[P_NONE]["amdgpu_util_pct"] is None

    energy = sysfs / "class/drm/card1/device/hwmon/hwmon4/energy1_input"
    energy.write_text("123506789000\n")  # +50 J
    v1 = sample(s, 1_000_000_000)
    assert v1[P_NODE]["amdgpu_energy_mj"] == pytest.approx(50_000)  # sole process on card1: all of it
    assert v1[P_NODE]["amdgpu_energy_estimated"] == 0
    assert v1[P_FDINFO]["amdgpu_energy_mj"] == pytest.approx(287_000)  # 287 W x 1 s, even split
    assert v1[P_FDINFO]["amdgpu_energy_estimated"] == 1

    # The fdinfo client now shows 0.435 s more gfx busy in 1 s: half the device's 87 %.
    fdinfo = proc / "500" / "fdinfo" / "3"
    fdinfo.write_text(fdinfo.read_text().replace("2283474040 ns", str(2283474040 + 435_000_000) + " ns"))
    v2 = sample(s, 2_000_000_000)
    assert v2[P_FDINFO]["amdgpu_energy_mj"] - v1[P_FDINFO]["amdgpu_energy_mj"] == pytest.approx(287_000 * 0.5)
    h = s.health()["energy"]
    assert h["card0"]["split_method"] == "fdinfo_busy"
    assert h["card0"]["residual_mj"] == pytest.approx(287_000 * 0.5)
    assert h["card1"]["split_method"] == "even"


def test_hwmon_power_becomes_a_calibrated_power_series_for_span_energy(trees):
    """card1 (power1_input + energy1_input): each tick's power reading is a series point for the
    process on it; the energy counter (here 5 % above power x time) calibrates it; a span over
    the series gets its energy from it (tick resolution: hwmon keeps no sample history)."""
    from gpuos_hintd.correlate import Correlator
    from gpuos_hintd.model import SpanRow

    sysfs, proc = trees
    hw = sysfs / "class/drm/card1/device/hwmon/hwmon4"
    s = ROCmSampler(sysfs=sysfs, procfs=proc)
    out: list[SpanRow] = []
    corr = Correlator(dict(s.metrics), out.extend)
    ms = 1_000_000
    energy_uj = 123456789000
    corr.begin(P_NODE, SpanRow("b", P_NODE.pid, P_NODE.start, 1, 0, 1, "p", "p", 1, None, None, 1_000 * ms,
                               1_000 * ms, 0, "open"))  # fmt: skip
    points = 0
    for i in range(0, 41):
        t = i * 100 * ms
        watts = 100 if (i // 5) % 2 == 0 else 300
        (hw / "power1_input").write_text(f"{watts * 1_000_000}\n")
        if i:
            energy_uj += int(watts * 1.05 * 0.1 * 1e6)  # this tick's interval, 5 % above the power
        (hw / "energy1_input").write_text(f"{energy_uj}\n")
        if i == 30:
            corr.end(P_NODE, 1, 3_000 * ms, "ok")
        got = s.sample([Target(k) for k in (P_FDINFO, P_NODE, P_NONE)], t)
        pts = got[P_NODE].series.get("gpu_power_mw@amd:card1", [])
        points += len(pts)
        corr.on_sample(P_NODE, t, got[P_NODE])
    assert points == 41 and not got[P_NONE].series
    dev = {d["card"]: d for d in s.devices()}["card1"]
    assert dev["power_samples_scale"] == pytest.approx(1.05, abs=0.01)
    (r,) = out
    assert r.signals["gpu_energy_source"] == "power_samples"
    # Each reading stands for the tick interval ending at it (ticks 11..30 cover 1-3 s), x the scale.
    truth_j = sum((100 if (i // 5) % 2 == 0 else 300) * 0.1 for i in range(11, 31)) * 1.05
    assert r.signals["gpu_energy_j"] == pytest.approx(truth_j, rel=0.06)
