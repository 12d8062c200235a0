"""Phase 2 statistics on synthetic data with known answers, and a seconds-long end-to-end run."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpuos_hintd.evaluate import phase2, stats

REPO = Path(__file__).resolve().parent.parent


def test_mean_ci_matches_the_t_interval():
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t(4) = 2.776: half width 2.776 * 1.5811 / sqrt(5) = 1.963
    assert m == 3.0
    assert hi - m == pytest.approx(1.963, abs=1e-3)
    assert m - lo == pytest.approx(hi - m)
    assert stats.mean_ci([7.0]) == (7.0, 7.0, 7.0)
    assert all(math.isnan(v) for v in stats.mean_ci([]))


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(10, 1, 10)
    big = rng.normal(10, 1, 400)
    _, lo_s, hi_s = stats.bootstrap_ci(small)
    m, lo_b, hi_b = stats.bootstrap_ci(big)
    assert lo_b < 10 < hi_b and lo_b <= m <= hi_b
    assert hi_b - lo_b < (hi_s - lo_s) / 3  # ~ 1/sqrt(40) of the width


def test_spearman_known_values():
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 1000]) == pytest.approx(1.0)  # monotone, not linear
    # ties: x = [1,2,3,4], y = [1,1,2,2] -> ranks y = [1.5,1.5,3.5,3.5]; rho = 0.8944
    assert stats.spearman([1, 2, 3, 4], [1, 1, 2, 2]) == pytest.approx(2 / math.sqrt(5), abs=1e-4)
    assert math.isnan(stats.spearman([1, 2, 3], [5, 5, 5]))


def test_eta_squared_known_values():
    assert stats.eta_squared([1, 1, 5, 5], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert stats.eta_squared([1, 5, 1, 5], ["a", "a", "b", "b"]) == pytest.approx(0.0)
    # groups a=[1,2], b=[3,6]: grand mean 3, SS_total 14, SS_between 2*(1.5-3)^2 + 2*(4.5-3)^2 = 9
    assert stats.eta_squared([1, 2, 3, 6], ["a", "a", "b", "b"]) == pytest.approx(9 / 14)
    assert stats.eta_squared([2, 2, 2], [0, 1, 2]) == 0.0


def test_permutation_p_separates_effect_from_noise():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(5), 5)
    strong = g * 1.0 + rng.normal(0, 0.1, len(g))
    noise = rng.normal(0, 1, len(g))
    assert stats.permutation_p(strong, g, 500) < 0.01
    assert stats.permutation_p(noise, g, 500) > 0.05


def _units(fn, repeats=5, levels=5, seed=0):
    """Synthetic units: value = fn(level, repeat, work) + noise; work rises with the level."""
    rng = np.random.default_rng(seed)
    vals, idx, rep, work = [], [], [], []
    for r in range(repeats):
        for lv in range(levels):
            w = 1.0 + lv + rng.normal(0, 0.05)  # achieved work rate follows the level
            vals.append(fn(lv, r, w) + rng.normal(0, 0.05))
            idx.append(lv)
            rep.append(r)
            work.append(w)
    return vals, idx, rep, work


def test_classification_of_known_cases():
    # follows the knob in a way work does not explain (a U shape): sensitive
    v, i, r, w = _units(lambda lv, rep, work: (lv - 2) ** 2)
    assert stats.effect(v, i, r, w, n_perm=300)["class"] == "sensitive"
    # pure noise: invariant
    v, i, r, w = _units(lambda lv, rep, work: 0.0)
    e = stats.effect(v, i, r, w, n_perm=300)
    assert e["class"] == "invariant" and e["eta2_level"] < 0.3
    # drifts with the repeat (time block), not the level: invariant or confounded, never sensitive
    v, i, r, w = _units(lambda lv, rep, work: 3.0 * rep + 0.5 * lv)
    e = stats.effect(v, i, r, w, n_perm=300)
    assert e["eta2_repeat"] > e["eta2_level"] and e["class"] in ("confounded", "invariant")
    # only follows the achieved work rate (linear in it): confounded
    v, i, r, w = _units(lambda lv, rep, work: 2.0 * work)
    e = stats.effect(v, i, r, w, n_perm=300)
    assert e["spearman_rho"] > 0.9 and e["class"] == "confounded" and e["eta2_level_given_work"] < 0.14
    # the same without a work covariate (the control knob): sensitive
    assert stats.effect(v, i, r, None, n_perm=300)["class"] == "sensitive"


def test_units_use_only_windows_inside_a_level_and_rates_for_counters():
    t = [int(i * 1e8) for i in range(0, 21)]  # 10 Hz, 2 s
    cpu = [0.5 * ti if ti <= 1e9 else 0.5e9 + (ti - 1e9) for ti in t]  # 0.5 CPU, then 1 CPU from 1.0 s
    samples = [[ti, {"cpu_user_ns": c, "threads": 3}] for ti, c in zip(t, cpu, strict=True)]
    levels = [
        {"knob": "k", "level": "a", "repeat": 0, "t0_ns": 0, "t1_ns": int(1e9), "work_flop_per_s": 1.0},
        {"knob": "k", "level": "b", "repeat": 0, "t0_ns": int(1.05e9), "t1_ns": int(2e9), "work_flop_per_s": 2.0},
    ]
    cond = {"samples": samples, "levels": levels, "knobs": {"k": ["a", "b"]}}
    units = phase2.units_of(cond, {"cpu_user_ns": "counter", "threads": "gauge"})
    assert [u["windows"] for u in units] == [10, 9]  # the window straddling 1.0-1.1 s belongs to neither
    assert units[0]["signals"]["cpu_user_ns"] == pytest.approx(0.5e9)
    assert units[1]["signals"]["cpu_user_ns"] == pytest.approx(1.0e9)
    assert units[0]["signals"]["threads"] == 3


def test_phase2_end_to_end_tiny(tmp_path):
    """A real run: workload + QueueDevice + daemon with hints, sampled at 20 Hz, analysed (seconds)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / d) for d in ("client", "daemon", "workloads"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "phase2.py"), "--tiny", "--n-perm", "50", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "phase2.json").read_text())
    hinted = doc["checks"]["hints"]
    assert hinted["daemon_spans_phase2"] == hinted["levels"] == 2 * (5 + 3)  # every level delivered, stored
    assert hinted["client_dropped"] == 0
    for cond in ("hints", "no hints"):
        res = doc["results"][cond]
        assert set(res) == {"sync", "size"}
        assert res["sync"]["repeats"] == 2 and res["sync"]["min_windows_per_unit"] >= 8
        assert "cpu_user_ns" in res["size"]["signals"] and "threads_sync_wait" in res["sync"]["signals"]
        for e in res["sync"]["signals"].values():
            assert e["class"] in ("sensitive", "invariant", "confounded")
    with gzip.open(tmp_path / "phase2_raw.json.gz", "rt") as f:
        raw = json.load(f)
    assert len(raw["conditions"]["no hints"]["samples"]) > 100
    assert (tmp_path / "phase2.md").read_text().startswith("# Phase 2")


