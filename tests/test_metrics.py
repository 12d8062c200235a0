"""Prometheus /metrics: a real daemon scraped by a real Prometheus server (Debian's
`prometheus` binary, started here with a temporary config and TSDB), queried through its
HTTP API; plus in-process checks of the GPU gauges (recorded NVML readings), the
label-folding policy and the per-tick cost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

prometheus_client = pytest.importorskip("prometheus_client")

from gpuos_hintd.config import Config  # noqa: E402
from gpuos_hintd.metrics import OTHER, LabelView, MetricsExporter  # noqa: E402
from gpuos_hintd.model import SpanRow  # noqa: E402
from gpuos_hintd.phase_stats import PhaseStats  # noqa: E402
from gpuos_hintd.service import HintService  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, tmp: Path) -> None:
        if PROMETHEUS is None:
            reason = "prometheus binary not found (apt-get install prometheus)"
            print(f"SKIP: {reason}")
            pytest.skip(reason)
        self.targets = tmp / "targets.json"
        self.targets.write_text("[]")
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: gpuos\n"
            f"    file_sd_configs: [{{files: ['{self.targets}'], refresh_interval: 1s}}]\n"
        )
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"prometheus not ready:\n{self.log.read_text()}")

    def scrape(self, port: int, name: str) -> None:
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"test": name}}]))
        os.replace(tmp, self.targets)

    def query(self, q: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def values(self, q: str, by: str) -> dict[str, float]:
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(q)}

    def wait(self, q: str, pred: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.query(q)
            if pred(last):
                return last
            time.sleep(0.25)
        raise AssertionError(f"{q}: still {last!r}\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    p = Prometheus(tmp_path_factory.mktemp("prometheus"))
    yield p
    p.stop()


def _metrics_port(d: Any) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in d.log().splitlines():
            if "metrics_listening" in line:
                return int(json.loads(line)["port"])
        time.sleep(0.05)
    raise AssertionError(f"no metrics_listening line:\n{d.log()}")


CLIENT = """
import time
import gpuos_client as h
h.workload_class({cls!r})
for i in range({n}):
    with h.phase({name!r}):
        {inner}
