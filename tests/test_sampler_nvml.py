"""NVML sampler: real pynvml on this driverless host, recorded readings for the rest.

tests/data/nvml/synthetic_two_gpus.json is a *hand-made* fixture (its
"synthetic" flag says so): it pins down parsing, attribution, residuals,
unsupported fields and a lost GPU.  tests/data/nvml/h100_recording.json, once
committed, is a real recording (benchmarks/gpu/record_nvml.py); the tests that
need it skip with a reason until then.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

pynvml = pytest.importorskip("pynvml")

from gpuos_hintd.errors import SamplerUnavailable  # noqa: E402
from gpuos_hintd.model import ProcKey, Target  # noqa: E402
from gpuos_hintd.samplers._energy import EnergyLedger  # noqa: E402
from gpuos_hintd.samplers.nvml import NVMLSampler  # noqa: E402
from gpuos_hintd.samplers.nvml_replay import FRAME_FUNCTIONS, STATIC_FUNCTIONS, ReplayNVML  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "nvml"
SYNTH = DATA / "synthetic_two_gpus.json"
H100 = DATA / "h100_recording.json"

A, B, C, D, NOGPU = (ProcKey(p, 100 + p) for p in (1001, 1002, 2001, 2002, 9999))


def run_replay(path: Path, keys: list[ProcKey]) -> tuple[NVMLSampler, ReplayNVML, list[dict]]:
    replay = ReplayNVML(path)
    sampler = NVMLSampler(backend=replay)
    assert sampler.available() == (True, "")
    targets = [Target(k) for k in keys]
    ticks = []
    while True:
        out = sampler.sample(targets, replay.t_ns)
        ticks.append({k: s.values for k, s in out.items()})
        if not replay.step():
            return sampler, replay, ticks


# -- this host: no driver ---------------------------------------------------------
def test_unavailable_without_driver_gives_clear_reason():
    sampler = NVMLSampler()
    ok, why = sampler.available()
    if ok:
        sampler.close()
        pytest.skip("an NVIDIA driver is present here; this test is for driverless hosts")
    assert "libnvidia-ml.so.1" in why or "driver" in why
    with pytest.raises(SamplerUnavailable):
        sampler.sample([Target(ProcKey(1, 1))], 0)
    sampler.close()  # harmless when never initialised


def test_recorded_init_error_is_reported(tmp_path):
    doc = json.loads(SYNTH.read_text())
    doc["init_error"] = "DriverNotLoaded"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    ok, why = NVMLSampler(backend=ReplayNVML(path)).available()
    assert not ok and "not loaded" in why


# -- synthetic fixture: attribution, residual, unsupported, lost ----------------
def test_synthetic_fixture_is_flagged_synthetic():
    doc = json.loads(SYNTH.read_text())
    assert doc["synthetic"] is True and "SYNTHETIC" in doc["description"]


def test_energy_split_by_sm_util_with_residual():
    sampler, _, ticks = run_replay(SYNTH, [A, B, C, D, NOGPU])
    last = ticks[-1]
    # GPU 0: +30000 mJ per 100 ms, 4 changes = 120000 mJ; SM util 60/20/20, pid 1003 unwatched.
    assert last[A]["gpu_energy_mj"] == pytest.approx(72000)
    assert last[B]["gpu_energy_mj"] == pytest.approx(24000)
    h = sampler.health()
    e0 = h["energy"][0]
    assert e0["split_method"] == "sm_util" and e0["estimated"] is False
    assert e0["residual_mj"] == pytest.approx(24000)
    assert e0["attributed_mj"] + e0["residual_mj"] == pytest.approx(120000)
    assert e0["counter_update_interval_ms"] == pytest.approx(100.0)
    dev0 = sampler.devices()[0]
    assert dev0["energy_counter_update_interval_ms"] == pytest.approx(100.0)
    assert dev0["energy_residual_mj"] == pytest.approx(24000)
    assert {p["pid"] for p in dev0["processes"]} == {1001, 1002, 1003}
    # The counter moves every other frame: energy is a monotone step function, never lost.
    series = [t[A]["gpu_energy_mj"] for t in ticks]
    assert series == sorted(series) and series[1] == 0 and series[2] == pytest.approx(18000)


def test_per_process_values_and_held_util_between_samples():
    _, _, ticks = run_replay(SYNTH, [A, B])
    for t in ticks:  # odd frames say NotFound (no new sample): the last values are held
        assert t[A]["gpu_proc_sm_util_pct"] == 60.0 and t[B]["gpu_proc_sm_util_pct"] == 20.0
    v = ticks[-1][A]
    assert v["gpu_devices"] == 1
    assert v["gpu_mem_bytes"] == 2 << 30
    assert v["gpu_util_pct"] == 95 and v["gpu_mem_util_pct"] == 40
    assert v["gpu_power_mw"] == 300_000 and v["gpu_sm_clock_mhz"] == 1980
    assert v["gpu_throttle_reasons"] == 4
    assert v["gpu_pcie_tx_bytes_per_s"] == 1000 * 1024 and v["gpu_pcie_rx_bytes_per_s"] == 2000 * 1024
    assert v["gpu_energy_estimated"] == 0


def test_unsupported_counter_integrates_power_and_flags_estimate():
    sampler, _, ticks = run_replay(SYNTH, [C, D])
    before_loss = ticks[5]
    # GPU 1: 100 W for 5 x 50 ms = 25000 mJ, no per-process util -> even split.
    assert before_loss[C]["gpu_energy_mj"] == pytest.approx(12500)
    assert before_loss[D]["gpu_energy_mj"] == pytest.approx(12500)
    assert before_loss[C]["gpu_energy_estimated"] == 1
    assert before_loss[C]["gpu_proc_sm_util_pct"] is None  # per-process util NotSupported
    assert before_loss[C]["gpu_pcie_tx_bytes_per_s"] is None  # PCIe NotSupported
    assert before_loss[D]["gpu_mem_bytes"] is None  # usedGpuMemory not available
    assert before_loss[C]["gpu_throttle_reasons"] == 1  # ThrottleReasons fallback (no EventReasons)
    h = sampler.health()
    assert h["unsupported"]["nvmlDeviceGetTotalEnergyConsumption"] == "NotSupported"
    assert h["unsupported"]["nvmlDeviceGetProcessUtilization"] == "NotSupported"
    assert h["unsupported"]["nvmlDeviceGetCurrentClocksEventReasons"] == "FunctionNotFound"


def test_lost_gpu_gives_none_and_others_carry_on():
    sampler, _, ticks = run_replay(SYNTH, [A, C])
    after = ticks[-1]
    assert after[C]["gpu_devices"] == 0
    assert after[C]["gpu_util_pct"] is None and after[C]["gpu_power_mw"] is None
    # Only C hints on GPU 1 here, so the even split gives it all 25000 mJ; the counter keeps it.
    assert after[C]["gpu_energy_mj"] == pytest.approx(25000)
    assert after[A]["gpu_devices"] == 1 and after[A]["gpu_util_pct"] == 95
    assert sampler.health()["lost_devices"] == [1]
    dev1 = sampler.devices()[1]
    assert dev1["lost"] is True and dev1["power_mw"] is None and dev1["processes"] == []


def test_process_without_gpu_is_all_none_but_counter():
    _, _, ticks = run_replay(SYNTH, [NOGPU])
    v = ticks[-1][NOGPU]
    assert v["gpu_devices"] == 0 and v["gpu_energy_mj"] == 0.0
    assert all(v[m] is None for m in v if m not in ("gpu_devices", "gpu_energy_mj"))


def test_forgets_processes_no_longer_watched():
    replay = ReplayNVML(SYNTH)
    sampler = NVMLSampler(backend=replay)
    for _ in range(4):
        sampler.sample([Target(A)], replay.t_ns)
        replay.step()
    assert sampler.sample([Target(B)], replay.t_ns).keys() == {B}
    assert A not in sampler._energy


# -- the replay backend itself ---------------------------------------------------
def test_replay_raises_like_pynvml():
    replay = ReplayNVML(SYNTH)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        replay.nvmlDeviceGetCount()
    replay.nvmlInit()
    h0, h1 = replay.nvmlDeviceGetHandleByIndex(0), replay.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        replay.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        replay.nvmlDeviceGetTotalEnergyConsumption(h1)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        replay.nvmlDeviceGetCurrentClocksThrottleReasons(h0)  # not recorded for GPU 0
    samples = replay.nvmlDeviceGetProcessUtilization(h0, 0)
    assert {s.pid for s in samples} == {1001, 1002, 1003}
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than what was seen
        replay.nvmlDeviceGetProcessUtilization(h0, max(s.timeStamp for s in samples))
    replay.seek(6)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        replay.nvmlDeviceGetPowerUsage(h1)


def test_recorder_and_replay_agree_on_the_calls():
    spec = importlib.util.spec_from_file_location("record_nvml", ROOT / "benchmarks" / "gpu" / "record_nvml.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.FRAME_FUNCTIONS == FRAME_FUNCTIONS
    assert mod.STATIC_FUNCTIONS == STATIC_FUNCTIONS
    for fname in (*FRAME_FUNCTIONS, *STATIC_FUNCTIONS):
        assert callable(getattr(pynvml, fname)), fname  # real pynvml names
        assert callable(getattr(ReplayNVML, fname)), fname


def test_never_changes_gpu_settings():
    """House rule: read-only NVML.  No setter, reset, persistence or accounting call anywhere."""
    banned = re.compile(r"nvml\w*(Set|Reset|Persistence|Accounting|Clear)\w*\(")
    for rel in (
        "daemon/gpuos_hintd/samplers/nvml.py",
        "daemon/gpuos_hintd/samplers/nvml_replay.py",
        "benchmarks/gpu/record_nvml.py",
    ):
        assert not banned.search((ROOT / rel).read_text()), rel


# -- the ledger on its own ---------------------------------------------------------
def test_ledger_counter_reset_starts_a_new_baseline():
    led = EnergyLedger()
    assert led.update(0, 1000.0, None, {"p": 1.0}) == {}
    assert led.update(100, 1500.0, None, {"p": 1.0}) == {"p": 500.0}
    assert led.update(200, 10.0, None, {"p": 1.0}) == {}  # driver reload: counter went back
    assert led.update(300, 60.0, None, {"p": 0.5}) == {"p": 25.0}
    assert led.residual_mj == pytest.approx(25.0)


def test_ledger_power_integration_is_trapezoid():
    led = EnergyLedger()
    led.update(0, None, 100_000.0, {"p": 1.0})
    got = led.update(1_000_000_000, None, 300_000.0, {"p": 1.0})  # 1 s from 100 W to 300 W
    assert got["p"] == pytest.approx(200_000.0) and led.estimated


# -- the real H100 recording, once committed ----------------------------------------
@pytest.fixture(scope="module")
def h100():
    if not H100.exists():
        print(f"skip: {H100} not committed yet (run benchmarks/gpu/record_nvml.py on a GPU host)")
        pytest.skip(f"{H100.name} absent: record it with benchmarks/gpu/record_nvml.py on an NVIDIA host")
    replay = ReplayNVML(H100)
    assert not replay.synthetic
    pids = replay.data["workload"]["pids"]
    keys = [ProcKey(p, 1) for p in pids]
    sampler, replay, ticks = run_replay(H100, keys)
    return sampler, replay, ticks, keys


def test_h100_energy_is_conserved_and_monotone(h100):
    sampler, replay, ticks, keys = h100
    dev = sampler.health()["energy"][0]
    counters = [f["devices"][0]["nvmlDeviceGetTotalEnergyConsumption"] for f in replay.frames]
    assert all(isinstance(c, int) for c in counters), "H100 has an energy counter"
    # Everything the counter moved by (up to its last change) is attributed or residual.
    assert dev["attributed_mj"] + dev["residual_mj"] == pytest.approx(counters[-1] - counters[0], rel=1e-6, abs=1)
    assert dev["residual_mj"] >= 0
    for k in keys:
        series = [t[k]["gpu_energy_mj"] for t in ticks]
        assert series == sorted(series)
        assert series[-1] > 0, f"workload pid {k.pid} got no energy"


def test_h100_counter_cadence_and_per_process_util(h100):
    sampler, _, ticks, keys = h100
    interval = sampler.health()["energy"][0]["counter_update_interval_ms"]
    assert 40 <= interval <= 250, interval  # ~100 ms documented
    for k in keys:
        assert any((t[k]["gpu_proc_sm_util_pct"] or 0) > 50 for t in ticks), "bursts show per-process SM util"
        assert any(t[k]["gpu_mem_bytes"] for t in ticks)
