"""The evaluation (DESIGN section 8): metrics with known answers, segmentation on known truth,
end to end on the recorded H100 store, and `gpuos-hintctl evaluate`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from gpuos_hintd.evaluate import classify, evaluate_store, segment
from gpuos_hintd.evaluate.attribution import phase_spans, span_cpu_ns, span_energy_mj
from gpuos_hintd.evaluate.dataset import NONE, Span, load_runs, timeline, window_labels

H100_DB = Path(__file__).parent / "data" / "eval" / "h100_run.db"


# ----------------------------------------------------------------- boundary metrics
def test_boundary_match_known_answers() -> None:
    s = segment.match(np.array([10, 52, 200]), np.array([0, 50, 100]), tol=5)
    assert (s.tp, s.n_pred, s.n_true) == (1, 3, 3)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(1 / 3)
    assert s.matched_true.tolist() == [False, True, False]


def test_boundary_match_is_one_to_one_and_closest_first() -> None:
    # Two predictions near one truth: only one may match it; the closer one does.
    s = segment.match(np.array([98, 101]), np.array([100]), tol=5)
    assert s.tp == 1 and s.precision == 0.5 and s.recall == 1.0
    # One prediction between two truths within tolerance of both: matches only one.
    s = segment.match(np.array([50]), np.array([47, 54]), tol=5)
    assert s.tp == 1 and s.recall == 0.5
    # Exactly at the tolerance counts; beyond it does not.
    assert segment.match(np.array([105]), np.array([100]), tol=5).tp == 1
    assert segment.match(np.array([106]), np.array([100]), tol=5).tp == 0


def test_boundary_match_empty_cases() -> None:
    assert segment.match(np.zeros(0), np.zeros(0), 1).f1 == 1.0
    s = segment.match(np.zeros(0), np.array([3.0]), 1)
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    s = segment.match(np.array([3.0]), np.zeros(0), 1)
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)  # only both-empty counts as perfect


def test_random_baseline_perfect_when_it_must_hit() -> None:
    # The grid holds only the true boundaries: any draw of all of them is perfect.
    r = segment.random_baseline(3, np.array([10, 20, 30]), np.array([10, 20, 30]), tol=0)
    assert r == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


# ------------------------------------------------------------ classification metrics
def test_confusion_and_scores_known_answers() -> None:
    y = ["a", "a", "a", "b", "b", "c"]
    p = ["a", "a", "b", "b", "c", "c"]
    cm = classify.confusion(y, p)
    assert cm["labels"] == ["a", "b", "c"]
    assert cm["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = classify.scores(y, p)
    assert s["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert s["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(0.6667, abs=1e-4), "f1": 0.8, "support": 3}
    assert s["per_class"]["b"]["precision"] == 0.5 and s["per_class"]["b"]["recall"] == 0.5
    assert s["per_class"]["c"]["f1"] == pytest.approx(0.6667, abs=1e-4)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-3)


def test_models_learn_separable_classes_and_baseline_does_not() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(6, 1, (40, 3)), rng.normal([0, 6, 0], 1, (40, 3))])
    y = np.array(["a"] * 40 + ["b"] * 40 + ["c"] * 40, dtype=object)
    groups = np.arange(120) % 4
    for name in ("nearest_centroid", "decision_tree"):
        pred = classify.cross_predict(x, y, groups, classify.MODELS[name])
        assert classify.scores(y, pred)["accuracy"] >= 0.95, name
    base = classify.cross_predict(x, y, groups, classify.Majority)
    assert classify.scores(y, base)["accuracy"] <= 0.4
    rules = classify.DecisionTree().fit(x, y).rules(["f0", "f1", "f2"])
    assert rules[0].startswith("if slog(f") and any("-> c" in r for r in rules)


def test_cross_predict_never_tests_on_training_windows() -> None:
    # A label that exists only in one group cannot be predicted for that group out of sample.
    x = np.arange(20, dtype=float).reshape(-1, 1)
    y = np.array(["a"] * 10 + ["only_in_g1"] * 10, dtype=object)
    groups = np.array([0] * 10 + [1] * 10)
    pred = classify.cross_predict(x, y, groups, classify.NearestCentroid)
    assert "only_in_g1" not in set(pred[groups == 1].tolist())


# ------------------------------------------------------------------- segmentation
def test_segmentation_finds_known_boundaries_in_noisy_piecewise_signal() -> None:
    rng = np.random.default_rng(7)
    true = [40, 70, 130, 160]
    means = np.array([[0, 0, 0, 0], [3, 0, -2, 0], [3, 2, -2, 0], [0, 2, 0, 1], [0, 0, 0, 0]], dtype=float)
    edges = [0, *true, 200]
    x = np.vstack([np.tile(m, (b - a, 1)) for m, a, b in zip(means, edges[:-1], edges[1:], strict=True)])
    x = x + rng.normal(0, 0.5, x.shape)
    x = np.column_stack([x, np.full(len(x), 5.0)])  # a constant channel is ignored
    cps = segment.segment(x, beta=1.0)
    s = segment.match(np.array(cps), np.array(true), tol=2)
    assert s.recall == 1.0 and s.precision == 1.0, cps
    # Pure noise: no boundaries at all.
    assert segment.segment(rng.normal(0, 1, (200, 4)), beta=1.0) == []


def test_pelt_matches_brute_force_on_small_input() -> None:
    x = np.array([[0.0], [0.1], [0.0], [5.0], [5.1], [4.9], [5.0], [1.0], [1.1]])
    assert segment.pelt(x, penalty=1.0, min_size=2) == [3, 7]


# ------------------------------------------------------------------- ground truth
def _span(start: int, end: int, path: str, depth: int, cls: str | None = None, sid: int = 0, parent: int = 0) -> Span:
    return Span(start, end, path.rsplit("/", 1)[-1], path, depth, cls, 1, {}, span_id=sid, parent_span_id=parent)


def test_timeline_levels_and_gap_bridging() -> None:
    spans = [
        _span(100, 200, "step", 1, None, 1, 0),
        _span(100, 150, "step/data", 2, "training.data", 2, 1),
        _span(150, 200, "step/forward", 2, "training.step", 3, 1),
        _span(200_010, 3_000_000, "step", 1, None, 4, 0),  # 10 us gap: the same step phase goes on
    ]
    top = timeline(spans, "top", -2_000_000, 5_000_000)
    assert top.labels == [NONE, "step", NONE] and top.edges.tolist() == [-2_000_000, 100, 3_000_000, 5_000_000]
    leaf = timeline(spans, "leaf", -2_000_000, 5_000_000)
    assert leaf.labels == [NONE, "step/data", "step/forward", "step", NONE]
    cls = timeline(spans, "class", -2_000_000, 5_000_000)
    assert cls.labels[:3] == [NONE, "training.data", "training.step"]
    labels, purity = window_labels(top, np.array([-100, 50]), np.array([50, 250]))
    assert labels.tolist() == [NONE, "step"] and purity[0] == 1.0 and purity[1] == pytest.approx(150 / 200)
    # a gap under the bridge length between two different phases is no phase of its own
    tl = timeline([_span(0, 5_000_000, "a", 1), _span(5_000_100, 9_000_000, "b", 1)], "top", 0, 9_000_000)
    assert tl.labels == ["a", "b"] and tl.boundaries()[0].tolist() == [5_000_100]


# ------------------------------------------------------------- the recorded H100 run
@pytest.fixture(scope="module")
def h100() -> dict:
    return evaluate_store(H100_DB)


def test_h100_store_is_the_real_recording() -> None:
    conn = sqlite3.connect(f"file:{H100_DB}?mode=ro", uri=True)
    cmds = [r[0] for r in conn.execute("SELECT cmdline FROM processes")]
    assert any("gpuos_workloads.llm --device gpu" in c for c in cmds)
    assert any("gpuos_workloads.train --device gpu" in c for c in cmds)
    sig = json.loads(conn.execute("SELECT signals FROM samples WHERE tid=0 LIMIT 1 OFFSET 50").fetchone()[0])
    assert sig["gpu_power_mw"] > 0 and "gpu_energy_mj" in sig


def test_h100_evaluation_is_sane(h100: dict) -> None:
    ds = h100["dataset"]
    assert [r["workload"] for r in ds["runs"]] == ["llm", "train"]
    assert ds["sample_period_ms"] == pytest.approx(50, abs=1)  # 20 Hz
    assert ds["split"].startswith("blocked")  # one run per workload: no leave-one-run-out
    assert "gpu_power_mw" in ds["features"] and "thread_cpu_ns" not in ds["features"]
    for level, b in h100["boundaries"].items():
        for k in ("precision", "recall", "f1"):
            assert 0.0 <= b["os_only"][k] <= 1.0, level
        assert b["os_only"]["true"] > 0
    for level, lab in h100["labelling"].items():
        for model in ("majority", "nearest_centroid", "decision_tree", "decision_tree+segments"):
            assert 0.0 <= lab[model]["accuracy"] <= 1.0
            assert lab[model]["n"] == ds["windows"]
        assert lab["decision_tree"]["accuracy"] > lab["majority"]["accuracy"], level
    for level in ("top", "leaf"):
        for what in ("cpu", "energy"):
            s = h100["attribution"][level]["summary_mean_over_runs"][what]
            assert 0.0 <= s["misattributed_share_window_oracle"] <= 1.0
            assert 0.0 <= s["misattributed_share_os_only"] <= 1.0
    # Short phases are where boundaries are lost: decode steps are ~1.7 ms against 50 ms samples.
    short = h100["breakdown"]["span_durations"][0]
    assert short["bucket"] == "< 0.5 period" and short["span_share"] > 0.5
    assert h100["breakdown"]["shared_gpu"]["overlapping_pairs"] == []  # llm and train ran one after the other


def test_h100_hinted_attribution_equals_span_sums(h100: dict) -> None:
    conn = sqlite3.connect(f"file:{H100_DB}?mode=ro", uri=True)
    runs = {r.key: r for r in load_runs(conn)}
    for level, depth_sql in (
        ("top", "depth = 1"),
        ("leaf", "span_id NOT IN (SELECT parent_span_id FROM spans s2 WHERE s2.pid = spans.pid)"),
    ):
        for run in h100["attribution"][level]["per_run"]:
            pid = int(run["run"].split(":")[1])
            cpu: dict[str, float] = defaultdict(float)
            energy: dict[str, float] = defaultdict(float)
            for path, sig in conn.execute(f"SELECT path, signals FROM spans WHERE pid=? AND {depth_sql}", (pid,)):
                s = json.loads(sig)
                cpu[path] += s.get("cpu_user_ns", 0) + s.get("cpu_sys_ns", 0)
                energy[path] += s.get("gpu_energy_mj", 0)
            got_cpu = {p["phase"]: p["hinted"] for p in run["cpu"]["phases"] if p["phase"] != NONE and p["hinted"]}
            got_e = {p["phase"]: p["hinted"] for p in run["energy"]["phases"] if p["phase"] != NONE and p["hinted"]}
            assert got_cpu == {k: v for k, v in cpu.items() if v}, (level, pid)
            assert got_e == {k: v for k, v in energy.items() if v}, (level, pid)
            # the same through the module's own span selection
            spans = phase_spans(runs[run["run"]].spans, level)
            assert sum(span_cpu_ns(s) for s in spans) == pytest.approx(sum(cpu.values()), rel=1e-12)
            assert sum(span_energy_mj(s) or 0 for s in spans) == pytest.approx(sum(energy.values()), rel=1e-12)


def test_hintctl_evaluate_json_stdout() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gpuos_hintd.cli.main", "evaluate", "--store", str(H100_DB), "--json", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) >= {"dataset", "boundaries", "labelling", "attribution", "breakdown"}


def test_hintctl_evaluate_markdown_and_missing_store(tmp_path: Path) -> None:
    md = tmp_path / "r.md"
    cmd = [sys.executable, "-m", "gpuos_hintd.cli.main", "evaluate", "--store", str(H100_DB), "--md", str(md)]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    text = md.read_text()
    assert "### Phase boundaries" in text and "| top-level phase | majority |" in text
    missing = subprocess.run(
        [sys.executable, "-m", "gpuos_hintd.cli.main", "evaluate", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no store" in missing.stderr