h.flush()
"""


def test_prometheus_scrapes_phase_and_daemon_metrics(daemon_factory: Any, prometheus: Prometheus) -> None:
    d = daemon_factory(args=["--metrics-port", "0"])
    port = _metrics_port(d)
    d.client(CLIENT.format(cls="inference.decode", n=3, name="prefill", inner="time.sleep(0.02)"))
    d.client(
        CLIENT.format(cls="inference.decode", n=20, name="decode", inner="with h.phase('sample'):\n            pass")
    )
    d.client(CLIENT.format(cls="training.step", n=5, name="step", inner="sum(range(20000))"))
    # A malformed message on the hint socket: rejected and counted by reason.
    d.client(
        "import zmq, os\n"
        "s = zmq.Context().socket(zmq.DEALER)\n"
        "s.connect(os.environ['GPUOS_HINT_ENDPOINT'])\n"
        "s.send(b'not msgpack at all')\n"
        "import time; time.sleep(0.3)\n",
        env={"GPUOS_HINT_DISABLE": "1"},
    )
    d.wait_for(lambda: d.status()["counters"].get("spans_closed", 0) >= 48, what="48 spans")
    d.wait_for(lambda: d.status()["rejected"], what="a rejection")
    prometheus.scrape(port, "phases")
    inst = f'instance="127.0.0.1:{port}"'
    prometheus.wait(f"sum(gpuos_phase_spans_total{{{inst}}})", lambda r: r and float(r[0]["value"][1]) >= 48)

    spans = {
        (r["metric"]["phase"], r["metric"]["workload_class"]): float(r["value"][1])
        for r in prometheus.query(f"gpuos_phase_spans_total{{{inst}}}")
    }
    assert spans[("prefill", "inference.decode")] == 3
    assert spans[("decode", "inference.decode")] == 20
    assert spans[("decode/sample", "inference.decode")] == 20
    assert spans[("step", "training.step")] == 5
    assert spans[(OTHER, OTHER)] == 0
    count = prometheus.values(f"gpuos_phase_duration_seconds_count{{{inst}}}", "phase")
    assert count["decode"] == 20 and count["prefill"] == 3
    # every prefill slept 20 ms: all three fall in the (10 ms, 25 ms] and (25 ms, ...) buckets, none below
    le = prometheus.values(f'gpuos_phase_duration_seconds_bucket{{{inst},phase="prefill"}}', "le")
    assert le["0.01"] == 0 and le["+Inf"] == 3 and le["0.1"] == 3
    total_s = prometheus.values(f"gpuos_phase_duration_seconds_sum{{{inst}}}", "phase")["prefill"]
    assert 0.06 <= total_s < 0.5
    assert "step" in prometheus.values(f"gpuos_phase_cpu_seconds_total{{{inst}}}", "phase")

    st = d.status()
    rejected = prometheus.values(f"gpuos_hintd_rejected_total{{{inst}}}", "reason")
    assert rejected == {k: float(v) for k, v in st["rejected"].items()} and rejected
    events = float(prometheus.query(f"gpuos_hintd_events_total{{{inst}}}")[0]["value"][1])
    assert 2 * 48 <= events <= st["counters"]["events"]
    closed = float(prometheus.query(f"gpuos_hintd_spans_closed_total{{{inst}}}")[0]["value"][1])
    assert closed >= 48
    up = prometheus.values(f"gpuos_hintd_sampler_up{{{inst}}}", "sampler")
    assert up["proc"] == 1 and up.get("nvml", 0) in (0, 1)
    last = prometheus.values(f"gpuos_hintd_sampler_last_duration_seconds{{{inst}}}", "sampler")
    assert 0 < last["proc"] < 1
    for name in ("gpuos_hintd_clients", "gpuos_hintd_client_dropped_total", "gpuos_hintd_store_write_errors_total"):
        assert prometheus.query(f"{name}{{{inst}}}"), name
    assert prometheus.query(f"gpuos_hintd_store_write_errors_total{{{inst}}}")[0]["value"][1] == "0"


def test_phase_label_cardinality_is_bounded(daemon_factory: Any, prometheus: Prometheus) -> None:
    k = 5
    d = daemon_factory(f"metrics_top_k = {k}\n", args=["--metrics-port", "0"])
    port = _metrics_port(d)
    d.client(
        """
import time
import gpuos_client as h
for i in range(40):
    with h.phase(f"p{i:02d}"):
        pass
h.flush(); time.sleep(0.4)
for _ in range(2):  # "hot" overtakes the labelled keys; the next tick promotes it
    for _ in range(10):
        with h.phase("hot"):
            pass
    h.flush(); time.sleep(0.4)