def _synthetic_raw() -> dict:
    """One condition, knob 'sync' with 2 levels x 3 repeats; threads_running follows the level exactly."""
    samples, levels, t = [], [], 0
    for rep in range(3):
        for lv, running in (("1", 1), ("0", 3)):
            t0 = t
            for _ in range(12):
                samples.append([t, {"threads_running": running, "cpu_user_ns": t // 2}])
                t += 100_000_000
            levels.append(
                {"knob": "sync", "level": lv, "repeat": rep, "t0_ns": t0, "t1_ns": t - 1, "work_flop_per_s": 1e9}
            )
    return {"conditions": {"no hints": {"samples": samples, "levels": levels, "knobs": {"sync": ["1", "0"]}}}}


def test_hintctl_evaluate_phase2_reanalyses_a_recording(tmp_path):
    raw = tmp_path / "raw.json.gz"
    with gzip.open(raw, "wt") as f:
        json.dump(_synthetic_raw(), f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / d) for d in ("client", "daemon")))
    cmd = [sys.executable, "-m", "gpuos_hintd.cli.main", "evaluate", "--phase2", str(raw), "--json", "-"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)["no hints"]["sync"]["signals"]
    assert res["threads_running"]["eta2_level"] == pytest.approx(1.0)
    assert res["threads_running"]["per_level"][0]["mean"] == 1 and res["threads_running"]["per_level"][1]["mean"] == 3
    assert res["cpu_user_ns"]["eta2_level"] < 0.14  # a steady 0.5 CPU whatever the level
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    out = subprocess.run([*cmd[:4], "--phase2", str(bad)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "not a phase2 recording" in out.stderr