"""
    )
    d.wait_for(lambda: d.status()["counters"].get("spans_closed", 0) >= 60, what="60 spans")
    prometheus.scrape(port, "cardinality")
    inst = f'instance="127.0.0.1:{port}"'
    prometheus.wait(f"sum(gpuos_phase_spans_total{{{inst}}})", lambda r: r and float(r[0]["value"][1]) == 60)
    spans = prometheus.values(f"gpuos_phase_spans_total{{{inst}}}", "phase")
    n_values = prometheus.query(f"count(count by (phase) (gpuos_phase_duration_seconds_bucket{{{inst}}}))")
    assert float(n_values[0]["value"][1]) <= k + 1
    assert len(spans) <= k + 1 and OTHER in spans
    assert sum(spans.values()) == 60  # folding never loses or double-counts a span
    # first come, first labelled; "hot" (20 spans) then took the place of the weakest (p04)
    assert set(spans) == {"p00", "p01", "p02", "p03", "hot", OTHER}, spans
    assert spans["hot"] == 10  # counted under its own label from its promotion on
    keys = float(prometheus.query(f"gpuos_hintd_metrics_phase_keys{{{inst}}}")[0]["value"][1])
    assert keys == 41


# ------------------------------------------------------------------ in-process
def _row(path: str, ms: float, cls: str | None = "training.step", energy_mj: float = 0.0) -> SpanRow:
    return SpanRow(
        boot_id="b", pid=1, pid_start=1, span_id=1, parent_span_id=0, tid=1, name=path.rsplit("/", 1)[-1],
        path=path, depth=1, workload_class=cls, attrs=None, start_ns=0, end_ns=int(ms * 1e6),
        start_wall_ns=0, status="ok",
        signals={"cpu_user_ns": 1_000_000, "gpu_energy_mj": energy_mj, "gpu_energy_j": energy_mj / 1000},
    )  # fmt: skip


def _view(top_k: int) -> tuple[PhaseStats, LabelView]:
    stats = PhaseStats()
    return stats, LabelView(stats, top_k)


def test_phase_energy_and_cpu_accumulate_in_seconds_and_joules() -> None:
    s, v = _view(top_k=4)
    for _ in range(3):
        s.add(_row("prefill", 10, energy_mj=2500.0))
    spans, not_ok, dur_s, buckets, cpu_s, energy_j = dict(v.series())[("prefill", "training.step")]
    assert spans == 3 and not_ok == 0 and sum(buckets) == 3
    assert dur_s == pytest.approx(0.03)
    assert energy_j == pytest.approx(7.5)
    assert cpu_s == pytest.approx(0.003)
    (top,) = s.top()  # the status table reads the same aggregate
    assert (top.count, top.energy_j, top.cpu_s, top.mean_ms) == (3, 7.5, 0.003, 10.0)


def test_folding_policy_is_deterministic_and_monotonic() -> None:
    def run(order: list[str]) -> tuple[set[tuple[str, ...]], int]:
        s, v = _view(top_k=2)
        for p in order:
            s.add(_row(p, 1))
        v.rerank()
        return set(v.base), sum(f[0] for _k, f in v.series())

    # ties broken by name, not by arrival order
    a = run(["b", "a", "c", "c", "d", "d"])
    b = run(["a", "b", "d", "c", "d", "c"])
    assert a[0] == b[0] == {("c", "training.step"), ("d", "training.step")}
    assert a[1] == b[1] == 6
    s, v = _view(top_k=1)
    s.add(_row("x", 1))
    before = dict(v.series())[("x", "training.step")]
    for _ in range(3):
        s.add(_row("y", 1))
    other_before = dict(v.series())[(OTHER,)]
    v.rerank()
    after = dict(v.series())
    assert set(v.base) == {("y", "training.step")}
    assert after[("y", "training.step")][0] == 0  # its series starts at its promotion
    # demoted figures move into __other__, which only grows: every field, exactly
    assert after[(OTHER,)][0] == other_before[0] + before[0] == 4
    assert after[(OTHER,)][3] == tuple(x + y for x, y in zip(other_before[3], before[3], strict=True))
    assert after[(OTHER,)][4] == pytest.approx(other_before[4] + before[4])
    assert v.promotions == 1


@settings(max_examples=60, deadline=None)
@given(
    ticks=st.lists(
        st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3), st.sampled_from(["ok", "error"])), max_size=30),
        min_size=1,
        max_size=12,
    )
)
def test_every_series_only_grows_and_the_sum_is_every_span(ticks: list[list[tuple[int, int, str]]]) -> None:
    stats = PhaseStats(max_keys=8)  # beyond 8 keys, spans go to the untracked pool (and __other__)
    view = LabelView(stats, top_k=3)
    last: dict[tuple[str, ...], tuple[Any, ...]] = {}
    total = 0
    for spans in ticks:
        rows = [_row(f"p{k}", ms + 1, cls=f"c{k % 2}") for k, ms, _s in spans]
        for r, (_k, _ms, status) in zip(rows, spans, strict=True):
            r.status = status
        stats.add_many(rows)
        total += len(rows)
        view.rerank()
        series = dict(view.series())
        assert len(series) <= 3 + 1
        assert sum(f[0] for f in series.values()) == total
        assert sum(sum(f[3]) for f in series.values()) == total
        for key, f in series.items():
            if key in last:  # a key that stays labelled (or __other__) never steps back
                old = last[key]
                assert f[0] >= old[0] and f[1] >= old[1] and f[2] >= old[2] and f[4] >= old[4]
                assert all(a >= b for a, b in zip(f[3], old[3], strict=True))
        last = {k: f for k, f in series.items() if k in view.base or k == (OTHER,)}


def test_gpu_gauges_and_tick_cost_in_process() -> None:
    pytest.importorskip("pynvml")
    from gpuos_hintd.samplers.nvml import NVMLSampler
    from gpuos_hintd.samplers.nvml_replay import ReplayNVML

    replay = ReplayNVML(ROOT / "tests" / "data" / "nvml" / "synthetic_two_gpus.json")
    svc = HintService(Config(), None, [NVMLSampler(backend=replay)])
    exp = MetricsExporter(svc, top_k=50).attach()
    nvml = svc.samplers[0].sampler
    nvml.sample([], replay.t_ns)
    svc.tick()
    text = prometheus_client.generate_latest(exp.registry).decode()
    devices = nvml.devices()
    assert devices
    for dev in devices:
        labels = f'gpu="{dev["index"]}",name="{dev["name"]}",sampler="nvml",uuid="{dev["uuid"]}"'
        for field, metric, scale in (
            ("util_gpu_pct", "gpuos_gpu_utilization_percent", 1),
            ("power_mw", "gpuos_gpu_power_watts", 1e-3),
            ("energy_mj", "gpuos_gpu_energy_joules_total", 1e-3),
        ):
            if dev.get(field) is None:
                assert f"{metric}{{{labels}}}" not in text
                continue
            m = re.search(rf"^{metric}{{{re.escape(labels)}}} (\S+)$", text, re.M)
            assert m, f"{metric} {labels}\n{text}"
            assert float(m.group(1)) == pytest.approx(dev[field] * scale)

    # Cost per tick with churn: 2000 distinct phases, 200 spans between ticks.
    times = []
    for t in range(200):
        svc.phase_stats.add_many([_row(f"phase{(t * 37 + i * 11) % 2000}", 2.0, energy_mj=1.0) for i in range(200)])
        t0 = time.perf_counter()
        exp.on_tick(svc)
        times.append(time.perf_counter() - t0)
    med, worst = statistics.median(times), max(times)
    print(f"metrics tick hook: median {med * 1e6:.0f} us, max {worst * 1e6:.0f} us (2000 keys, K=50)")
    assert med < 0.005, med
    text = prometheus_client.generate_latest(exp.registry).decode()
    phases = set(re.findall(r'^gpuos_phase_spans_total\{phase="([^"]+)"', text, re.M))
    assert len(phases) <= 51
    total = sum(float(v) for v in re.findall(r"^gpuos_phase_spans_total\{[^}]*\} (\S+)$", text, re.M))
    assert total == 200 * 200

    # The common case: a few dozen phases, a tick's worth of spans.
    svc2 = HintService(Config(), None, [])
    exp2 = MetricsExporter(svc2, top_k=50).attach()
    times = []
    for _ in range(200):
        svc2.phase_stats.add_many([_row(f"phase{i % 20}", 2.0) for i in range(50)])
        t0 = time.perf_counter()
        exp2.on_tick(svc2)
        times.append(time.perf_counter() - t0)
    print(f"metrics tick hook: median {statistics.median(times) * 1e6:.0f} us (20 keys, 50 spans/tick)")
